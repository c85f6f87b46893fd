"""Codecs: every codec and level round-trips, streams, and its bounded decoder stops bombs."""

from __future__ import annotations

import brotli
import pytest

from perfkit.optim import compress

DATA = b"".join(b'{"index": %d, "embedding": [0.%07d, -0.%07d]}, ' % (i, i * 7919 % 10**7, i * 104729 % 10**7) for i in range(4000))


def test_registry_has_every_family_and_level() -> None:
    names = set(compress.CODECS)
    assert {"none", "gzip-1", "gzip-9", "zstd-1", "zstd-19", "brotli-0", "brotli-11"} <= names
    assert len(names) == 1 + 9 + 19 + 12
    with pytest.raises(KeyError, match="allowed: none, gzip-1..9"):
        compress.get("gzip-10")


@pytest.mark.parametrize("name", sorted(compress.CODECS))
def test_codec_round_trips_one_shot_streamed_and_bounded(name: str) -> None:
    codec = compress.get(name)
    packed = codec.compress(DATA)
    assert codec.decompress(packed) == DATA
    if name != "none":
        assert len(packed) < len(DATA) / 2, "JSON-like text must compress"
    stream = codec.stream()
    pieces = [stream.write(DATA[i : i + 10_000]) for i in range(0, len(DATA), 10_000)]
    streamed = b"".join(pieces) + stream.finish()
    assert codec.decompress(streamed) == DATA
    decoder = codec.decoder(len(DATA))
    assert b"".join(decoder.feed(streamed[i : i + 999]) for i in range(0, len(streamed), 999)) == DATA


@pytest.mark.parametrize("name", ["none", "gzip-6", "zstd-3", "brotli-4"])
def test_bounded_decoder_refuses_one_byte_over_the_limit(name: str) -> None:
    codec = compress.get(name)
    with pytest.raises(compress.DecodedTooLarge):
        codec.decoder(len(DATA) - 1).feed(codec.compress(DATA))


def test_streamed_output_decodes_to_everything_written_so_far() -> None:
    stream = compress.get("brotli-5").stream()
    first = stream.write(DATA[:5000])
    decoder = brotli.Decompressor()
    assert decoder.process(first) == DATA[:5000]


def test_for_encoding_maps_http_tokens() -> None:
    assert compress.for_encoding("br").name == "brotli-4"
    assert compress.for_encoding("gzip", 9).name == "gzip-9"
    assert compress.for_encoding("identity").name == "none"
    with pytest.raises(KeyError, match="unsupported content coding 'deflate'"):
        compress.for_encoding("deflate")
