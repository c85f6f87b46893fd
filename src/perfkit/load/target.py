"""An endpoint you did not start: checked with one request before any load is put on it.

`load.target_url` names any OpenAI-compatible server (vLLM, TGI, llama.cpp's llama-server,
Ollama, a cloud API); `load.api_key_env` names the environment variable holding its key (the key
itself is never written to params.yaml, the Locust spec or a log); `load.model` the model id to
ask for (default: the first id its `/v1/models` lists).

Pre-flight, before any load: `GET /v1/models` must answer 200 with `{"data": [{"id": ...}]}`
(down, refused auth and a wrong shape each get one line that says which), then one streamed chat
request of two tokens must come back as server-sent events ending in `data: [DONE]`. It is sent
first with vLLM's `min_tokens`/`ignore_eos`, which fix the output length; an endpoint that refuses
them with a 4xx (cloud APIs do) is asked again without them, and the load then sends none: each
answer is as long as the model makes it, and the figures report the lengths actually produced.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import httpx

from perfkit.errors import PerfkitError

TIMEOUT_S = 60.0
PROBE_TOKENS = 2
NOT_AVAILABLE = "not available for an external endpoint"


class TargetError(PerfkitError, RuntimeError):
    """The endpoint cannot be measured: down, refusing the key, or not speaking the OpenAI API."""


@dataclass(frozen=True)
class Target:
    """A checked endpoint: where, which model, how it answered, and whether it takes a fixed output length."""

    base_url: str
    model: str
    models: tuple[str, ...]  # ids from its /v1/models
    fixed_length: bool  # accepts min_tokens/ignore_eos
    api_key_env: str | None = None

    def describe(self) -> str:
        length = "fixed output length" if self.fixed_length else "free output length (min_tokens/ignore_eos refused)"
        return f"{self.base_url} serving {', '.join(self.models)}; measured model {self.model}; {length}"


def api_key(env_name: str | None) -> str | None:
    """The key from the named environment variable; a named but unset variable is an error, not an empty key."""
    if not env_name:
        return None
    key = os.environ.get(env_name)
    if not key:
        raise TargetError(f"load.api_key_env = {env_name!r}, but that environment variable is not set")
    return key


def _headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _get_models(client: httpx.Client, url: str) -> list[str]:
    try:
        r = client.get("/v1/models")
    except httpx.HTTPError as exc:
        raise TargetError(f"{url} is not reachable: {type(exc).__name__}: {exc}") from None
    if r.status_code in (401, 403):
        raise TargetError(f"{url} refused the API key (HTTP {r.status_code} on /v1/models); set load.api_key_env")
    if r.status_code != 200:
        raise TargetError(f"{url}/v1/models answered HTTP {r.status_code}: {r.text[:200]!r}")
    try:
        ids = [str(m["id"]) for m in r.json()["data"]]
    except (ValueError, KeyError, TypeError):
        raise TargetError(f"{url}/v1/models is not an OpenAI model list: {r.text[:200]!r}") from None
    if not ids:
        raise TargetError(f"{url}/v1/models lists no model")
    return ids


def _probe(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[int, str]:
    """Send one streamed chat request; (status, '' when the stream was well formed else what was wrong)."""
    try:
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                r.read()
                return r.status_code, r.text[:200]
            done, chunks = False, 0
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                event = json.loads(data)
                chunks += isinstance(event.get("choices"), list)
    except httpx.HTTPError as exc:
        raise TargetError(f"{url}/v1/chat/completions failed: {type(exc).__name__}: {exc}") from None
    except ValueError:
        return 200, "an event that is not JSON"
    if not done or not chunks:
        return 200, "no chat.completion.chunk events ending in data: [DONE]"
    return 200, ""


def preflight(url: str, model: str | None = None, api_key_env: str | None = None) -> Target:
    """Check the endpoint with one request; raises TargetError with one line that says what is wrong."""
    url = url.rstrip("/")
    key = api_key(api_key_env)
    with httpx.Client(base_url=url, headers=_headers(key), timeout=TIMEOUT_S) as client:
        ids = _get_models(client, url)
        chosen = model or ids[0]
        if chosen not in ids:
            raise TargetError(f"{url} does not serve model {chosen!r}; it serves: {', '.join(ids)} (set load.model)")
        body: dict[str, Any] = {
            "model": chosen,
            "messages": [{"role": "user", "content": "Say hello."}],
            "stream": True,
            "max_tokens": PROBE_TOKENS,
            "stream_options": {"include_usage": True},
        }
        status, problem = _probe(client, url, body | {"min_tokens": PROBE_TOKENS, "ignore_eos": True})
        fixed = status == 200 and not problem
        if 400 <= status < 500 and status not in (401, 403, 404):  # min_tokens/ignore_eos refused: ask plainly
            status, problem = _probe(client, url, body)
    if status in (401, 403):
        raise TargetError(f"{url} refused the API key (HTTP {status} on /v1/chat/completions); set load.api_key_env")
    if status != 200 or problem:
        raise TargetError(f"{url}/v1/chat/completions is not an OpenAI chat stream: HTTP {status}, {problem or 'no body'}")
    return Target(url, chosen, tuple(ids), fixed, api_key_env)
