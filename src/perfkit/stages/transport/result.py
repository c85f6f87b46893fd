"""The transport stage's result: payload cells, token streams and load runs; C6 per payload kind."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import median
from typing import TYPE_CHECKING, Any

from perfkit.load.payload_load import LoadCell, size_label
from perfkit.measure import Spread, noise_sentence
from perfkit.stages.base import StageResult
from perfkit.stages.transport import STAGE
from perfkit.stages.transport.cells import PayloadCell, TokenStreams

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

NEGLIGIBLE_SHARE = 0.01  # transport under 1% of a generation does not matter for latency
C6_MIN_KB = 1024  # the claim is about payloads above 1 MB


@dataclass(frozen=True)
class Winner:
    """The faster protocol for one payload kind and size (each protocol's best unary route, p50)."""

    size_kb: int
    kind: str
    protocol: str  # "gRPC" | "REST"
    pct: float  # how much faster, % of the slower one's p50
    grpc_ms: float
    grpc_encoding: str
    rest_ms: float
    rest_encoding: str


@dataclass(frozen=True)
class TransportResults(StageResult):
    spec = STAGE
    cells: tuple[PayloadCell, ...]
    streams: tuple[TokenStreams, ...]
    loads: tuple[LoadCell, ...]
    wall_s: float
    load_kind: str = "document"
    noisy_cv: float = 0.05
    min_repeats: int = 5

    def variants(self) -> tuple[PayloadCell, ...]:
        return self.cells

    @property
    def generation_ms(self) -> float:
        """Median E2E of one token-streamed generation, both protocols together."""
        return median([s.e2e.p50 for s in self.streams])

    @property
    def tokens_match(self) -> bool:
        return len({s.texts for s in self.streams}) == 1

    def _cell(self, protocol: str, encoding: str, kind: str, size_kb: int, mode: str = "unary") -> PayloadCell | None:
        for c in self.cells:
            r = c.route
            if (r.protocol, r.encoding, r.kind, c.size_kb, c.mode) == (protocol, encoding, kind, size_kb, mode):
                return c
        return None

    def cell_table(self) -> pd.DataFrame:
        import pandas as pd

        rows = []
        for c in self.cells:
            rows.append(
                {
                    "size": size_label(c.size_kb),
                    "size_kb": c.size_kb,
                    "kind": c.route.kind,
                    "route": f"{c.route.protocol}/{c.route.encoding}",
                    "mode": c.mode,
                    "latency_ms_p50": c.latency.p50,
                    "latency_ms_p99": c.latency.p99 if c.latency.p99_reliable else float("nan"),  # not a p99 under 100
                    "n": c.latency.count,
                    **c.spread.columns("round_p50_ms", self.noisy_cv, self.min_repeats),
                    "capped": c.capped,
                    "serialize_ms_p50": c.serialize.p50,
                    "deserialize_ms_p50": c.deserialize.p50,
                    "logical_bytes": c.logical_bytes,
                    "body_bytes": c.body_bytes,
                    "bytes_on_wire": round(c.bytes_on_wire),
                    "wire_per_logical": c.bytes_on_wire / c.logical_bytes,
                    "share_of_generation_pct": 100 * c.latency.p50 / self.generation_ms,
                }
            )
        return pd.DataFrame(rows)

    def load_table(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(
            [
                {
                    "protocol": lc.protocol,
                    "size": size_label(lc.size_kb),
                    "users": lc.summary.users,
                    "throughput_rps": lc.summary.throughput_rps,
                    "latency_ms_p50": lc.summary.e2e.p50 if lc.summary.e2e else float("nan"),
                    "error_rate": lc.summary.error_rate,
                    "client_cpu_pct": lc.summary.client_cpu_pct,
                }
                for lc in self.loads
            ]
        )

    def best(self, protocol: str, kind: str, size_kb: int) -> PayloadCell | None:
        """The protocol's fastest way to carry `kind` at `size_kb`: any encoding, unary or chunked."""
        cands = [c for c in self.cells if (c.route.protocol, c.route.kind, c.size_kb) == (protocol, kind, size_kb)]
        return min(cands, key=lambda c: c.latency.p50) if cands else None

    def c6_size_kb(self) -> int | None:
        """The largest size above 1 MB (the claim's subject), or None when no size was above it."""
        above = [c.size_kb for c in self.cells if c.size_kb > C6_MIN_KB]
        return max(above) if above else None

    def c6_by_kind(self) -> dict[str, float]:
        """Per payload kind: % lower latency of gRPC's best route than REST's best, above 1 MB."""
        return {kind: s.mean for kind, s in self.c6_spreads().items()}

    def c6_spreads(self) -> dict[str, Spread]:
        """Per kind, the C6 reduction per round (gRPC's best route against REST's best, paired by round)."""
        size = self.c6_size_kb()
        out: dict[str, Spread] = {}
        if size is None:
            return out
        for kind in sorted({c.route.kind for c in self.cells}):
            rest, grpc = self.best("rest", kind, size), self.best("grpc", kind, size)
            if rest and grpc:
                g, r = grpc.spread, rest.spread
                if g.n == r.n:
                    values = tuple(100 * (1 - a / b) for a, b in zip(g.values, r.values))
                    out[kind] = Spread(values, max(g.cv_within, r.cv_within), min(g.samples, r.samples))
                else:
                    out[kind] = Spread((100 * (1 - grpc.latency.p50 / rest.latency.p50),))
        return out

    def headline(self) -> dict[str, Spread]:
        """Every timed figure the summary, the claims and the conclusion use."""
        out = {f"c6_reduction_pct_{kind}": s for kind, s in self.c6_spreads().items()}
        out |= {f"ttft_ms_p50_{s.protocol}": s.ttft_spread for s in self.streams}
        return out

    def summary(self) -> dict[str, Any]:
        largest = max(c.size_kb for c in self.cells)
        packed = self._cell("grpc", "protobuf", "embeddings", largest)
        b64 = self._cell("rest", "json-base64", "embeddings", largest)
        stream_vs_unary = []
        for kind in sorted({c.route.kind for c in self.cells}):
            unary, chunked = self._cell("grpc", "protobuf", kind, largest), self._cell("grpc", "protobuf", kind, largest, "chunked")
            if unary and chunked:
                stream_vs_unary.append(100 * (chunked.latency.p50 / unary.latency.p50 - 1))
        ttft = {s.protocol: s.ttft_spread.mean for s in self.streams}
        size = self.c6_size_kb()
        summary: dict[str, Any] = {
            "largest_size_kb": largest,
            "c6_size_kb": size,
            **{f"c6_reduction_pct_{kind}": v for kind, v in self.c6_by_kind().items()},
            "packed_vs_base64_pct": 100 * (packed.latency.p50 / b64.latency.p50 - 1) if packed and b64 else None,
            "grpc_stream_vs_unary_pct": median(stream_vs_unary) if stream_vs_unary else None,
            "ttft_ms_p50_rest": ttft.get("rest"),
            "ttft_ms_p50_grpc": ttft.get("grpc"),
            "generation_ms_p50": self.generation_ms,
            "tokens_match": self.tokens_match,
            "capped_cells": sum(c.capped for c in self.cells),
            "stage_measure_s": self.wall_s,
        }
        for lc in self.loads:
            summary[f"load_rps_{lc.protocol}_{size_label(lc.size_kb).replace(' ', '')}"] = lc.summary.throughput_rps
        headline = self.headline()
        for key, spread in headline.items():
            summary |= spread.summary(key)
        summary["rounds"] = max((len(c.round_p50) for c in self.cells), default=1) or 1
        summary["noisy_figures"] = sum(bool(s.flags(self.noisy_cv, self.min_repeats)) for s in headline.values())
        return {k: v for k, v in summary.items() if v is not None}

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"cells": self.cell_table(), "load": self.load_table()}

    def figures(self) -> dict[str, Figure]:
        import matplotlib.pyplot as plt
        import seaborn as sns

        table = self.cell_table()
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
        sns.lineplot(data=table, x="size_kb", y="latency_ms_p50", hue="route", style="kind", markers=True, ax=left)
        noisy = table[table["round_p50_ms_flags"] != ""]
        left.scatter(
            noisy["size_kb"], noisy["latency_ms_p50"], marker="x", color="red", s=60, zorder=5, label=f"noisy or few samples ({len(noisy)})"
        )  # the noise rule's marker
        left.legend(fontsize=7)
        left.set(
            xscale="log",
            yscale="log",
            title="latency p50 by logical size (unary and chunked; x = flagged)",
            xlabel="payload KiB",
            ylabel="ms",
        )
        sns.barplot(data=table[table["mode"] == "unary"], x="size", y="wire_per_logical", hue="route", ax=right)
        right.set(title="bytes on the wire per logical byte (kernel TCP counters)", xlabel="", ylabel="ratio")
        fig.tight_layout()
        return {"transport": fig}

    def winner_rows(self) -> list[Winner]:
        """Per size and kind: which protocol's best unary route is faster, and by how much (p50)."""
        rows = []
        for size in sorted({c.size_kb for c in self.cells}):
            for kind in sorted({c.route.kind for c in self.cells}):
                best = {}
                for protocol in ("rest", "grpc"):
                    cands = [
                        c
                        for c in self.cells
                        if c.size_kb == size and c.route.kind == kind and c.route.protocol == protocol and c.mode == "unary"
                    ]
                    if cands:
                        best[protocol] = min(cands, key=lambda c: c.latency.p50)
                if len(best) < 2:
                    continue
                g, r = best["grpc"].latency.p50, best["rest"].latency.p50
                who, pct = ("gRPC", 100 * (1 - g / r)) if g < r else ("REST", 100 * (1 - r / g))
                rows.append(Winner(size, kind, who, pct, g, best["grpc"].route.encoding, r, best["rest"].route.encoding))
        return rows

    def transport_share(self, size_kb: int) -> float:
        """The slowest unary transfer at this size as a share of one generation: whether transport matters at all."""
        return max(c.latency.p50 for c in self.cells if c.size_kb == size_kb and c.mode == "unary") / self.generation_ms

    def winners(self) -> list[str]:
        """`winner_rows` and `transport_share` as one sentence per size."""
        lines = []
        for size in sorted({c.size_kb for c in self.cells}):
            parts = [
                f"{w.kind}: {w.protocol} by {w.pct:.0f}% ({w.grpc_ms:.1f} ms gRPC {w.grpc_encoding} vs "
                f"{w.rest_ms:.1f} ms REST {w.rest_encoding})"
                for w in self.winner_rows()
                if w.size_kb == size
            ]
            share = self.transport_share(size)
            note = f"transport is at most {100 * share:.2f}% of one generation ({self.generation_ms:.0f} ms): " + (
                "it does not matter" if share < NEGLIGIBLE_SHARE else "it matters"
            )
            lines.append(f"**{size_label(size)}** — " + "; ".join(parts) + f". {note}.")
        return lines

    def conclusion(self) -> str:
        summary = self.summary()
        stream = summary.get("grpc_stream_vs_unary_pct", math.nan)
        largest = size_label(summary["largest_size_kb"])
        stream_text = (
            "chunk streaming was not measured at this size"
            if math.isnan(stream)
            else f"gRPC chunk streaming took {stream:+.0f}% vs gRPC unary at {largest} "
            + (
                "(slower: Python gRPC pays per message, as its performance guide warns)"
                if stream > 0
                else "(faster: the server encodes later pieces while the client parses earlier ones, which a single "
                "message cannot overlap; the per-message cost Python gRPC's guide warns about is smaller here)"
            )
        )
        packed = summary.get("packed_vs_base64_pct", math.nan)
        packed_text = (
            ""
            if math.isnan(packed)
            else (
                f"Against base64 floats (OpenAI's `encoding_format`) gRPC's packed `repeated float` took {packed:+.0f}%"
                + (
                    ": Python protobuf builds and reads it one Python float at a time, while base64 of the float32 "
                    "bytes is one C call (a `bytes` field of float32 avoids that; see the protobuf-bytes rows). "
                    if packed > 0
                    else ". "
                )
            )
        )
        by_kind = self.c6_spreads()
        c6_text = (
            f"Above 1 MB ({size_label(self.c6_size_kb() or 0)}), gRPC's best route against REST's best, paired by round: "
            + ", ".join(f"{k} {v.text('+.0f', '%')} lower latency" for k, v in by_kind.items())
            + ". "
            if by_kind
            else "No size above 1 MB was measured, so nothing here speaks to C6. "
        )
        ttft = {s.protocol: s.ttft for s in self.streams}
        rest_t, grpc_t = ttft.get("rest"), ttft.get("grpc")
        if rest_t is None or grpc_t is None:
            ttft_text = "Token streaming was not measured on both protocols."
        else:
            gap, spread = rest_t.p50 - grpc_t.p50, max(rest_t.stdev, grpc_t.stdev)
            ttft_text = (
                f"Token streaming: TTFT p50 {rest_t.p50:.0f} ms over SSE vs {grpc_t.p50:.0f} ms over "
                f"GenerateStream ({rest_t.count} interleaved requests each); "
            )
            ttft_text += (
                f"the gap is within the run-to-run spread (±{spread:.0f} ms): the model sets TTFT, not the protocol"
                if abs(gap) <= spread
                else f"{'gRPC' if gap > 0 else 'REST'} is {abs(gap):.0f} ms faster to the first token, beyond the ±{spread:.0f} ms spread"
            )
            ttft_text += "" if self.tokens_match else " (WARNING: the two protocols generated different text)"
        lines = [
            *self.winners(),
            c6_text + "Where gRPC wins, the gap comes from encoding, not HTTP/2: JSON spells each float in ~20 "
            f"characters and parses it in Python. {packed_text}{stream_text}.",
            ttft_text + ".",
        ]
        load = []
        for size in sorted({lc.size_kb for lc in self.loads}):
            by = {lc.protocol: lc.summary for lc in self.loads if lc.size_kb == size}
            if {"rest", "grpc"} <= set(by):
                g, r = by["grpc"].throughput_rps, by["rest"].throughput_rps
                flags = "; ".join(f for x in by.values() for f in x.flags)
                errors = max(x.error_rate for x in by.values())
                load.append(
                    f"{size_label(size)}: gRPC {g:.1f} vs REST {r:.1f} req/s ({100 * (g / r - 1):+.0f}%)"
                    + (f", errors up to {100 * errors:.0f}%" if errors else "")
                    + (f" [{flags}]" if flags else "")
                )
        if load:
            users = self.loads[0].summary.users
            lines.append(f"Throughput under {users} closed-loop users fetching {self.load_kind}: " + "; ".join(load) + ".")
        noise = noise_sentence(self.headline(), self.noisy_cv, self.min_repeats)
        if noise:
            lines.append(noise)
        return "\n\n".join(lines)
