"""Byte codecs: gzip, zstd and Brotli at every level, one-shot, streaming, and bounded decoding.

A codec trades CPU for bytes. Higher levels search harder for repeats (longer match windows,
better entropy coding), so the ratio rises slowly while compression slows down steeply; decoding
speed barely depends on the level. Which level wins end to end depends on the link: on a slow
link the bytes saved dominate, on a fast one the CPU spent does.

Each codec is a small frozen object named `<family>-<level>` (`gzip-6`, `zstd-19`, `brotli-11`,
and `none`), with its HTTP content-coding token (`gzip`, `zstd`, `br`). Besides one-shot
`compress`/`decompress` it offers:

- `stream()`: a compressor that flushes after every chunk, so a streamed HTTP response can be
  compressed without holding back what has already been produced;
- `decoder(limit)`: a decompressor that never produces more than `limit` bytes in total and
  raises `DecodedTooLarge` as soon as the input asks for more. A decompression bomb (1 GiB of
  zeros is 1.6 KB of Brotli, 32 KB of zstd) is stopped after `limit` bytes, with memory bounded
  by the limit, not by what the sender claims.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import brotli
import zstandard

Family = Literal["none", "gzip", "zstd", "brotli"]
LEVELS: dict[Family, range] = {"none": range(0, 1), "gzip": range(1, 10), "zstd": range(1, 20), "brotli": range(0, 12)}
ENCODING: dict[Family, str] = {"none": "identity", "gzip": "gzip", "zstd": "zstd", "brotli": "br"}
_STEP = 1 << 16  # decoded bytes produced per decoder call: the memory a bomb can claim beyond `limit`


class DecodedTooLarge(ValueError):
    """The decompressed data would exceed the decoder's limit."""


class Stream(Protocol):
    def write(self, chunk: bytes) -> bytes: ...
    def finish(self) -> bytes: ...


class Decoder(Protocol):
    def feed(self, chunk: bytes) -> bytes: ...


@dataclass(frozen=True)
class Codec:
    """One codec at one level; `name` is `<family>-<level>` or `none`."""

    family: Family
    level: int = 0

    @property
    def name(self) -> str:
        return "none" if self.family == "none" else f"{self.family}-{self.level}"

    @property
    def encoding(self) -> str:
        """The HTTP `Content-Encoding` token."""
        return ENCODING[self.family]

    def compress(self, data: bytes) -> bytes:
        if self.family == "gzip":
            c = zlib.compressobj(self.level, zlib.DEFLATED, 31)  # wbits 31: gzip header and trailer
            return c.compress(data) + c.flush()
        if self.family == "zstd":
            return zstandard.ZstdCompressor(level=self.level).compress(data)
        if self.family == "brotli":
            return brotli.compress(data, quality=self.level)
        return data

    def decompress(self, data: bytes) -> bytes:
        if self.family == "gzip":
            return zlib.decompress(data, 31)
        if self.family == "zstd":
            # decompressobj, not decompress: a streamed frame carries no content size in its header
            return zstandard.ZstdDecompressor().decompressobj().decompress(data)
        if self.family == "brotli":
            return brotli.decompress(data)
        return data

    def stream(self) -> Stream:
        """A compressor whose every `write` returns output that decodes to everything written so far."""
        return _STREAMS[self.family](self.level)

    def decoder(self, limit: int) -> Decoder:
        """An incremental decompressor that raises `DecodedTooLarge` once output would pass `limit` bytes."""
        return _DECODERS[self.family](limit)


class _GzipStream:
    def __init__(self, level: int) -> None:
        self._c = zlib.compressobj(level, zlib.DEFLATED, 31)

    def write(self, chunk: bytes) -> bytes:
        return self._c.compress(chunk) + self._c.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._c.flush()


class _ZstdStream:
    def __init__(self, level: int) -> None:
        self._c = zstandard.ZstdCompressor(level=level).compressobj()

    def write(self, chunk: bytes) -> bytes:
        return self._c.compress(chunk) + self._c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self) -> bytes:
        return self._c.flush()


