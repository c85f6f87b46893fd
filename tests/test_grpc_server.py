"""The gRPC server, in its own process via the launcher: parity with REST, streams, limits, bad input."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from conftest import REPO, write_params

from perfkit import config
from perfkit.serving import payloads
from perfkit.serving import perfkit_pb2 as pb
from perfkit.serving import perfkit_pb2_grpc as pb_grpc
from perfkit.serving.grpc_client import channel
from perfkit.serving.launch import launch

MIB = 1 << 20
LIMIT = 64 * MIB
PROMPT = [{"role": "user", "content": "Summarize: the weather was fine and the walk was long."}]


@pytest.fixture(scope="module")
def cfg(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> config.Config:
    root = tmp_path_factory.mktemp("grpc-root")
    (root / "data").mkdir()
    (root / "data" / "corpus").symlink_to(REPO / "data" / "corpus")
    write_params(root, {"model": {"path": str(tiny_model_dir)}, "hardware": {"device": "cpu", "threads": 1}})
    return config.load("serve", root=root)


@pytest.fixture(scope="module")
def servers(cfg: config.Config):
    """A REST and a gRPC server over the same tiny model, with the params' message limit."""
    overrides = {"serving.rate_limit.enabled": False, "serving.payload_routes": True, "transport.grpc_max_message_bytes": LIMIT}
    with (
        launch(cfg, protocol="rest", overrides=overrides, probe_cold_start=False) as rest,
        launch(cfg, protocol="grpc", overrides=overrides, probe_cold_start=False) as rpc,
        channel(rpc.base_url, LIMIT) as ch,
    ):
        yield httpx.Client(base_url=rest.base_url, timeout=60), pb_grpc.PerfkitStub(ch), ch, rpc


