"""The REST server as other clients use it, in a real server process: guidellm's request shapes, and
no request that stalls the event loop for the others."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import REPO, write_params

from perfkit import config
from perfkit.serving import contract, payloads
from perfkit.serving.launch import launch

LIMIT = 8


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("clients-root")
    (root / "data").mkdir()
    (root / "data" / "corpus").symlink_to(REPO / "data" / "corpus")  # the payload routes serve corpus text
    serving = {"rate_limit": {"enabled": False}, "max_new_tokens_limit": LIMIT, "scheduler": "continuous", "payload_routes": True}
    write_params(root, {"model": {"path": str(tiny_model_dir)}, "hardware": {"device": "cpu", "threads": 1}, "serving": serving})
    cfg = config.load("serve", root=root)
    with launch(cfg, warmup=False, probe_cold_start=False) as handle:
        yield handle, cfg


def guidellm_body(route: str, model: str, tokens: int, n: int) -> dict:
    """A request as guidellm 0.8 builds it (backends/openai/request_handlers.py): text as content parts,
    a fixed output length by `ignore_eos`, `stop: null`, usage asked for with vLLM's continuous stats."""
    body = {"model": model, "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    text = f"Request {n}: summarize the first chapter of Persuasion in one sentence."
    if route == "/v1/completions":
        return body | {"max_tokens": tokens, "stop": None, "ignore_eos": True, "prompt": text}
    messages = [{"role": "system", "content": "You are terse."}] if n % 2 else []
    messages.append({"role": "user", "content": [{"type": "text", "text": text}]})
    return body | {"max_completion_tokens": tokens, "stop": None, "ignore_eos": True, "messages": messages}


def read_like_guidellm(response: httpx.Response, route: str) -> tuple[int, dict, bool]:
    """(chunks with text, the last usage seen, whether [DONE] ended the stream), parsed as guidellm does."""
    texts, usage, done = 0, {}, False
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        if line == "data: [DONE]":
            done = True
            break
        data = json.loads(line[5:])
        choices = data.get("choices") or []
        piece = (
            (choices[0].get("delta") or {}).get("content")
            if route != "/v1/completions" and choices
            else (choices[0].get("text") if choices else None)
        )
        texts += bool(piece)
        usage = data.get("usage") or usage
    return texts, usage, done


def test_guidellm_request_shapes_at_ten_streams_get_no_errors(server):
    handle, cfg = server
    jobs = [(route, n) for n in range(15) for route in ("/v1/chat/completions", "/v1/completions")]

    def send(job: tuple[str, int]) -> tuple[int, int, dict, bool, int]:
        route, n = job
        tokens = 1 + n % LIMIT
        with httpx.Client(base_url=handle.base_url, timeout=120) as client:
            with client.stream("POST", route, json=guidellm_body(route, cfg.model.name, tokens, n)) as response:
                if response.status_code != 200:
                    response.read()
                    return response.status_code, 0, {"error": response.text}, False, tokens
                texts, usage, done = read_like_guidellm(response, route)
                return 200, texts, usage, done, tokens

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(send, jobs))
    errors = [r for r in results if r[0] != 200 or not r[3]]
    assert not errors, errors[:3]
    for _, texts, usage, _, tokens in results:
        assert usage["completion_tokens"] == tokens and usage["prompt_tokens"] > 0
        assert 0 < texts <= tokens  # one event per token; a token that decodes to no text is not counted


def test_a_payload_over_the_bound_is_refused_with_the_bound_in_the_message(server):
    handle, _ = server
    r = httpx.get(f"{handle.base_url}/v1/payload", params={"kind": "document", "size_bytes": payloads.MAX_SIZE_BYTES + 1})
    assert r.status_code == 400 and str(payloads.MAX_SIZE_BYTES) in r.json()["error"]["message"]
    schema = httpx.get(f"{handle.base_url}/openapi.json").json()
    size = next(p for p in schema["paths"]["/v1/payload"]["get"]["parameters"] if p["name"] == "size_bytes")
    assert size["schema"]["maximum"] == payloads.MAX_SIZE_BYTES


def test_a_body_of_millions_of_json_values_is_refused_before_parsing(server):
    handle, cfg = server
    ids = ",".join(["1"] * ((cfg.serving.max_body_bytes - 200) // 2))  # at the body limit: 8 million numbers
    body = f'{{"model": "{cfg.model.name}", "max_tokens": 1, "prompt": [{ids}]}}'
    r = httpx.post(f"{handle.base_url}/v1/completions", content=body, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and str(contract.MAX_JSON_VALUES) in r.json()["error"]["message"]


def test_health_answers_while_the_largest_payload_is_in_flight(server):
    """The largest payload, Brotli-coded: building, JSON-encoding and compressing it take seconds of CPU."""
    handle, _ = server
    method, path = "GET", "/v1/payload"
    kwargs = {"params": {"kind": "embeddings", "size_bytes": payloads.MAX_SIZE_BYTES}, "headers": {"Accept-Encoding": "br"}}
    big_done = threading.Event()
    answered_during: list[int] = []
    statuses: list[int] = []

    def big() -> None:
        try:
            with httpx.Client(timeout=300) as client:
                statuses.append(client.request(method, handle.base_url + path, **kwargs).status_code)
        finally:
            big_done.set()

    thread = threading.Thread(target=big)
    with httpx.Client(base_url=handle.base_url, timeout=300) as client:
        thread.start()
        while not big_done.is_set():
            in_flight = _in_flight(client)
            if in_flight > 1 and not big_done.is_set():  # the big request is being served, and this one too
                status = client.get("/health").status_code
                if not big_done.is_set():
                    answered_during.append(status)
    thread.join()
    assert statuses == [200]
    assert len(answered_during) >= 2 and set(answered_during) == {200}


def _in_flight(client: httpx.Client) -> float:
    """perfkit_requests_in_flight, which counts the /metrics request that reads it."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("perfkit_requests_in_flight "):
            return float(line.split()[1])
    raise AssertionError("no perfkit_requests_in_flight gauge")


def test_a_large_body_is_encoded_and_compressed_off_the_event_loop(monkeypatch):
    """The heavy steps of a large answer run on worker threads, never on the event loop's thread."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from perfkit.serving import encoding
    from perfkit.serving.payload_rest import payload_router

    threads: dict[str, set[int]] = {"encode": set(), "compress": set()}
    real_encode, real_for_encoding = payloads.encode_json, encoding.for_encoding

    def encode(*args, **kwargs):
        threads["encode"].add(threading.get_ident())
        return real_encode(*args, **kwargs)

    class Recorded:
        def __init__(self, codec):
            self.codec, self.encoding = codec, codec.encoding

        def compress(self, body):
            threads["compress"].add(threading.get_ident())
            return self.codec.compress(body)

    monkeypatch.setattr(payloads, "encode_json", encode)
    monkeypatch.setattr(encoding, "for_encoding", lambda *a: Recorded(real_for_encoding(*a)))
    app = FastAPI()
    app.add_middleware(encoding.ContentEncodingMiddleware)
    app.include_router(payload_router(REPO / "data" / "corpus"))

    @app.get("/loop")
    async def loop_thread() -> int:
        return threading.get_ident()

    with TestClient(app) as client:
        loop = client.get("/loop").json()
        r = client.get("/v1/payload", params={"kind": "document", "size_bytes": 2**20}, headers={"Accept-Encoding": "br"})
    assert r.status_code == 200 and r.headers["content-encoding"] == "br"
    assert threads["encode"] and threads["compress"] and loop not in threads["encode"] | threads["compress"]
