"""The compression stage's result: one row per codec and payload, the end-to-end model, C7 per payload."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from perfkit.measure import Spread, interval_text, noise_sentence
from perfkit.stages.base import StageResult
from perfkit.stages.compression import STAGE
from perfkit.stages.compression.measure import CodecRun, end_to_end, pareto
from perfkit.stages.compression.rounds import Timed, pick

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
    timed: tuple[Timed, ...] = ()  # the figures claims and conclusions use, over interleaved rounds
    noisy_cv: float = 0.05
    min_repeats: int = 5

    def variants(self) -> tuple[CodecRun, ...]:
        return self.runs

    def table(self) -> pd.DataFrame:
        """The Pareto frontier: the levels worth choosing (every level is in codecs.csv)."""
        t = self.codec_table()
        return t[t["pareto"]].reset_index(drop=True)

    def codec_table(self) -> pd.DataFrame:
        import pandas as pd

        t = pd.DataFrame([r.row() | {"rounds": 1} for r in self.runs])  # the sweep: one round per level, marked so
        t["pareto"] = pareto(t)
        return t

    def rounds_table(self) -> pd.DataFrame:
        """The re-timed codecs: compress and decompress ms over the rounds, with interval, CV and flags."""
        import pandas as pd

        rows = []
        for t in self.timed:
            row: dict[str, Any] = {"payload": t.payload, "codec": t.codec, "bytes_on_wire": t.output_bytes}
            row |= t.compress_s.scaled(1000).columns("compress_ms", self.noisy_cv, self.min_repeats)
            row |= t.decompress_s.scaled(1000).columns("decompress_ms", self.noisy_cv, self.min_repeats)
            rows.append(row)
        return pd.DataFrame(rows)

    def picks(self) -> pd.DataFrame:
        """Per payload and link: the fastest re-timed codec, or the codecs tied with it (overlapping intervals)."""
        import pandas as pd

        rows = []
        for payload in sorted({t.payload for t in self.timed}):
            for mbit in self.link_mbit:
                tied, total, speedup = pick(list(self.timed), payload, mbit)
                row: dict[str, Any] = {"payload": payload, "link_mbit": mbit, "codec": " = ".join(tied), "tie": len(tied) > 1}
                row |= total.scaled(1000).columns("total_ms", self.noisy_cv, self.min_repeats)
                if speedup is not None:
                    row |= speedup.columns("speedup", self.noisy_cv, self.min_repeats)
                rows.append(row)
        return pd.DataFrame(rows)

    def headline(self) -> dict[str, Spread]:
        """Every timed figure the summary and the conclusion use (ms and speed-ups), by name."""
        out: dict[str, Spread] = {}
        for t in self.timed:
            if t.codec == "brotli-11":
                out[f"c7_{t.payload}_decompress_ms"] = t.decompress_s.scaled(1000)
                out[f"c7_{t.payload}_compress_ms"] = t.compress_s.scaled(1000)
        for payload in sorted({t.payload for t in self.timed}):
            for mbit in self.link_mbit:
                _, _, speedup = pick(list(self.timed), payload, mbit)
                if speedup is not None:
                    out[f"fastest_{payload}_{mbit:g}mbit_speedup"] = speedup
        return out

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
        summary: dict[str, Any] = {}
        if self.timed:
            for row in self.picks().itertuples():
                summary[f"fastest_{row.payload}_{row.link_mbit:g}mbit_codec"] = row.codec  # "a = b" when tied
        else:
            fastest = self.fastest()
            for p, m, c, x in zip(fastest.payload, fastest.link_mbit, fastest.codec, fastest.speedup):
                summary[f"fastest_{p}_{m:g}mbit_codec"] = c
                summary[f"fastest_{p}_{m:g}mbit_speedup"] = float(x)
        summary |= self.c7()
        headline = self.headline()
        for key, spread in headline.items():
            summary |= spread.summary(key)
        summary["noisy_figures"] = sum(bool(s.flags(self.noisy_cv, self.min_repeats)) for s in headline.values())
        agree = [c[f"{op}_agrees"] for c in self.speed_checks for op in ("compress", "decompress")]
        if agree:
            summary["speed_check_agree_frac"] = sum(agree) / len(agree)
        summary["load_avg_1m"] = self.load_avg_1m
        summary["rest"] = self.rest_skipped or "measured"
        summary["netns"] = self.netns_skipped or "measured"
        measured = [r["measured_over_modelled"] for r in self.netns if "measured_s" in r]
        if measured:
            summary["netns_measured_over_modelled_median"] = statistics.median(measured)
        return summary

    def tables(self) -> dict[str, pd.DataFrame]:
        import pandas as pd

        tables = {"codecs": self.codec_table(), "end_to_end": self.end_to_end()}
        if self.timed:
            tables |= {"rounds": self.rounds_table(), "picks": self.picks()}
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
        if self.timed:  # the re-timed picks: interval bars, ties named, the noise rule's marker
            picks = self.picks()
            for i, (payload, f) in enumerate(picks.groupby("payload")):
                axes[1].errorbar(
                    f.link_mbit,
                    f.speedup,
                    yerr=[f.speedup - f.speedup_ci_low, f.speedup_ci_high - f.speedup],
                    marker="o",
                    capsize=3,
                    label=payload,
                    color=f"C{i}",
                )
                for row in f.itertuples():
                    noisy = "!" if row.speedup_flags else ""
                    axes[1].annotate(f"{row.codec}{noisy}", (row.link_mbit, row.speedup), fontsize=7, color="red" if noisy else "black")
            axes[1].legend()
            title = f"fastest codec end to end ({self.timed[0].compress_s.n} rounds, 95% CI; ! = noisy)"
        else:
            fastest = self.fastest()
            sns.lineplot(data=fastest, x="link_mbit", y="speedup", hue="payload", marker="o", ax=axes[1])
            for _, row in fastest.iterrows():
                axes[1].annotate(row.codec, (row.link_mbit, row.speedup), fontsize=7)
            title = "fastest codec end to end (one round)"
        axes[1].set(xscale="log", xlabel="link Mbit/s (log)", ylabel="speed-up vs none", title=title)
        fig.tight_layout()
        return {"compression": fig}

    def conclusion(self) -> str:
        c7 = self.c7()
        lines = []
        b11 = [r for r in self.runs if r.codec.name == "brotli-11"]
        if b11:
            head = self.headline()

            def ms(r: CodecRun, op: str, fmt: str) -> str:
                sp = head.get(f"c7_{r.payload}_{op}_ms")
                if sp is None:
                    return f"{getattr(r, op).p50:{fmt}} ms (one round)"
                return sp.text(fmt, " ms")

            per = "; ".join(
                f"{r.payload} -{c7[f'c7_{r.payload}_size_reduction_pct']:.0f}% size, "
                f"{ms(r, 'decompress', '.1f')} to decompress, {ms(r, 'compress', '.0f')} to compress"
                for r in b11
            )
            lines.append(
                f"Brotli 11 on {c7['c7_payload_kb']:.0f} KiB JSON bodies: {per}. Claim C7 leaves out the compression cost, "
                "which a server pays on every response it does not cache."
            )
        else:
            lines.append("Brotli 11 was not among compression.brotli_levels, so nothing here speaks to C7.")
        if self.timed:
            picks = self.picks()
            for payload in picks.payload.unique():
                f = picks[picks.payload == payload].sort_values("link_mbit")
                said = ", ".join(
                    f"{r.link_mbit:g} Mbit/s: "
                    + (f"a tie between {r.codec.replace(' = ', ', ')}" if r.tie else r.codec)
                    + (
                        f": {interval_text(r.speedup, r.speedup_ci_low, r.speedup_ci_high, '.1f', 'x')}"
                        if "speedup" in f and r.speedup == r.speedup and r.speedup_ci_low == r.speedup_ci_low
                        else ""
                    )
                    for r in f.itertuples()
                )
                lines.append(
                    f"Fastest end to end for {payload} over {self.timed[0].compress_s.n} interleaved rounds "
                    f"(speed-up over sending it plain; a tie where the intervals overlap): {said}."
                )
        else:
            fastest = self.fastest()
            for payload in fastest.payload.unique():
                f = fastest[fastest.payload == payload].sort_values("link_mbit")
                picks_text = ", ".join(f"{m:g} Mbit/s: {c} ({s:.1f}x)" for m, c, s in zip(f.link_mbit, f.codec, f.speedup))
                lines.append(f"Fastest end to end for {payload} (one round; speed-up over sending it plain): {picks_text}.")
        noise = noise_sentence(self.headline(), self.noisy_cv, self.min_repeats)
        if noise:
            lines.append(noise)
        if self.speed_checks:
            bad = [
                f"{c['payload']} {c['codec']} {op} ({c[f'{op}_diff_pct']:.0f}% > {c[f'{op}_tolerance_pct']:.0f}%)"
                for c in self.speed_checks
                for op in ("compress", "decompress")
                if not c[f"{op}_agrees"]
            ]
            cpus = self.measured_cores() or 1
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
        return "\n\n".join(lines)