class _BrotliStream:
    def __init__(self, level: int) -> None:
        self._c = brotli.Compressor(quality=level)

    def write(self, chunk: bytes) -> bytes:
        return self._c.process(chunk) + self._c.flush()

    def finish(self) -> bytes:
        return self._c.finish()


class _IdentityStream:
    def __init__(self, level: int) -> None:
        pass

    def write(self, chunk: bytes) -> bytes:
        return chunk

    def finish(self) -> bytes:
        return b""


class _Budget:
    def __init__(self, limit: int) -> None:
        self.limit, self.total = limit, 0

    def take(self, out: bytes) -> bytes:
        self.total += len(out)
        if self.total > self.limit:
            raise DecodedTooLarge(f"decompressed body exceeds {self.limit} bytes")
        return out


class _GzipDecoder:
    def __init__(self, limit: int) -> None:
        self._d, self._budget = zlib.decompressobj(31), _Budget(limit)

    def feed(self, chunk: bytes) -> bytes:
        parts = [self._budget.take(self._d.decompress(chunk, _STEP))]
        while self._d.unconsumed_tail:
            parts.append(self._budget.take(self._d.decompress(self._d.unconsumed_tail, _STEP)))
        return b"".join(parts)


class _BrotliDecoder:
    def __init__(self, limit: int) -> None:
        self._d, self._budget = brotli.Decompressor(), _Budget(limit)

    def feed(self, chunk: bytes) -> bytes:
        parts = [self._budget.take(self._d.process(chunk, output_buffer_limit=_STEP))]
        # An output that reached the cap may have more behind it: drain it in bounded steps.
        while len(parts[-1]) >= _STEP and not self._d.is_finished():
            parts.append(self._budget.take(self._d.process(b"", output_buffer_limit=_STEP)))
        return b"".join(parts)


class _ZstdDecoder:
    """zstd's decompressobj has no output bound; its stream writer hands output to a sink in steps."""

    def __init__(self, limit: int) -> None:
        self._budget, self._parts = _Budget(limit), []
        self._w = zstandard.ZstdDecompressor().stream_writer(self, write_size=_STEP, write_return_read=True)

    def write(self, data: bytes) -> int:  # the sink the stream writer calls
        self._parts.append(self._budget.take(bytes(data)))
        return len(data)

    def feed(self, chunk: bytes) -> bytes:
        self._w.write(chunk)
        out, self._parts = b"".join(self._parts), []
        return out


class _IdentityDecoder:
    def __init__(self, limit: int) -> None:
        self._budget = _Budget(limit)

    def feed(self, chunk: bytes) -> bytes:
        return self._budget.take(chunk)


_STREAMS: dict[Family, Callable[[int], Stream]] = {
    "none": _IdentityStream,
    "gzip": _GzipStream,
    "zstd": _ZstdStream,
    "brotli": _BrotliStream,
}
_DECODERS: dict[Family, Callable[[int], Decoder]] = {
    "none": _IdentityDecoder,
    "gzip": _GzipDecoder,
    "zstd": _ZstdDecoder,
    "brotli": _BrotliDecoder,
}

CODECS: dict[str, Codec] = {c.name: c for family, levels in LEVELS.items() for c in (Codec(family, level) for level in levels)}
ALLOWED = "none, gzip-1..9, zstd-1..19, brotli-0..11"


def get(name: str) -> Codec:
    """The codec called `name` (`gzip-6`, `zstd-19`, `brotli-11`, `none`)."""
    try:
        return CODECS[name]
    except KeyError:
        raise KeyError(f"unknown codec {name!r}; allowed: {ALLOWED}") from None


def for_encoding(token: str, level: int | None = None) -> Codec:
    """The codec for an HTTP content-coding token (`gzip`, `br`, `zstd`, `identity`) at `level` (or its default)."""
    family = {v: k for k, v in ENCODING.items()}.get(token.strip().lower())
    if family is None:
        raise KeyError(f"unsupported content coding {token!r}; allowed: {', '.join(ENCODING.values())}")
    default = {"none": 0, "gzip": 6, "zstd": 3, "brotli": 4}[family]
    return Codec(family, default if level is None else level)
