"""The answer cache in the REST server (in-process backend): keys, scope, replay, metrics, embeddings."""

from __future__ import annotations

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


def cache_config(root, tiny_model_dir, **cache):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"]["path"] = str(tiny_model_dir)
    raw["hardware"] = {"device": "cpu", "threads": 1}
    raw["serving"] = {**raw["serving"], "max_new_tokens_limit": 16, "rate_limit": {"enabled": False}, "cache": cache}
    return config.parse(raw, root=root, stage="serve")


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.load()


def start(cfg, engine, embedder):
    client = TestClient(create_app(cfg, engine, embedder))
    client.__enter__()
    for _ in range(400):
        if client.get("/health").status_code == 200:
            return client
        time.sleep(0.05)
    raise AssertionError("server did not become ready")


@pytest.fixture(scope="module")
def exact(tiny, tiny_model_dir, embedder, tmp_path_factory):
    cfg = cache_config(tmp_path_factory.mktemp("exact"), tiny_model_dir, mode="exact", backend="memory")
    client = start(cfg, tiny[2], embedder)
    yield client, cfg
    client.__exit__(None, None, None)


def sse(response) -> list[dict]:
    lines = [line for line in response.text.split("\n") if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


def without_ids(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("id", "created")}


def metric(client, name: str, **labels) -> float:
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_repeated_request_hits_with_the_same_text_finish_and_usage(exact):
    client, cfg = exact
    body = {"model": cfg.model.name, "messages": [{"role": "user", "content": "Who is Emma?"}], "max_tokens": 5}
    first = client.post("/v1/chat/completions", json=body)
    second = client.post("/v1/chat/completions", json=body)
    assert first.headers["x-cache"] == "miss" and second.headers["x-cache"] == "hit"
    assert first.headers["x-cache-entry"] == second.headers["x-cache-entry"]
    a, b = first.json(), second.json()
    assert a["id"] != b["id"]
    assert without_ids(a) == without_ids(b)


def test_every_answer_changing_parameter_is_in_the_key(exact):
    client, cfg = exact
    base = {"model": cfg.model.name, "prompt": "Mr. Knightley said", "max_tokens": 4}
    variants = [
        base,
        {**base, "max_tokens": 5},
        {**base, "ignore_eos": True},
        {**base, "max_tokens": 5, "min_tokens": 5},
        {**base, "prompt": "Mr. Knightley says"},
    ]
    seen = [client.post("/v1/completions", json=v).headers["x-cache"] for v in variants]
    assert seen == ["miss"] * len(variants)
    again = [client.post("/v1/completions", json=v).headers["x-cache"] for v in variants]
    assert again == ["hit"] * len(variants)


def test_a_default_max_tokens_is_resolved_before_the_key(exact):
    client, cfg = exact
    body = {"model": cfg.model.name, "prompt": "Harriet Smith"}  # completions default: 16 tokens
    assert client.post("/v1/completions", json=body).headers["x-cache"] == "miss"
    assert client.post("/v1/completions", json={**body, "max_tokens": 16}).headers["x-cache"] == "hit"


def test_sampling_requests_bypass_the_cache(exact):
    client, cfg = exact
    body = {"model": cfg.model.name, "prompt": "Frank Churchill", "max_tokens": 3, "temperature": 0.7}
    assert [client.post("/v1/completions", json=body).headers["x-cache"] for _ in range(2)] == ["bypass", "bypass"]
    greedy = {**body, "temperature": 0}
    assert [client.post("/v1/completions", json=greedy).headers["x-cache"] for _ in range(2)] == ["miss", "hit"]


def test_a_streamed_hit_has_the_same_events_as_the_streamed_miss(exact):
    client, cfg = exact
    body = {
        "model": cfg.model.name,
        "messages": [{"role": "user", "content": "Describe Hartfield."}],
        "max_tokens": 6,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    miss = client.post("/v1/chat/completions", json=body)
    hit = client.post("/v1/chat/completions", json=body)
    assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("miss", "hit")
    a, b = sse(miss), sse(hit)
    assert len(a) == len(b) == 7  # six tokens, then the usage chunk with no choices
    assert [without_ids(e) for e in a] == [without_ids(e) for e in b]
    assert a[-1]["choices"] == [] and a[-1]["usage"]["completion_tokens"] == 6
    plain = client.post("/v1/chat/completions", json={**body, "stream": False, "stream_options": None})
    assert plain.headers["x-cache"] == "hit"  # stream is not in the key: the same answer, another shape
    assert plain.json()["choices"][0]["message"]["content"] == "".join(e["choices"][0]["delta"]["content"] for e in a[:-1])
    assert plain.json()["usage"] == a[-1]["usage"]


def test_metrics_count_hits_misses_and_lookups(exact):
    client, cfg = exact
    before = (metric(client, "perfkit_cache_hits_total"), metric(client, "perfkit_cache_misses_total"))
    body = {"model": cfg.model.name, "prompt": "Jane Fairfax", "max_tokens": 2}
    for _ in range(3):
        client.post("/v1/completions", json=body)
    after = (metric(client, "perfkit_cache_hits_total"), metric(client, "perfkit_cache_misses_total"))
    assert (after[0] - before[0], after[1] - before[1]) == (2, 1)
    assert metric(client, "perfkit_cache_lookup_seconds_bucket", step="exact", le="0.0001") >= 0
    assert metric(client, "perfkit_cache_lookup_seconds_count", step="exact") >= 3
    assert metric(client, "perfkit_cache_bytes") > 0


def test_embeddings_are_cached_per_text(exact):
    client, cfg = exact
    name = cfg.model.embedding_name
    first = client.post("/v1/embeddings", json={"model": name, "input": ["Elinor", "Marianne"]})
    second = client.post("/v1/embeddings", json={"model": name, "input": ["Marianne", "Edward"]})
    third = client.post("/v1/embeddings", json={"model": name, "input": ["Edward", "Elinor"]})
    assert [r.headers["x-cache"] for r in (first, second, third)] == ["miss", "partial", "hit"]
    vec = {
        t: d["embedding"]
        for r, texts in ((first, ["Elinor", "Marianne"]), (second, ["Marianne", "Edward"]))
        for t, d in zip(texts, r.json()["data"])
    }
    np.testing.assert_array_equal(np.array([d["embedding"] for d in third.json()["data"]]), np.array([vec["Edward"], vec["Elinor"]]))


def test_per_key_scope_keeps_clients_apart(tiny, tiny_model_dir, embedder, tmp_path):
    cfg = cache_config(tmp_path, tiny_model_dir, mode="exact", backend="memory", scope="per_key")
    client = start(cfg, tiny[2], embedder)
    try:
        body = {"model": cfg.model.name, "prompt": "Miss Bates", "max_tokens": 3}
        alice, bob = {"Authorization": "Bearer alice"}, {"Authorization": "Bearer bob"}
        seen = [client.post("/v1/completions", json=body, headers=h).headers["x-cache"] for h in (alice, bob, alice, bob)]
        assert seen == ["miss", "miss", "hit", "hit"]
    finally:
        client.__exit__(None, None, None)


def test_an_lru_over_its_bound_evicts_and_counts(tiny, tiny_model_dir, embedder, tmp_path):
    cfg = cache_config(tmp_path, tiny_model_dir, mode="exact", backend="memory", max_memory_mb=0.001)  # ~1 KB
    client = start(cfg, tiny[2], embedder)
    try:
        for i in range(12):
            client.post("/v1/completions", json={"model": cfg.model.name, "prompt": f"Question {i}", "max_tokens": 4})
        assert metric(client, "perfkit_cache_evictions_total") > 0
        assert metric(client, "perfkit_cache_bytes") <= 1024 * 1.05
        first = {"model": cfg.model.name, "prompt": "Question 0", "max_tokens": 4}
        assert client.post("/v1/completions", json=first).headers["x-cache"] == "miss"  # the oldest went first
    finally:
        client.__exit__(None, None, None)
