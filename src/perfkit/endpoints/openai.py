"""Any OpenAI-compatible endpoint you did not start: checked with one request before any load is put on it.

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

import os
from dataclasses import dataclass

import httpx

from perfkit.endpoints.base import ChatRequest, Completion, EndpointFacts
from perfkit.endpoints.chat import chat_body, complete_over_http, openai_chat
from perfkit.errors import PerfkitError

TIMEOUT_S = 60.0
PROBE_TOKENS = 2
ENGINE = "an external OpenAI-compatible endpoint"


class TargetError(PerfkitError, RuntimeError):
    """The endpoint cannot be measured: down, refusing the key, or not speaking the OpenAI API."""


@dataclass(frozen=True)
class OpenAIEndpoint:
    """A checked endpoint (`preflight`): where, which model, and whether it takes a fixed output length."""

    facts: EndpointFacts
    timeout_s: float = 600.0
    pid = None  # no process of its own: nothing server-side is measured
    start = None

    def complete(self, request: ChatRequest) -> Completion:
        f = self.facts
        assert f.base_url is not None
        headers = _headers(api_key(f.api_key_env))
        return complete_over_http(f.base_url, f.model, request, fixed_length=f.fixed_length, timeout_s=self.timeout_s, headers=headers)


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


def _probe(client: httpx.Client, url: str, model: str, fixed_length: bool) -> Completion:
    """Send one streamed chat request of PROBE_TOKENS tokens."""
    request = ChatRequest(({"role": "user", "content": "Say hello."},), PROBE_TOKENS)
    try:
        return openai_chat(client, chat_body(model, request, fixed_length))
    except httpx.HTTPError as exc:
        raise TargetError(f"{url}/v1/chat/completions failed: {type(exc).__name__}: {exc}") from None


def preflight(url: str, model: str | None = None, api_key_env: str | None = None) -> OpenAIEndpoint:
    """Check the endpoint with one request; raises TargetError with one line that says what is wrong."""
    url = url.rstrip("/")
    key = api_key(api_key_env)
    with httpx.Client(base_url=url, headers=_headers(key), timeout=TIMEOUT_S) as client:
        ids = _get_models(client, url)
        chosen = model or ids[0]
        if chosen not in ids:
            raise TargetError(f"{url} does not serve model {chosen!r}; it serves: {', '.join(ids)} (set load.model)")
        answer = _probe(client, url, chosen, fixed_length=True)
        fixed = answer.ok and bool(answer.chunk_times_s)
        if 400 <= answer.status < 500 and answer.status not in (401, 403, 404):  # min_tokens/ignore_eos refused: ask plainly
            answer = _probe(client, url, chosen, fixed_length=False)
    if answer.status in (401, 403):
        raise TargetError(f"{url} refused the API key (HTTP {answer.status} on /v1/chat/completions); set load.api_key_env")
    if not answer.ok or not answer.chunk_times_s:
        problem = answer.error or "no chat.completion.chunk events ending in data: [DONE]"
        raise TargetError(f"{url}/v1/chat/completions is not an OpenAI chat stream: HTTP {answer.status}, {problem}")
    return OpenAIEndpoint(EndpointFacts("openai", ENGINE, chosen, tuple(ids), url, fixed, False, api_key_env))