def _generate_request(n: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(messages=[pb.ChatMessage(**m) for m in PROMPT], max_tokens=n, ignore_eos=True)


def test_same_request_gives_the_same_tokens_over_rest_and_grpc(servers, cfg):
    rest, stub, _, _ = servers
    body = {"model": cfg.model.name, "messages": PROMPT, "max_tokens": 6, "ignore_eos": True, "temperature": 0}
    answer = rest.post("/v1/chat/completions", json=body).json()
    reply = stub.Generate(_generate_request(6), timeout=60)
    assert reply.text == answer["choices"][0]["message"]["content"]
    assert reply.usage.completion_tokens == answer["usage"]["completion_tokens"] == len(reply.token_ids) == 6
    assert reply.usage.prompt_tokens == answer["usage"]["prompt_tokens"]
    assert reply.finish_reason == "length"


def test_generate_stream_sends_every_token_once_in_order(servers):
    _, stub, _, _ = servers
    reply = stub.Generate(_generate_request(7), timeout=60)
    events = list(stub.GenerateStream(_generate_request(7), timeout=60))
    assert [e.index for e in events] == list(range(7))
    assert [e.token_id for e in events] == list(reply.token_ids)
    assert "".join(e.text for e in events) == reply.text
    assert [e.finish_reason for e in events] == [""] * 6 + ["length"]


def test_embed_matches_the_rest_embeddings(servers, cfg):
    rest, stub, _, _ = servers
    texts = ["It is a truth universally acknowledged.", "Emma Woodhouse, handsome, clever, and rich."]
    reply = stub.Embed(pb.EmbedRequest(input=texts), timeout=60)
    answer = rest.post("/v1/embeddings", json={"model": cfg.model.embedding_name, "input": texts}).json()
    got = np.array([list(v.values) for v in reply.data], dtype=np.float32)
    want = np.array([d["embedding"] for d in answer["data"]], dtype=np.float32)
    assert got.shape == want.shape and np.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("kind", payloads.KINDS)
def test_payload_arrives_whole_unary_and_chunked_over_both_protocols(servers, cfg, kind):
    rest, stub, _, _ = servers
    size, chunk = 200_000, 16_384
    expected = payloads.build(kind, size, cfg.resolve("data/corpus"))
    request = pb.PayloadRequest(kind=payloads.PROTO_KIND[kind], size_bytes=size, chunk_bytes=chunk)
    assert expected.same_as(payloads.from_proto(stub.GetPayload(request, timeout=60)))
    pieces = [payloads.from_proto(m) for m in stub.StreamPayload(request, timeout=60)]
    assert len(pieces) > 1 and expected.same_as(payloads.join(pieces))
    request.raw_floats = True  # embeddings as one float32 bytes field; other kinds ignore it
    assert expected.same_as(payloads.from_proto(stub.GetPayload(request, timeout=60)))
    assert expected.same_as(payloads.join([payloads.from_proto(m) for m in stub.StreamPayload(request, timeout=60)]))
    params = {"kind": kind, "size_bytes": size, "chunk_bytes": chunk, "encoding_format": "base64"}
    headers = {"Accept-Encoding": "identity"}
    assert expected.same_as(payloads.decode_json(rest.get("/v1/payload", params=params, headers=headers).content, kind))
    with rest.stream("GET", "/v1/payload/stream", params=params, headers=headers) as r:
        lines = [payloads.decode_json(line, kind) for line in r.iter_lines() if line]
    assert len(lines) == len(pieces) and expected.same_as(payloads.join(lines))


def test_an_8_mib_payload_passes_with_the_params_limit_and_not_with_grpc_defaults(servers):
    _, stub, _, rpc = servers
    request = pb.PayloadRequest(kind=pb.DOCUMENT, size_bytes=8 * MIB)
    assert len(stub.GetPayload(request, timeout=60).document.text.encode()) > 8 * MIB - 4
    echo = pb.Payload(document=pb.Document(text="x" * (8 * MIB)))
    assert stub.Echo(echo, timeout=60).document.text == echo.document.text
    with grpc.insecure_channel(rpc.base_url) as default:  # 4 MiB receive limit on the client
        with pytest.raises(grpc.RpcError) as refused:
            pb_grpc.PerfkitStub(default).GetPayload(request, timeout=60)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_server_with_the_default_limit_refuses_8_mib_either_way(cfg):
    overrides = {"transport.grpc_max_message_bytes": 4 * MIB, "serving.payload_routes": True}
    with launch(cfg, protocol="grpc", overrides=overrides, probe_cold_start=False, warmup=False) as rpc, channel(rpc.base_url, LIMIT) as ch:
        stub = pb_grpc.PerfkitStub(ch)
        with pytest.raises(grpc.RpcError) as outgoing:
            stub.GetPayload(pb.PayloadRequest(kind=pb.EMBEDDINGS, size_bytes=8 * MIB), timeout=60)
        with pytest.raises(grpc.RpcError) as incoming:
            stub.Echo(pb.Payload(document=pb.Document(text="x" * (8 * MIB))), timeout=60)
        assert outgoing.value.code() == incoming.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.Health(pb.HealthRequest(), timeout=10).status == "ok"


@pytest.mark.parametrize("method", ["Generate", "GenerateStream", "GetPayload", "StreamPayload", "Echo", "Embed"])
def test_a_request_that_cannot_be_parsed_is_invalid_argument_and_the_server_lives_on(servers, method):
    _, stub, ch, _ = servers
    streaming = method in ("GenerateStream", "StreamPayload")
    call = (ch.unary_stream if streaming else ch.unary_unary)(f"/perfkit.v1.Perfkit/{method}")
    with pytest.raises(grpc.RpcError) as refused:
        result = call(b"\xff\xff\xff\xff", timeout=30)
        list(result) if streaming else result
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stub.Health(pb.HealthRequest(), timeout=10).status == "ok"


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("Generate", pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content="hi")], max_tokens=0)),
        ("Generate", pb.GenerateRequest(max_tokens=4)),
        ("Generate", pb.GenerateRequest(prompt_token_ids=[1, 10**9], max_tokens=4)),
        ("GenerateStream", pb.GenerateRequest(prompt_token_ids=[1] * 100_000, max_tokens=4)),
        ("GetPayload", pb.PayloadRequest(size_bytes=1024)),
        ("GetPayload", pb.PayloadRequest(kind=pb.DOCUMENT)),
        ("StreamPayload", pb.PayloadRequest(kind=pb.DOCUMENT, size_bytes=payloads.MAX_SIZE_BYTES + 1)),
        ("Embed", pb.EmbedRequest()),
    ],
)
def test_wrong_values_are_invalid_argument(servers, method, request_):
    _, stub, _, _ = servers
    with pytest.raises(grpc.RpcError) as refused:
        result = getattr(stub, method)(request_, timeout=30)
        list(result) if method in ("GenerateStream", "StreamPayload") else result
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_payload_methods_are_off_unless_a_setting_asks_for_them(cfg):
    with launch(cfg, protocol="grpc", probe_cold_start=False, warmup=False) as rpc, channel(rpc.base_url, LIMIT) as ch:
        stub = pb_grpc.PerfkitStub(ch)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetPayload(pb.PayloadRequest(kind=pb.DOCUMENT, size_bytes=1024), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert stub.Health(pb.HealthRequest(), timeout=10).status == "ok"
