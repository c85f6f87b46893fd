"""The gRPC server (`perfkit serve --protocol grpc`): the same engine and scheduler as REST, over HTTP/2.

gRPC carries protobuf messages, each framed with a 5-byte prefix on an HTTP/2 stream: a float in a
packed `repeated float` costs 4 bytes where JSON spends about 20 characters, and one TCP connection
multiplexes every call. The service (`perfkit.proto`, package `perfkit.v1`) mirrors the REST API:
`Generate` / `GenerateStream` (one message per token, the twin of server-sent events) run through
`Scheduler.submit`, so a prompt gets the same tokens over either protocol; `Embed` returns packed
vectors; `GetPayload` / `StreamPayload` / `Echo` carry the transport stage's payloads.

Limits and failures map onto gRPC status codes, never a crash:
- message size: grpc refuses messages above 4 MiB by default in both directions; the server and
  `grpc_client.channel()` raise both limits to `transport.grpc_max_message_bytes`, and a message
  above it is refused with RESOURCE_EXHAUSTED by grpc itself (on whichever side sees it);
- a prompt the model cannot take (token ids outside the vocabulary, longer than the context with
  `max_tokens`, a conversation the chat template refuses): INVALID_ARGUMENT, as REST answers 400;
- a request that cannot be parsed: grpc answers INTERNAL when a deserializer raises, which blames
  the server for the client's bytes, so `InvalidArgumentInterceptor` wraps every unary-request
  deserializer and answers INVALID_ARGUMENT instead;
- a queue that is too long (`admission.QueueFull`): UNAVAILABLE, as REST answers 503.

`Generate`, `GenerateStream` and `Embed` go through the REST server's answer cache
(`serving.cache`, perfkit.serving.cache) with the same keys: the client is its `authorization:
Bearer <key>` metadata, else its host, as over REST; a request carries no temperature, so every
answer is deterministic and cacheable. The initial metadata says `x-cache: hit | miss` (and
`x-cache-entry`), as REST's headers do; a hit is replayed as the same messages a miss sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from perfkit.config import Config
from perfkit.serving import payloads
from perfkit.serving import perfkit_pb2 as pb
from perfkit.serving import perfkit_pb2_grpc as pb_grpc
from perfkit.serving.admission import QueueFull, client_key, grpc_peer_host
from perfkit.serving.cache import answer, chat_semantic, embed_texts
from perfkit.serving.grpc_client import message_options
from perfkit.serving.launch import write_port_file
from perfkit.serving.state import ServerState, prepare
from perfkit.serving.work import GenerationRequest, TokenEvent
from perfkit.workload import chat_ids

log = logging.getLogger("perfkit.grpc")


class _Malformed:
    """What the wrapped deserializer returns for bytes that are not a valid request."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class InvalidArgumentInterceptor(grpc.aio.ServerInterceptor):
    """Answer INVALID_ARGUMENT, not INTERNAL, to a request message that cannot be deserialized."""

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer

        def deserialize(data: bytes) -> Any:
            try:
                return parse(data)
            except (DecodeError, ValueError) as exc:
                return _Malformed(exc)

        async def refuse(request: _Malformed, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request message: {request.error}")

        if handler.response_streaming:
            behavior = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                if isinstance(request, _Malformed):
                    await refuse(request, context)
                async for item in behavior(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(unary_stream, deserialize, handler.response_serializer)
        unary = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Malformed):
                await refuse(request, context)
            return await unary(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, deserialize, handler.response_serializer)


class PerfkitServicer(pb_grpc.PerfkitServicer):
    """perfkit.v1.Perfkit over one engine (through the scheduler) and the payload builder."""

    def __init__(self, state: ServerState) -> None:
        assert state.engine is not None and state.embedder is not None and state.scheduler is not None
        self.cfg = state.cfg
        self.engine = state.engine
        self.embedder = state.embedder
        self.scheduler = state.scheduler
        self.answers = state.answers
        self.corpus_dir = state.cfg.corpus_dir

    @staticmethod
    def _client(context: grpc.aio.ServicerContext) -> str:
        metadata = {k.lower(): v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        return client_key(metadata.get("authorization"), grpc_peer_host(context.peer()))

    async def _request(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext, stream: bool) -> GenerationRequest:
        limit = self.cfg.serving.max_new_tokens_limit
        if not 1 <= request.max_tokens <= limit:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"max_tokens must be in 1..{limit}")
        ids: list[int] = []
        if request.prompt_token_ids:
            ids = list(request.prompt_token_ids)
        elif request.messages:
            try:
                ids = chat_ids(self.engine.tokenizer, [{"role": m.role, "content": m.content} for m in request.messages])
            except Exception as exc:  # the chat template refused this conversation
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot apply the chat template: {exc}")
        else:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "give messages or prompt_token_ids")
        vocab = int(self.engine.model.config.vocab_size)
        if any(t >= vocab for t in ids):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"prompt token ids must lie in [0, {vocab})")
        if len(ids) + request.max_tokens > self.engine.max_context:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"prompt ({len(ids)} tokens) + max_tokens ({request.max_tokens}) exceeds the context ({self.engine.max_context})",
            )
        return GenerationRequest(
            tuple(ids), request.max_tokens, stop_at_eos=not request.ignore_eos, client_key=context.peer(), stream=stream
        )

    async def _submit(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext, stream: bool
    ) -> tuple[GenerationRequest, AsyncIterator[TokenEvent]]:
        """The generation and its events: a cached answer replayed, or the scheduler's (recorded for the cache)."""
        generation = await self._request(request, context, stream)
        messages = [] if request.prompt_token_ids else [{"role": m.role, "content": m.content} for m in request.messages]
        route, query = "chat" if messages else "completions", None
        if self.answers is not None:  # no temperature and no min_tokens in the message: greedy, min_tokens 0
            semantic = chat_semantic(messages) if messages else None
            query = self.answers.query(self._client(context), generation, 0, request.ignore_eos, None, semantic)
        try:
            metadata, events = await answer(self.answers, route, "grpc", query, lambda: self.scheduler.submit(generation))
        except QueueFull as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            raise  # not reached: abort raises
        if metadata:
            await context.send_initial_metadata(tuple(metadata.items()))
        return generation, events

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> pb.GenerateReply:
        generation, events = await self._submit(request, context, stream=False)
        ids: list[int] = []
        finish = ""
        async for event in events:
            ids.append(event.token_id)
            finish = event.finish_reason or finish
        usage = pb.Usage(prompt_tokens=len(generation.prompt_ids), completion_tokens=len(ids))
        return pb.GenerateReply(model=self.cfg.model.name, text=self.engine.decode(ids), token_ids=ids, finish_reason=finish, usage=usage)

    async def GenerateStream(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.TokenEvent]:
        _, events = await self._submit(request, context, stream=True)
        async for event in events:
            yield pb.TokenEvent(index=event.index, token_id=event.token_id, text=event.text, finish_reason=event.finish_reason or "")

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedReply:
        if not request.input:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "input: at least one text")
        texts = list(request.input)
        metadata, vectors, tokens = await embed_texts(self.answers, self.scheduler, self.embedder, self._client(context), texts, "grpc")
        if metadata:
            await context.send_initial_metadata(tuple(metadata.items()))
        return pb.EmbedReply(model=self.cfg.model.embedding_name, data=[pb.Vector(values=v) for v in vectors], prompt_tokens=tokens)

    def _content(self, request: pb.PayloadRequest) -> payloads.Content:
        kind = payloads.KIND_OF_PROTO.get(request.kind)
        if kind is None or not 1 <= request.size_bytes <= payloads.MAX_SIZE_BYTES:
            raise ValueError(f"kind: one of {', '.join(payloads.KINDS)}; size_bytes in 1..{payloads.MAX_SIZE_BYTES}")
        return payloads.build(kind, int(request.size_bytes), self.corpus_dir)

    async def _require_payload_methods(self, context: grpc.aio.ServicerContext) -> None:
        if not self.cfg.serving.payload_routes:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "payload methods are off: set serving.payload_routes: true")

    async def GetPayload(self, request: pb.PayloadRequest, context: grpc.aio.ServicerContext) -> pb.Payload:
        await self._require_payload_methods(context)
        try:
            content = self._content(request)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return payloads.to_proto(content, request.raw_floats)

    async def StreamPayload(self, request: pb.PayloadRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Payload]:
        await self._require_payload_methods(context)
        chunk_bytes = request.chunk_bytes or 64 * 1024
        try:
            payloads.check_chunking(int(request.size_bytes), chunk_bytes)
            content = self._content(request)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        for piece in payloads.chunks(content, chunk_bytes):
            yield payloads.to_proto(piece, request.raw_floats)

    async def Echo(self, request: pb.Payload, context: grpc.aio.ServicerContext) -> pb.Payload:
        await self._require_payload_methods(context)
        return request

    async def Health(self, request: pb.HealthRequest, context: grpc.aio.ServicerContext) -> pb.HealthReply:
        return pb.HealthReply(status="ok", model=self.cfg.model.name)


