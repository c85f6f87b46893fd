"""Payloads of a chosen logical size, and their two wire forms (JSON for REST, protobuf for gRPC).

The transport stage asks both servers for the same content at 1 KB .. 8 MB and compares what it
costs to carry. Three kinds of realistic serving output:

- `embeddings`: float32 unit vectors of `EMBEDDING_DIM` (all-MiniLM-L6's width), seeded. Drawn
  rather than computed, because an 8 MB batch would take the embedding model minutes here; on the
  wire a float is a float. REST carries them as JSON numbers (`encoding_format="float"`, about 20
  characters per float) or base64 float32 (`"base64"`, 5.33 bytes per float); gRPC as packed
  `repeated float` (4 bytes per float, but built and read one Python float at a time) or, with
  `raw_floats`, one `bytes` field of float32 (4 bytes per float, one copy each way).
- `document`: corpus text (the workload novels), cut at a UTF-8 boundary.
- `chat_batch`: OpenAI-shaped chat completions whose content is corpus passages.

The logical size is the content's own bytes (4 per float, UTF-8 bytes of text), so the wire size of
each form can be compared with it. Chunk streaming cuts the same content into pieces of about
`chunk_bytes` each, in order, that reassemble to the whole.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from perfkit.config import MAX_PAYLOAD_BYTES
from perfkit.config import PayloadKind as Kind
from perfkit.serving import perfkit_pb2 as pb
from perfkit.workload import passages

KINDS: tuple[Kind, ...] = get_args(Kind)
EncodingFormat = Literal["float", "base64"]
EMBEDDING_DIM = 384
MAX_SIZE_BYTES = MAX_PAYLOAD_BYTES  # the largest payload a server builds on request: a bound on its time and memory
JSON_SLICE = 256  # list items encoded per json.dumps call: the C encoder holds the GIL for a whole call
MAX_CHUNKS = 4096  # pieces per streamed payload: 1-byte chunks of 256 MiB would be 2**28 Python objects
PROTO_KIND = {"embeddings": pb.EMBEDDINGS, "document": pb.DOCUMENT, "chat_batch": pb.CHAT_BATCH}
KIND_OF_PROTO = {v: k for k, v in PROTO_KIND.items()}
CHAT_MODEL = "perfkit-payload"


@dataclass(frozen=True)
class Content:
    """One payload's content: vectors (n x dim float32), a text, or chat completion texts."""

    kind: Kind
    vectors: np.ndarray | None = None
    text: str | None = None
    replies: tuple[str, ...] | None = None

    @property
    def logical_bytes(self) -> int:
        if self.vectors is not None:
            return int(self.vectors.nbytes)
        if self.text is not None:
            return len(self.text.encode())
        return sum(len(r.encode()) for r in self.replies or ())

    def same_as(self, other: Content) -> bool:
        """True when `other` carries exactly this content (after a round trip through a wire form)."""
        if self.kind != other.kind:
            return False
        if self.vectors is not None:
            return other.vectors is not None and np.array_equal(self.vectors, other.vectors)
        return self.text == other.text and self.replies == other.replies


def _cut_utf8(text: str, size_bytes: int) -> str:
    return text.encode()[:size_bytes].decode("utf-8", errors="ignore")


