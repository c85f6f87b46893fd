"""perfkit's reference server: an OpenAI-compatible REST app (and a gRPC twin) over one engine.

`scheduler` decides which requests share the model and when; `admission` turns clients away
before they queue (token bucket, expected-wait bound); `app` speaks the OpenAI HTTP API as vLLM
serves it; `launch` starts a server in its own process and measures load, readiness and cold start.
"""
