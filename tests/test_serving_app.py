"""The REST server's contract, in process: status codes, error bodies, SSE, exact usage."""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest
import yaml
from conftest import REPO
from fastapi.testclient import TestClient

from perfkit import config
from perfkit.models import Embedder
from perfkit.serving.app import create_app
from perfkit.workload import chat_ids

LIMIT = 16
BODY_LIMIT = 16384


def serving_config(root, tiny_model_dir, **serving):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"]["path"] = str(tiny_model_dir)
    raw["hardware"] = {"device": "cpu", "threads": 1}
    raw["serving"] = {**raw["serving"], **serving}
    return config.parse(raw, root=root, stage="serve")


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.load()


@pytest.fixture(scope="module")
def served(tiny, tiny_model_dir, embedder, tmp_path_factory):
    _, _, engine = tiny
    cfg = serving_config(
        tmp_path_factory.mktemp("serve"),
        tiny_model_dir,
        max_new_tokens_limit=LIMIT,
        max_body_bytes=BODY_LIMIT,
        rate_limit={"enabled": False},
    )
    with TestClient(create_app(cfg, engine, embedder)) as client:
        for _ in range(200):
            if client.get("/health").status_code == 200:
                break
            time.sleep(0.05)
        yield client, cfg, engine, embedder


def assert_error(response, code: int) -> dict:
    assert response.status_code == code, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and error["type"].endswith("Error")
    return error


def sse_events(response) -> list:
    lines = [line for line in response.text.split("\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]" and lines.count("data: [DONE]") == 1
    return [json.loads(line[6:]) for line in lines[:-1]]


def test_health_models_and_metrics(served):
    client, cfg, _, _ = served
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert client.get("/healthz").json() == {"status": "alive"}
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == [cfg.model.name, cfg.model.embedding_name]
    text = client.get("/metrics").text
    for name in (
        "perfkit_request_latency_seconds",
        "perfkit_requests_in_flight",
        "perfkit_queue_depth",
        "perfkit_batch_size",
        "perfkit_generated_tokens_total",
        "perfkit_errors_total",
    ):
        assert name in text
    # the refusals' series exist before any refusal (rate() needs two samples), on admitted routes only
    from prometheus_client.parser import text_string_to_metric_families

    counts = {
        (x.labels["route"], x.labels["code"])
        for f in text_string_to_metric_families(text)
        for x in f.samples
        if x.name == "perfkit_request_latency_seconds_count"
    }
    for route in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        assert {(route, "429"), (route, "503")} <= counts
    assert not {("/v1/models", "429"), ("/metrics", "503")} & counts


def test_completion_text_and_usage_are_exact(served):
    client, cfg, engine, _ = served
    prompt = "It is a truth universally acknowledged"
    body = {"model": cfg.model.name, "prompt": prompt, "max_tokens": 6, "min_tokens": 6}
    out = client.post("/v1/completions", json=body).json()
    ids = engine.encode(prompt)
    alone = engine.generate(ids, 6, stop_at_eos=False)
    assert out["object"] == "text_completion"
    assert out["choices"][0]["text"] == alone.text
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 6, "total_tokens": len(ids) + 6}


def test_token_id_prompt_is_used_as_given(served):
    client, cfg, engine, _ = served
    out = client.post("/v1/completions", json={"model": cfg.model.name, "prompt": [5, 6, 7], "max_tokens": 3, "ignore_eos": True}).json()
    assert out["choices"][0]["text"] == engine.generate([5, 6, 7], 3, stop_at_eos=False).text
    assert out["usage"]["prompt_tokens"] == 3


def test_chat_stream_is_one_event_per_token_then_done(served):
    client, cfg, engine, _ = served
    messages = [{"role": "user", "content": "Summarize Emma."}]
    body = {"model": cfg.model.name, "messages": messages, "max_tokens": 5, "ignore_eos": True}
    plain = client.post("/v1/chat/completions", json=body).json()
    events = sse_events(client.post("/v1/chat/completions", json={**body, "stream": True}))
    assert len(events) == 5
    assert all(e["object"] == "chat.completion.chunk" and e["id"] == events[0]["id"] for e in events)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [e["choices"][0]["finish_reason"] for e in events] == [None] * 4 + ["length"]
    assert not any("usage" in e for e in events)  # not asked for: OpenAI sends none
    assert "".join(e["choices"][0]["delta"]["content"] for e in events) == plain["choices"][0]["message"]["content"]
    prompt_tokens = len(chat_ids(engine.tokenizer, messages))
    assert plain["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 5, "total_tokens": prompt_tokens + 5}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_include_usage_sends_a_last_chunk_with_no_choices(served, path):
    client, cfg, _, _ = served
    body = {"model": cfg.model.name, "max_tokens": 3, "ignore_eos": True}
    body |= {"messages": [{"role": "user", "content": "Emma"}]} if "chat" in path else {"prompt": "Emma"}
    plain = client.post(path, json=body).json()
    events = sse_events(client.post(path, json={**body, "stream": True, "stream_options": {"include_usage": True}}))
    assert len(events) == 4 and events[-1]["choices"] == [] and events[-1]["id"] == events[0]["id"]
    assert events[-1]["usage"] == plain["usage"] and events[-1]["usage"]["completion_tokens"] == 3
    assert all(e["choices"] and "usage" not in e for e in events[:-1])


def test_text_parts_are_joined_in_order_like_a_newline_joined_string(served):
    client, cfg, _, _ = served
    parts = [{"type": "text", "text": "Summarize Emma."}, {"type": "text", "text": "In one line."}]
    body = {"model": cfg.model.name, "max_tokens": 4, "ignore_eos": True}
    as_parts = client.post("/v1/chat/completions", json={**body, "messages": [{"role": "user", "content": parts}]}).json()
    as_text = {**body, "messages": [{"role": "user", "content": "Summarize Emma.\nIn one line."}]}
    assert as_parts["choices"][0]["message"] == client.post("/v1/chat/completions", json=as_text).json()["choices"][0]["message"]
    assert as_parts["usage"] == client.post("/v1/chat/completions", json=as_text).json()["usage"]


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "http://x/a.png"}},
        {"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}},
    ],
)
def test_a_non_text_part_is_refused_by_name(served, part):
    client, cfg, _, _ = served
    content = [{"type": "text", "text": "What is this?"}, part]
    body = {"model": cfg.model.name, "messages": [{"role": "user", "content": content}]}
    assert part["type"] in assert_error(client.post("/v1/chat/completions", json=body), 400)["message"]


