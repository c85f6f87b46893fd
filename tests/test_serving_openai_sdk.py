"""A launched server, driven over loopback by the official openai SDK and by a flood on one key (claim C8)."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import openai
import pytest
from conftest import write_params

from perfkit import config
from perfkit.serving.launch import launch

BURST = 30
RATE = 15.0


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("sdk-root")
    write_params(root, {"model": {"path": str(tiny_model_dir)}, "hardware": {"device": "cpu", "threads": 1}})
    cfg = config.load("serve", root=root)
    overrides = {"serving.rate_limit": {"enabled": True, "tokens_per_second": RATE, "burst": BURST}}
    with launch(cfg, overrides=overrides) as handle:
        yield handle, cfg


def _client(server, key: str) -> openai.OpenAI:
    handle, _ = server
    return openai.OpenAI(base_url=f"{handle.base_url}/v1", api_key=key, max_retries=0)


def test_sdk_lists_models_and_completes(server):
    _, cfg = server
    client = _client(server, "sdk-1")
    assert {m.id for m in client.models.list()} == {cfg.model.name, cfg.model.embedding_name}
    out = client.completions.create(model=cfg.model.name, prompt="Emma Woodhouse", max_tokens=4, extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 4 and out.choices[0].finish_reason == "length"
    chat = client.chat.completions.create(
        model=cfg.model.name, messages=[{"role": "user", "content": "Hello"}], max_tokens=3, extra_body={"min_tokens": 3}
    )
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens == 3


def test_sdk_streams_chat_token_by_token(server):
    _, cfg = server
    client = _client(server, "sdk-2")
    stream = client.chat.completions.create(
        model=cfg.model.name,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert len(chunks) == 6  # five tokens, then OpenAI's usage chunk with no choices
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5


def test_sdk_embeddings(server):
    _, cfg = server
    client = _client(server, "sdk-3")
    out = client.embeddings.create(model=cfg.model.embedding_name, input=["Persuasion", "Northanger Abbey"])
    vectors = np.array([d.embedding for d in out.data])
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_sdk_raises_its_own_error_types(server):
    _, cfg = server
    client = _client(server, "sdk-4")
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="a", max_tokens=1)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=cfg.model.name, prompt="a", max_tokens=10**6)


def _queue_waits(base_url: str) -> float:
    for line in httpx.get(f"{base_url}/metrics").text.splitlines():
        if line.startswith("perfkit_queue_wait_seconds_count"):
            return float(line.split()[-1])
    raise AssertionError("no queue-wait histogram")


def test_flood_on_one_key_is_cut_at_the_burst_and_others_are_served(server):
    """C8: 60 requests at once on one key; beyond the burst -> 429 without queueing; another key is served."""
    handle, cfg = server
    body = {"model": cfg.model.name, "prompt": "Sense and Sensibility", "max_tokens": 1}

    async def flood() -> tuple[list[httpx.Response], float]:
        async with httpx.AsyncClient(base_url=handle.base_url, timeout=120, limits=httpx.Limits(max_connections=60)) as c:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            sent = [c.post("/v1/completions", json=body, headers={"Authorization": "Bearer flood"}) for _ in range(60)]
            responses = await asyncio.gather(*sent)
            return responses, loop.time() - t0

    queued_before = _queue_waits(handle.base_url)
    responses, elapsed = asyncio.run(flood())
    codes = [r.status_code for r in responses]
    ok, limited = codes.count(200), codes.count(429)
    assert ok + limited == 60
    assert BURST <= ok <= BURST + int(RATE * elapsed) + 1  # the burst, plus what refilled while they arrived
    assert all(r.headers["retry-after"].isdigit() and r.json()["error"]["code"] == 429 for r in responses if r.status_code == 429)
    assert _queue_waits(handle.base_url) - queued_before == ok  # refused requests never reached the queue
    other = httpx.post(f"{handle.base_url}/v1/completions", json=body, headers={"Authorization": "Bearer calm"})
    assert other.status_code == 200
    assert httpx.get(f"{handle.base_url}/health").status_code == 200