async def start(state: ServerState, host: str = "127.0.0.1", port: int = 0) -> tuple[grpc.aio.Server, int]:
    """Serve perfkit.v1 over a prepared state (models loaded, scheduler started) on host:port: (server, bound port)."""
    server = grpc.aio.server(
        interceptors=[InvalidArgumentInterceptor()], options=message_options(state.cfg.transport.grpc_max_message_bytes)
    )
    pb_grpc.add_PerfkitServicer_to_server(PerfkitServicer(state), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"gRPC server could not bind {host}:{port}")
    await server.start()
    return server, bound


async def _serve(cfg: Config, host: str, port: int, port_file: Path | None) -> None:
    state = ServerState(cfg)
    await prepare(state)  # the REST server's own path: load, warm up, start the scheduler and the answer cache
    assert state.scheduler is not None
    server, bound = await start(state, host, port)
    log.info("gRPC server on %s:%d (model %s)", host, bound, cfg.model.name)
    if port_file is not None:
        write_port_file(port_file, bound, state.startup())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=2.0)
    await state.scheduler.stop()
    if state.answers is not None:  # stops perfkit's own Redis child, if it started one
        await state.answers.close()


def serve(cfg: Config, host: str = "127.0.0.1", port: int = 0, port_file: Path | None = None) -> None:
    """Load the model (threads pinned by the caller, `perfkit serve`), serve perfkit.v1 on host:port (0 = a free port,
    written to `port_file`) until SIGTERM."""
    asyncio.run(_serve(cfg, host, port, port_file))