def test_completion_stream_matches_the_plain_answer(served):
    client, cfg, _, _ = served
    body = {"model": cfg.model.name, "prompt": "Mr. Darcy", "max_tokens": 4, "ignore_eos": True}
    plain = client.post("/v1/completions", json=body).json()
    events = sse_events(client.post("/v1/completions", json={**body, "stream": True}))
    assert "".join(e["choices"][0]["text"] for e in events) == plain["choices"][0]["text"]


def test_embeddings_float_and_base64_agree(served):
    client, cfg, _, embedder = served
    texts = ["Elinor was sensible.", "Marianne was not."]
    floats = client.post("/v1/embeddings", json={"model": cfg.model.embedding_name, "input": texts}).json()
    packed = client.post("/v1/embeddings", json={"model": cfg.model.embedding_name, "input": texts, "encoding_format": "base64"}).json()
    a = np.array([d["embedding"] for d in floats["data"]], dtype=np.float32)
    b = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in packed["data"]])
    assert a.shape == (2, embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(a, b)
    assert floats["usage"]["prompt_tokens"] == embedder.count_tokens(texts)


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("/v1/completions", b"{not json", 400),
        ("/v1/completions", {"prompt": "a"}, 400),
        ("/v1/completions", {"model": "M", "prompt": 5}, 400),
        ("/v1/completions", {"model": "M", "prompt": "a", "max_tokens": "3"}, 400),
        ("/v1/completions", {"model": "M", "prompt": "a", "max_tokens": LIMIT + 1}, 400),
        ("/v1/completions", {"model": "M", "prompt": [1] * 2048, "max_tokens": 1}, 400),
        ("/v1/completions", {"model": "M", "prompt": [10**9], "max_tokens": 1}, 400),
        ("/v1/completions", {"model": "M", "prompt": "", "max_tokens": 1}, 400),
        ("/v1/completions", {"model": "M", "prompt": "a", "n": 2}, 400),
        ("/v1/completions", {"model": "M", "prompt": "a", "max_tokens": 4, "min_tokens": 2}, 400),
        ("/v1/completions", {"model": "nope", "prompt": "a"}, 404),
        ("/v1/chat/completions", {"model": "M", "messages": []}, 400),
        ("/v1/chat/completions", {"model": "M", "messages": [{"role": "wizard", "content": "a"}]}, 400),
        ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "a"}]}, 404),
        ("/v1/embeddings", {"model": "E", "input": []}, 400),
        ("/v1/embeddings", {"model": "E", "input": "a", "encoding_format": "hex"}, 400),
        ("/v1/embeddings", {"model": "nope", "input": "a"}, 404),
        ("/v1/completions", {"model": "M", "prompt": "a" * BODY_LIMIT}, 413),
        ("/v1/nothing", {}, 404),
    ],
)
def test_bad_requests_get_openai_error_bodies(served, path, body, code):
    client, cfg, _, _ = served
    if isinstance(body, dict):
        names = {"M": cfg.model.name, "E": cfg.model.embedding_name}
        body = json.dumps({k: names.get(v, v) if k == "model" else v for k, v in body.items()}).encode()
    assert_error(client.post(path, content=body, headers={"content-type": "application/json"}), code)


