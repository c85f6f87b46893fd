"""The compression stage: which codec and level carries OpenAI-shaped JSON fastest over which link.

For each payload (a batch of chat completions, real MiniLM embedding vectors as JSON numbers, a
long document; each at least `payload_kb`) and each codec and level, the stage measures the ratio
and the compress and decompress speed (warm-up, then repeats; median MB/s of the uncompressed
size, with the CV). A level is on the Pareto frontier when no other level both compresses
smaller and compresses faster. End to end, a body sent over a link of speed S costs
`compress + compressed bytes / S + decompress`; the fastest codec per speed answers "should I
compress at all, and how hard": on a slow link the ratio dominates, on a fast one the CPU.

Three checks keep the numbers honest: the codec speeds are timed again by a direct call of each
codec library and must agree within max(10%, 3x the CV); a real response (/v1/embeddings of many
inputs) is fetched from the REST server with each `Accept-Encoding`, so the wire bytes and the
latency come from the served path; and, where root allows, the compressed bodies are sent over a
real tc-shaped link between two network namespaces to compare the modelled transfer time with a
measured one. Claim C7 (Brotli 11 on JSON: -70% size for +5 ms decompression) is answered with
the measured size reduction, decompression time, and the compression cost the claim leaves out.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from perfkit.config import PayloadKind, Section
from perfkit.stages.base import MEASURED_DATA, Plot, StageSpec

GzipLevel = Annotated[int, Field(ge=1, le=9)]
ZstdLevel = Annotated[int, Field(ge=1, le=19)]
BrotliLevel = Annotated[int, Field(ge=0, le=11)]


class CompressionConfig(Section):
    """Codecs on OpenAI-shaped JSON: ratio and speed per level, time per link speed, through the server (C7)."""

    payloads: tuple[PayloadKind, ...] = Field(("chat_batch", "embeddings", "document"), description="JSON bodies compressed")
    payload_kb: int = Field(256, ge=4, le=65_536, description="each payload's JSON size, at least, KiB")
    gzip_levels: tuple[GzipLevel, ...] = tuple(range(1, 10))
    zstd_levels: tuple[ZstdLevel, ...] = tuple(range(1, 20))
    brotli_levels: tuple[BrotliLevel, ...] = tuple(range(0, 12))
    warmup: int = Field(1, ge=0, le=100, description="untimed calls before each codec timing")
    min_repeats: int = Field(3, ge=1, le=10_000, description="timed calls per codec, operation and payload, at least")
    min_duration_s: float = Field(0.05, ge=0, le=60, description="each timing also repeats until this long")
    max_duration_s: float = Field(5.0, gt=0, le=600, description="cap per timing, warm-up included; capped timings say so")
    link_mbit: tuple[float, ...] = Field((1, 10, 100, 1000, 10_000), description="modelled link speeds, Mbit/s")
    check_codecs: tuple[str, ...] = Field(("gzip-6", "zstd-3", "brotli-11"), description="timed again by a direct library call")
    rounds_top: int = Field(
        3,
        ge=1,
        le=50,
        description="per payload and link, the codecs the one-round sweep found fastest, timed again in measure.rounds rounds",
    )
    rest: bool = Field(True, description="also measure a real /v1/embeddings response through the REST server")
    rest_inputs: int = Field(64, ge=1, le=4096, description="short texts (query-sized) in the measured /v1/embeddings request")
    rest_words: int = Field(8, ge=1, le=1000, description="words per text: the response size depends on the count, not the length")
    rest_requests: int = Field(3, ge=1, le=1000, description="timed requests per Accept-Encoding")
    accept_encodings: tuple[Literal["identity", "gzip", "zstd", "br"], ...] = ("identity", "gzip", "zstd", "br")
    netns: bool = Field(True, description="also send over a real rate-limited veth link between network namespaces (root)")
    netns_mbit: tuple[float, ...] = Field((10, 100), description="tc tbf rates of the namespace link, Mbit/s")
    netns_codecs: tuple[str, ...] = ("none", "gzip-6", "zstd-3", "brotli-5", "brotli-11")
    netns_max_transfer_s: float = Field(10.0, gt=0, le=600, description="transfers expected to take longer are skipped")
    launch_timeout_s: float = Field(180.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _known_codecs(self) -> CompressionConfig:
        from perfkit.optim.compress import ALLOWED, CODECS

        for key in ("check_codecs", "netns_codecs"):
            unknown = [c for c in getattr(self, key) if c not in CODECS]
            if unknown:
                raise ValueError(f"{key}: unknown codec {unknown[0]!r}; allowed: {ALLOWED}")
        if not self.payloads or not self.link_mbit or min(self.link_mbit) <= 0 or min(self.netns_mbit, default=1) <= 0:
            raise ValueError("payloads, link_mbit: at least one; link speeds positive")
        return self


STAGE = StageSpec(
    name="compression",
    budget_s=90,
    title="Compression: none, gzip, zstd and Brotli on OpenAI-shaped JSON",
    description="Ratio and compress/decompress speed per codec and level, the Pareto frontier, the fastest codec per "
    "link speed end to end, a real /v1/embeddings response per Accept-Encoding, and a real tc-shaped link (root only).",
    run="perfkit.stages.compression.experiment:run",
    section=CompressionConfig,
    reads=("model", "hardware", "serving", "measure"),
    version="2",
    data=MEASURED_DATA,
    plots=(Plot("end_to_end", "link_mbit", "total_s"), Plot("codecs", "compress_mb_s", "ratio")),
    order=70,
)
