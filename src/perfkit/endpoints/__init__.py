"""One endpoint interface: a chat request in; a timed token stream, its usage and its errors out.

Every engine perfkit measures answers through `Endpoint` (`base`): perfkit's own server
(`serving.launch.ServerHandle`), any OpenAI-compatible URL (`openai.OpenAIEndpoint`, checked by
`openai.preflight`), llama.cpp's `llama-server` (`llama_server.LlamaServer`) and the engine in
this process (`inprocess.InProcessEndpoint`). `serve.served(cfg, ...)` is how a served stage opens
its endpoint: perfkit's server with the stage's settings, or the user's `load.target_url`.
"""