def test_chunked_body_over_the_limit_is_refused(served):
    client, cfg, _, _ = served

    def chunks():
        yield b'{"model": "' + cfg.model.name.encode() + b'", "prompt": "'
        for _ in range(BODY_LIMIT // 256 + 1):
            yield b"a" * 256
        yield b'"}'

    assert_error(client.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"}), 413)


def test_wrong_method_is_an_openai_error(served):
    client, _, _, _ = served
    assert_error(client.get("/v1/completions"), 405)


def test_all_torch_work_of_a_server_runs_on_its_one_engine_thread(tiny, tiny_model_dir, tmp_path, monkeypatch):
    """libgomp throttles its spin-wait once a process has more OpenMP threads than cores, so one thread does it all."""
    import asyncio
    import threading

    from perfkit.serving import state as app_module

    _, _, engine = tiny
    threads: dict[str, str] = {}

    class RecordingEmbedder:
        def embed(self, texts):
            threads["embed"] = threading.current_thread().name
            return np.zeros((len(texts), 4), dtype=np.float32)

    def load_models(cfg):
        threads["load"] = threading.current_thread().name
        return engine, RecordingEmbedder()

    monkeypatch.setattr(app_module, "load_models", load_models)
    state = app_module.ServerState(serving_config(tmp_path, tiny_model_dir, scheduler="continuous", warmup=True))

    async def scenario() -> None:
        await app_module.prepare(state)
        assert state.scheduler is not None
        threads["generate"] = await state.scheduler.run_exclusive(lambda: threading.current_thread().name)
        await state.scheduler.stop()

    asyncio.run(scenario())
    assert len(set(threads.values())) == 1 and threads["load"].startswith("perfkit-engine")
    assert state.scheduler.prices.step_s > 0 and state.scheduler.prices.prefill_s_per_token > 0  # priced at warm-up


def test_the_openapi_schema_declares_what_the_server_enforces(served):
    client, cfg, engine, _ = served
    doc = client.get("/openapi.json").json()
    bodies = doc["components"]["schemas"]
    for route, name, model in [
        ("/v1/completions", "CompletionRequest", cfg.model.name),
        ("/v1/chat/completions", "ChatCompletionRequest", cfg.model.name),
        ("/v1/embeddings", "EmbeddingRequest", cfg.model.embedding_name),
    ]:
        ref = doc["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/" + name) and bodies[name]["properties"]["model"]["enum"] == [model]
    max_tokens = bodies["CompletionRequest"]["properties"]["max_tokens"]["anyOf"][0]
    assert max_tokens["maximum"] == LIMIT
    ids = next(o for o in bodies["CompletionRequest"]["properties"]["prompt"]["anyOf"] if o.get("type") == "array")
    assert ids["items"]["maximum"] == engine.model.config.vocab_size - 1 and ids["maxItems"] < engine.max_context
    assert bodies["ChatCompletionRequest"]["properties"]["messages"]["maxItems"] > 0
