"""The compression stage's result: one row per codec and payload, the end-to-end model, C7 per payload."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psutil

from perfkit.claims import Check
from perfkit.stages.base import StageResult
from perfkit.stages.compression import STAGE
from perfkit.stages.compression.measure import CodecRun, end_to_end, pareto

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class CompressionResults(StageResult):
    spec = STAGE
    runs: tuple[CodecRun, ...]
    speed_checks: tuple[dict[str, Any], ...]  # codec speeds timed again by a direct library call
    link_mbit: tuple[float, ...]
    rest: tuple[dict[str, Any], ...] = ()
    rest_skipped: str | None = None
    netns: tuple[dict[str, Any], ...] = ()
    netns_skipped: str | None = None
    load_avg_1m: float = 0.0  # the machine's 1-minute load average when the codec timings ended
    checks: tuple[Check, ...] = ()

    def variants(self) -> tuple[CodecRun, ...]:
        return self.runs

    def table(self) -> pd.DataFrame:
        """The Pareto frontier: the levels worth choosing (every level is in codecs.csv)."""
        t = self.codec_table()
        return t[t["pareto"]].reset_index(drop=True)

    def codec_table(self) -> pd.DataFrame:
        import pandas as pd

        t = pd.DataFrame([r.row() for r in self.runs])
        t["pareto"] = pareto(t)
        return t

    def end_to_end(self) -> pd.DataFrame:
        return end_to_end(self.runs, self.link_mbit)

    def fastest(self) -> pd.DataFrame:
        """The codec with the least modelled end-to-end time per payload and link speed, vs sending it plain."""
        e2e = self.end_to_end()
        best = e2e.loc[e2e.groupby(["payload", "link_mbit"]).total_s.idxmin()]
        plain = e2e[e2e.codec == "none"].set_index(["payload", "link_mbit"]).total_s
        best = best.assign(none_s=[plain[(p, m)] for p, m in zip(best.payload, best.link_mbit)])
        return best.assign(speedup=best.none_s / best.total_s).reset_index(drop=True)

    def c7(self) -> dict[str, Any]:
        """Brotli 11 on each JSON payload: size reduction, decompression ms, and compression speed."""
        out: dict[str, Any] = {}
        b11 = [r for r in self.runs if r.codec.name == "brotli-11"]
        for r in b11:
            out |= {
                f"c7_{r.payload}_size_reduction_pct": 100 * (1 - r.output_bytes / r.input_bytes),
                f"c7_{r.payload}_decompress_ms": r.decompress.p50,
                f"c7_{r.payload}_compress_ms": r.compress.p50,
                f"c7_{r.payload}_compress_mb_s": r.mb_s(r.compress),
            }
        if b11:
            out["c7_payload_kb"] = statistics.fmean(r.input_bytes for r in b11) / 1024
        return out

    def summary(self) -> dict[str, Any]:
        fastest = self.fastest()
        summary: dict[str, Any] = {}
        for p, m, c, x in zip(fastest.payload, fastest.link_mbit, fastest.codec, fastest.speedup):
            summary[f"fastest_{p}_{m:g}mbit_codec"] = c
            summary[f"fastest_{p}_{m:g}mbit_speedup"] = float(x)
        summary |= self.c7()
        agree = [c[f"{op}_agrees"] for c in self.speed_checks for op in ("compress", "decompress")]
        if agree:
            summary["speed_check_agree_frac"] = sum(agree) / len(agree)
        summary["load_avg_1m"] = self.load_avg_1m
        summary["cpu_count"] = psutil.cpu_count()
        summary["rest"] = self.rest_skipped or "measured"
        summary["netns"] = self.netns_skipped or "measured"
        measured = [r["measured_over_modelled"] for r in self.netns if "measured_s" in r]
        if measured:
            summary["netns_measured_over_modelled_median"] = statistics.median(measured)
        return summary

    def tables(self) -> dict[str, pd.DataFrame]:
        import pandas as pd

        tables = {"codecs": self.codec_table(), "end_to_end": self.end_to_end()}
        if self.speed_checks:
            tables["speed_checks"] = pd.DataFrame(list(self.speed_checks))
        if self.rest:
            tables["rest"] = pd.DataFrame(list(self.rest))
        if self.netns:
            tables["netns"] = pd.DataFrame(list(self.netns))
        return tables

    def figures(self) -> dict[str, Figure]:
        import matplotlib.pyplot as plt
        import seaborn as sns

        table = self.codec_table()
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
        coded = table[table.codec != "none"]
        sns.scatterplot(data=coded, x="compress_mb_s", y="ratio", hue="family", style="payload", ax=axes[0])
        for _, front in coded[coded.pareto].groupby("payload"):
            front = front.sort_values("compress_mb_s")
            axes[0].plot(front.compress_mb_s, front.ratio, color="grey", lw=0.8)
        axes[0].set(xscale="log", xlabel="compress MB/s (log)", ylabel="ratio", title="ratio vs speed; lines: Pareto frontier")
        fastest = self.fastest()
        sns.lineplot(data=fastest, x="link_mbit", y="speedup", hue="payload", marker="o", ax=axes[1])
        for _, row in fastest.iterrows():
            axes[1].annotate(row.codec, (row.link_mbit, row.speedup), fontsize=7)
        axes[1].set(xscale="log", xlabel="link Mbit/s (log)", ylabel="speed-up vs none", title="fastest codec end to end")
        fig.tight_layout()
        return {"compression": fig}

    def conclusion(self) -> str:
        c7 = self.c7()
        lines = []
        b11 = [r for r in self.runs if r.codec.name == "brotli-11"]
        if b11:
            per = "; ".join(
                f"{r.payload} -{c7[f'c7_{r.payload}_size_reduction_pct']:.0f}% size, "
                f"{r.decompress.p50:.1f} ms to decompress, {r.compress.p50:.0f} ms to compress ({r.mb_s(r.compress):.2f} MB/s)"
                for r in b11
            )
            lines.append(
                f"Brotli 11 on {c7['c7_payload_kb']:.0f} KiB JSON bodies: {per}. Claim C7 leaves out the compression cost, "
                "which a server pays on every response it does not cache."
            )
        else:
            lines.append("Brotli 11 was not among compression.brotli_levels, so nothing here speaks to C7.")
        fastest = self.fastest()
        for payload in fastest.payload.unique():
            f = fastest[fastest.payload == payload].sort_values("link_mbit")
            picks = ", ".join(f"{m:g} Mbit/s: {c} ({s:.1f}x)" for m, c, s in zip(f.link_mbit, f.codec, f.speedup))
            lines.append(f"Fastest end to end for {payload} (speed-up over sending it plain): {picks}.")
        if self.speed_checks:
            bad = [
                f"{c['payload']} {c['codec']} {op} ({c[f'{op}_diff_pct']:.0f}% > {c[f'{op}_tolerance_pct']:.0f}%)"
                for c in self.speed_checks
                for op in ("compress", "decompress")
                if not c[f"{op}_agrees"]
            ]
            cpus = psutil.cpu_count() or 1
            busy = (
                f"the 1-minute load average was {self.load_avg_1m:.1f} on {cpus} CPUs, so other processes competed for the cores"
                if self.load_avg_1m > cpus
                else f"the load average ({self.load_avg_1m:.1f} on {cpus} CPUs) does not explain it"
            )
            lines.append(
                "Codec speeds agree with direct library calls within max(10%, 3x CV)."
                if not bad
                else f"Codec speeds differ from direct library calls beyond max(10%, 3x CV) for {', '.join(bad)}; {busy}."
            )
        if self.rest:
            plain = next((r for r in self.rest if r["content_encoding"] == "identity"), None)
            for r in self.rest:
                if plain and r is not plain:
                    lines.append(
                        f"Through the REST server, Accept-Encoding {r['accept_encoding']} gave {r['content_encoding']}: "
                        f"{r['bytes_on_wire'] / 1024:.0f} KiB on the wire vs {plain['bytes_on_wire'] / 1024:.0f} KiB, "
                        f"latency p50 {r['latency_ms_p50']:.0f} ms vs {plain['latency_ms_p50']:.0f} ms "
                        f"(CV {r['latency_cv']:.2f} and {plain['latency_cv']:.2f}); compressing this body at the server's "
                        f"level takes {r['server_compress_ms_p50']:.1f} ms, so the rest of the difference is the "
                        "embedding computation varying from request to request."
                    )
        elif self.rest_skipped:
            lines.append(f"REST measurement skipped: {self.rest_skipped}.")
        if self.netns_skipped:
            lines.append(f"Namespace link skipped: {self.netns_skipped}.")
        elif self.netns:
            summary = self.summary()
            lines.append(
                "Over a real tc-shaped veth link the measured transfer took "
                f"{summary.get('netns_measured_over_modelled_median', float('nan')):.2f}x the modelled bytes / rate (median); "
                "the model counts payload bytes only, while each 1448-byte TCP segment travels in a 1514-byte "
                "frame (x1.046), and it leaves out the handshake and slow start."
            )
        lines.append(self.claims_text())
        return "\n\n".join(lines)