@lru_cache(maxsize=16)
def build(kind: Kind, size_bytes: int, corpus_dir: Path, seed: int = 0) -> Content:
    """Content of `kind` whose logical size is `size_bytes` (embeddings: whole vectors, at least one)."""
    if kind == "embeddings":
        rows = max(1, round(size_bytes / (4 * EMBEDDING_DIM)))
        v = np.random.default_rng(seed).standard_normal((rows, EMBEDDING_DIM)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return Content(kind, vectors=v)
    pool = passages(corpus_dir)
    if kind == "document":
        parts, total, i = [], 0, 0
        while total < size_bytes:
            parts.append(pool[i % len(pool)])
            total += len(parts[-1].encode()) + 2
            i += 1
        return Content(kind, text=_cut_utf8("\n\n".join(parts), size_bytes))
    if kind == "chat_batch":
        replies, total, i = [], 0, 0
        while total < size_bytes:
            reply = _cut_utf8(pool[i % len(pool)], size_bytes - total)
            replies.append(reply)
            total += len(reply.encode())
            i += 1
        return Content(kind, replies=tuple(replies))
    raise ValueError(f"unknown payload kind {kind!r}; allowed: {', '.join(KINDS)}")


def check_chunking(size_bytes: int, chunk_bytes: int) -> None:
    """Refuse a split into more than MAX_CHUNKS pieces before any content is built."""
    smallest = -(-size_bytes // MAX_CHUNKS)
    if chunk_bytes < max(1, smallest):
        raise ValueError(f"chunk_bytes must be >= {max(1, smallest)} for size_bytes={size_bytes} (at most {MAX_CHUNKS} chunks)")


def chunks(content: Content, chunk_bytes: int) -> list[Content]:
    """The content in order, in pieces of about `chunk_bytes` (whole vectors and whole replies)."""
    if chunk_bytes < 1:
        raise ValueError("chunk_bytes must be positive")
    if content.vectors is not None:
        rows = max(1, chunk_bytes // (4 * EMBEDDING_DIM))
        return [Content(content.kind, vectors=content.vectors[i : i + rows]) for i in range(0, len(content.vectors), rows)]
    if content.text is not None:
        raw = content.text.encode()
        pieces, start = [], 0
        while start < len(raw):
            end = min(len(raw), start + chunk_bytes)
            while end < len(raw) and (raw[end] & 0xC0) == 0x80:  # never split a UTF-8 sequence
                end += 1
            pieces.append(Content(content.kind, text=raw[start:end].decode()))
            start = end
        return pieces or [content]
    out: list[Content] = []
    current: list[str] = []
    size = 0
    for reply in content.replies or ():
        current.append(reply)
        size += len(reply.encode())
        if size >= chunk_bytes:
            out.append(Content(content.kind, replies=tuple(current)))
            current, size = [], 0
    if current or not out:
        out.append(Content(content.kind, replies=tuple(current)))
    return out


def join(pieces: list[Content]) -> Content:
    """Reassemble chunks into one content (the inverse of `chunks`)."""
    kind = pieces[0].kind
    if pieces[0].vectors is not None:
        return Content(kind, vectors=np.concatenate([p.vectors for p in pieces]))  # type: ignore[misc]
    if pieces[0].text is not None:
        return Content(kind, text="".join(p.text or "" for p in pieces))
    return Content(kind, replies=tuple(r for p in pieces for r in p.replies or ()))


# --- JSON (REST) -------------------------------------------------------------------------------


def _chat_completion(i: int, text: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{i}",
        "object": "chat.completion",
        "model": CHAT_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0},
    }


def to_json(content: Content, encoding_format: EncodingFormat = "float") -> dict[str, Any]:
    """The content as the OpenAI-shaped JSON object the REST server sends."""
    if content.vectors is not None:
        if encoding_format == "base64":
            data = [base64.b64encode(row.tobytes()).decode() for row in content.vectors]
        else:
            data = content.vectors.tolist()
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
            "model": CHAT_MODEL,
        }
    if content.text is not None:
        return {"object": "document", "text": content.text}
    return {"object": "list", "data": [_chat_completion(i, r) for i, r in enumerate(content.replies or ())]}


def from_json(obj: dict[str, Any], kind: Kind) -> Content:
    """Parse a REST payload body back into content (base64 or float embeddings alike)."""
    if kind == "embeddings":
        rows = [
            np.frombuffer(base64.b64decode(e), dtype=np.float32) if isinstance(e, str) else np.asarray(e, np.float32)
            for e in (d["embedding"] for d in obj["data"])
        ]
        return Content(kind, vectors=np.stack(rows) if rows else np.zeros((0, EMBEDDING_DIM), np.float32))
    if kind == "document":
        return Content(kind, text=obj["text"])
    return Content(kind, replies=tuple(d["choices"][0]["message"]["content"] for d in obj["data"]))


def encode_json(content: Content, encoding_format: EncodingFormat = "float") -> bytes:
    """The REST body: compact JSON from the standard library's encoder, the `data` list a slice at a time.

    One `json.dumps` over 16 MiB of floats runs for seconds in C without releasing the GIL, so a
    server thread encoding it would stall the event loop (and `/health`) for as long; slices of
    JSON_SLICE items give the interpreter a switch point between them. The bytes are the same.
    """
    obj = to_json(content, encoding_format)
    data = obj.get("data")
    if not isinstance(data, list) or len(data) <= JSON_SLICE:
        return json.dumps(obj, separators=(",", ":")).encode()
    head, _, tail = json.dumps({**obj, "data": []}, separators=(",", ":")).partition('"data":[]')
    parts = [json.dumps(data[i : i + JSON_SLICE], separators=(",", ":"))[1:-1] for i in range(0, len(data), JSON_SLICE)]
    return (head + '"data":[' + ",".join(parts) + "]" + tail).encode()


def decode_json(body: bytes | str, kind: Kind) -> Content:
    return from_json(json.loads(body), kind)


# --- protobuf (gRPC) ---------------------------------------------------------------------------


def to_proto(content: Content, raw_floats: bool = False) -> pb.Payload:
    """The content as a `perfkit.v1.Payload` message; `raw_floats`: embeddings as one float32 bytes field."""
    if content.vectors is not None and raw_floats:
        vectors = content.vectors.astype("<f4", copy=False)
        return pb.Payload(embeddings=pb.EmbeddingBatch(float32_le=vectors.tobytes(), dim=vectors.shape[1]))
    if content.vectors is not None:
        # Python floats: filling a repeated field from numpy scalars costs over twice as long.
        rows = content.vectors.tolist()
        return pb.Payload(embeddings=pb.EmbeddingBatch(vectors=[pb.Vector(values=row) for row in rows]))
    if content.text is not None:
        return pb.Payload(document=pb.Document(text=content.text))
    responses = [
        pb.ChatResponse(id=f"chatcmpl-{i}", model=CHAT_MODEL, content=r, finish_reason="length")
        for i, r in enumerate(content.replies or ())
    ]
    return pb.Payload(chat_batch=pb.ChatBatch(responses=responses))


def from_proto(message: pb.Payload) -> Content:
    """Parse a `Payload` message back into content."""
    which = message.WhichOneof("body")
    if which == "embeddings" and message.embeddings.float32_le:
        batch = message.embeddings
        return Content("embeddings", vectors=np.frombuffer(batch.float32_le, dtype="<f4").reshape(-1, batch.dim))
    if which == "embeddings":
        rows = [np.asarray(v.values, dtype=np.float32) for v in message.embeddings.vectors]
        return Content("embeddings", vectors=np.stack(rows) if rows else np.zeros((0, EMBEDDING_DIM), np.float32))
    if which == "document":
        return Content("document", text=message.document.text)
    if which == "chat_batch":
        return Content("chat_batch", replies=tuple(r.content for r in message.chat_batch.responses))
    raise ValueError("empty payload message")


def encode_proto(content: Content, raw_floats: bool = False) -> bytes:
    return to_proto(content, raw_floats).SerializeToString()


def decode_proto(body: bytes) -> Content:
    return from_proto(pb.Payload.FromString(body))
