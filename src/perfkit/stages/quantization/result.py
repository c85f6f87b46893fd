"""The quantization stage's result: one typed row per scheme, the summary, the figures, the conclusion."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from perfkit.measure import Spread, noise_sentence, ratio
from perfkit.provenance import PREPACKED
from perfkit.stages.base import StageResult
from perfkit.stages.quantization import STAGE

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class SchemeRun:
    """One scheme: speed and memory from its own process, quality from the stage's, relative to fp32."""

    scheme: str
    status: str  # ok | skipped | failed
    reason: str | None = None
    model_bytes: int | None = None
    size_saving_pct: float | None = None
    peak_rss_mb: float | None = None
    load_peak_rss_mb: float | None = None
    ttft_ms_p50: float | None = None
    tpot_ms_p50: float | None = None
    tpot_cv: float | None = None
    throughput_tok_s: Mapping[int, float] | None = None  # by batch size
    repeats: Mapping[int, int] | None = None
    capped: bool = False
    noisy: bool = False
    speedup: float | None = None  # tokens/s over fp32's, at the first batch size
    perplexity: float | None = None
    top1_agreement: float | None = None
    kl_mean: float | None = None
    harness_overhead_pct: float | None = None
    speed_wall_s: float | None = None
    quality_wall_s: float | None = None
    speeds: Mapping[int, Spread] | None = None  # tokens/s by batch size over the rounds
    speedup_spread: Spread | None = None  # per-round paired ratios over fp32 at the first batch size
    ttft: Spread | None = None  # TTFT p50 (ms) over the rounds, batch 1
    tpot: Spread | None = None
    rounds: int = 1
    top1_accuracy: float | None = None  # next-token accuracy on held-out text
    accuracy_kept: tuple[float, float, float] | None = None  # % of fp32's accuracy: (value, 95% low, high), bootstrap over tokens

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_rounds(cls, scheme: str, rounds: Sequence[Mapping[str, Any]], batch_sizes: tuple[int, ...]) -> SchemeRun:
        """One child's JSON line per round: figures are means over the rounds, with their between-round spread.
        A scheme that failed or was skipped in any round is reported with that round's reason."""
        bad = next((m for m in rounds if m["status"] != "ok"), None)
        if bad is not None:
            return cls.from_measurement(scheme, bad, batch_sizes)
        first = rounds[0]

        def spread(key: str, cv_key: str | None, count_key: str | None) -> Spread | None:
            if not all(key in m for m in rounds):
                return None
            cvs = [m.get(cv_key, 0.0) for m in rounds] if cv_key else [0.0]
            return Spread(
                tuple(m[key] for m in rounds),
                statistics.fmean(cvs),
                sum(int(m.get(count_key, 1)) for m in rounds) if count_key else len(rounds),
            )

        speeds = {
            b: sp for b in batch_sizes if (sp := spread(f"throughput_tok_s_batch{b}", f"cv_batch{b}", f"repeats_batch{b}")) is not None
        }
        merged = dict(first) | {f"throughput_tok_s_batch{b}": sp.mean for b, sp in speeds.items()}
        merged |= {f"repeats_batch{b}": sum(m.get(f"repeats_batch{b}", 0) for m in rounds) for b in batch_sizes}
        merged |= {f"capped_batch{b}": any(m.get(f"capped_batch{b}") for m in rounds) for b in batch_sizes}
        merged |= {
            "peak_rss_mb": max(m["peak_rss_mb"] for m in rounds),
            "load_peak_rss_mb": max(m.get("load_peak_rss_mb", 0.0) for m in rounds),
            "harness_overhead_pct": max(m.get("harness_overhead_pct", 0.0) for m in rounds),
            "speed_wall_s": sum(m.get("speed_wall_s", 0.0) for m in rounds),
        }
        ttft, tpot = spread("ttft_ms_p50", "ttft_cv", "ttft_count"), spread("tpot_ms_p50", "tpot_cv", "tpot_count")
        if ttft is not None:
            merged["ttft_ms_p50"] = ttft.mean
        if tpot is not None:
            merged |= {"tpot_ms_p50": tpot.mean, "tpot_cv": tpot.cv}
        run = cls.from_measurement(scheme, merged, batch_sizes)
        return replace(run, speeds=speeds, ttft=ttft, tpot=tpot, rounds=len(rounds))

    def paired_speedup(self, fp32: SchemeRun, batch: int) -> Spread | None:
        """Speed-up over fp32 at `batch`: the per-round paired ratios with their interval; None unless both were timed
        at that width in the same rounds."""
        mine, ref = (self.speeds or {}).get(batch), (fp32.speeds or {}).get(batch)
        return ratio(mine, ref) if mine is not None and ref is not None and mine.n == ref.n else None

    def with_reference(self, fp32: SchemeRun, batch: int) -> SchemeRun:
        """This run with its speed-up over fp32 at `batch` (unchanged where that width was not paired)."""
        paired = self.paired_speedup(fp32, batch)
        return self if paired is None else replace(self, speedup_spread=paired, speedup=paired.mean)

    def figures(self) -> dict[str, Spread]:
        """Every timed figure of this scheme, by name."""
        out = {f"tok/s batch {b}": sp for b, sp in (self.speeds or {}).items()}
        for name, sp in (("speedup", self.speedup_spread), ("TTFT p50", self.ttft), ("TPOT p50", self.tpot)):
            if sp is not None:
                out[name] = sp
        return out

    def noise_flags(self, noisy_cv: float, min_repeats: int) -> str:
        return "; ".join(f"{name}: {flag}" for name, sp in self.figures().items() for flag in sp.flags(noisy_cv, min_repeats))

    @classmethod
    def from_measurement(cls, scheme: str, m: Mapping[str, Any], batch_sizes: tuple[int, ...]) -> SchemeRun:
        """From the measuring child's JSON line plus the quality scores added to it."""
        speeds = {b: m[f"throughput_tok_s_batch{b}"] for b in batch_sizes if f"throughput_tok_s_batch{b}" in m}
        return cls(
            scheme, m["status"], m.get("reason"), m.get("model_bytes"), m.get("size_saving_pct"), m.get("peak_rss_mb"),
            m.get("load_peak_rss_mb"), m.get("ttft_ms_p50"), m.get("tpot_ms_p50"), m.get("tpot_cv"),
            speeds or None, {b: m.get(f"repeats_batch{b}", 0) for b in batch_sizes} if m["status"] == "ok" else None,
            any(m.get(f"capped_batch{b}") for b in batch_sizes), any(m.get(f"noisy_batch{b}") for b in batch_sizes),
            m.get("speedup"), m.get("perplexity"), m.get("top1_agreement"), m.get("kl_mean"),
            m.get("harness_overhead_pct"), m.get("speed_wall_s"), m.get("quality_wall_s"),
            top1_accuracy=m.get("top1_accuracy"), accuracy_kept=m.get("accuracy_kept_pct"),
        )  # fmt: skip

    def row(self, batch_sizes: tuple[int, ...]) -> dict[str, Any]:
        speeds, repeats = self.throughput_tok_s or {}, self.repeats or {}
        return {
            "scheme": self.scheme, "status": self.status, "model (MB)": _mb(self.model_bytes),
            "size saving (%)": self.size_saving_pct, "peak RSS (MB)": self.peak_rss_mb,
            **{f"tok/s batch {b}": speeds.get(b) for b in batch_sizes}, "speedup": self.speedup,
            "TTFT p50 (ms)": self.ttft_ms_p50, "TPOT p50 (ms)": self.tpot_ms_p50, "TPOT CV": self.tpot_cv,
            "repeats batch 1": repeats.get(batch_sizes[0]), "perplexity": self.perplexity,
            "top-1 agreement": self.top1_agreement, "KL mean": self.kl_mean, "top-1 accuracy": self.top1_accuracy,
            "accuracy kept (%)": self.accuracy_kept[0] if self.accuracy_kept else None,
            "harness overhead (%)": self.harness_overhead_pct, "flags": _flags(self), "reason": self.reason,
        }  # fmt: skip


def _spread_x(sp: Spread) -> str:
    return sp.text(".2f", "x") + (f" over {sp.n} rounds" if sp.ci else "")


def _x(run: SchemeRun) -> str:
    """A speed-up with its between-round interval when it has one."""
    return _spread_x(run.speedup_spread) if run.speedup_spread is not None else f"{run.speedup or 0:.2f}x"


def _mb(value: int | None) -> float | None:
    return None if value is None else value / 1e6


def _flags(run: SchemeRun) -> str:
    return ", ".join(f for f, on in (("capped", run.capped), ("noisy", run.noisy)) if on)


@dataclass(frozen=True)
class QuantizationResult(StageResult):
    spec = STAGE
    schemes: tuple[SchemeRun, ...]
    activations: pd.DataFrame
    batch_sizes: tuple[int, ...]
    min_agreement: float
    noisy_cv: float
    ideal_int8_saving_pct: float
    skip_modules: tuple[str, ...] = ()
    min_repeats: int = 5

    def variants(self) -> tuple[SchemeRun, ...]:
        return self.schemes

    def ok(self) -> dict[str, SchemeRun]:
        return {s.scheme: s for s in self.schemes if s.ok}

    def speed(self, run: SchemeRun, batch: int | None = None) -> float:
        return (run.throughput_tok_s or {}).get(batch or self.batch_sizes[0], 0.0)

    def best(self) -> str:
        """The fastest scheme whose top-1 agreement with fp32 reaches the gate (fp32 if none)."""
        fit = {k: v for k, v in self.ok().items() if (v.top1_agreement or 0) >= self.min_agreement}
        return max(fit, key=lambda k: self.speed(fit[k])) if fit else "fp32"

    def summary(self) -> dict[str, Any]:
        ok, best = self.ok(), self.best()
        s: dict[str, Any] = {
            "best_scheme": best,
            "speedup": ok[best].speedup if best in ok else None,
            "size_saving_pct": ok[best].size_saving_pct if best in ok else None,
            "min_top1_agreement": self.min_agreement,
            "noisy_schemes": ", ".join(k for k, v in ok.items() if v.noisy),
            "capped_schemes": ", ".join(k for k, v in ok.items() if v.capped),
            "skipped_schemes": ", ".join(s.scheme for s in self.schemes if not s.ok),
            "harness_overhead_pct_max": max((v.harness_overhead_pct or 0 for v in ok.values()), default=None),
            "int8_ideal_size_saving_pct": self.ideal_int8_saving_pct,
        }
        if best in ok and ok[best].speedup_spread is not None:
            s |= ok[best].speedup_spread.summary("speedup")  # type: ignore[union-attr]
        for name, run in ok.items():
            key = name.replace("-", "_")
            s |= {f"{key}_speedup": run.speedup, f"{key}_top1_agreement_pct": 100.0 * (run.top1_agreement or 0)}
            if run.accuracy_kept is not None:
                value, low, high = run.accuracy_kept
                s |= {f"{key}_accuracy_kept_pct": value, f"{key}_accuracy_kept_pct_ci_low": low, f"{key}_accuracy_kept_pct_ci_high": high}
            if run.peak_rss_mb and "fp32" in ok and ok["fp32"].peak_rss_mb:
                s[f"{key}_peak_rss_saving_pct"] = 100.0 * (1 - run.peak_rss_mb / ok["fp32"].peak_rss_mb)
            if run.speedup_spread is not None:
                s |= run.speedup_spread.summary(f"{key}_speedup")
            if run.ttft is not None:
                s |= run.ttft.summary(f"{key}_ttft_ms_p50")
            largest = max(self.batch_sizes)
            if largest > 1 and "fp32" in ok:  # the speed-up where a batching server runs: its own paired rounds
                wide = run.paired_speedup(ok["fp32"], largest)
                if wide is not None:
                    s |= wide.summary(f"{key}_speedup_batch{largest}")
        s["rounds"] = max((run.rounds for run in ok.values()), default=0)
        s["noisy_figures"] = sum(bool(sp.flags(self.noisy_cv, self.min_repeats)) for run in ok.values() for sp in run.figures().values())
        naive = ok.get("int8-dynamic")
        if naive is not None:
            s |= {
                "int8_dynamic_size_saving_pct": naive.size_saving_pct,
                "int8_dynamic_passes_quality_gate": (naive.top1_agreement or 0) >= self.min_agreement,
            }
        return {k: v for k, v in s.items() if v is not None}

    def tables(self) -> dict[str, pd.DataFrame]:
        import pandas as pd

        rows = []
        for run in self.schemes:
            row = run.row(self.batch_sizes)
            for name, sp in run.figures().items():
                row |= {
                    f"{name} CI low": (sp.ci or (None, None))[0],
                    f"{name} CI high": (sp.ci or (None, None))[1],
                    f"{name} CV": sp.cv,
                    f"{name} n": sp.samples,
                }
            row["rounds"] = run.rounds if run.ok else None
            row["flags"] = "; ".join(f for f in (row["flags"], run.noise_flags(self.noisy_cv, self.min_repeats)) if f)
            rows.append(row)
        return {"schemes": pd.DataFrame(rows), "activations": self.activations}

    def figures(self) -> dict[str, Figure]:
        import matplotlib.pyplot as plt
        import pandas as pd
        import seaborn as sns

        ran = pd.DataFrame([
            {"scheme": s.scheme, "tok/s": self.speed(s), "top-1 agreement": s.top1_agreement, "model (MB)": _mb(s.model_bytes)}
            for s in self.ok().values()
        ])  # fmt: skip
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
        if not ran.empty:
            sns.scatterplot(data=ran, x="tok/s", y="top-1 agreement", hue="scheme", size="model (MB)", sizes=(40, 400), ax=left)
            left.legend(fontsize=7, loc="lower left")
            for run in self.ok().values():  # the between-round interval, and the noise rule's marker
                sp = (run.speeds or {}).get(self.batch_sizes[0])
                if sp is not None and sp.ci is not None:
                    left.errorbar(
                        sp.mean, run.top1_agreement, xerr=[[sp.mean - sp.ci[0]], [sp.ci[1] - sp.mean]], fmt="none", ecolor="grey", capsize=3
                    )
                if run.noise_flags(self.noisy_cv, self.min_repeats):
                    left.annotate(
                        "!",
                        (self.speed(run), run.top1_agreement),
                        color="red",
                        fontweight="bold",
                        xytext=(4, 4),
                        textcoords="offset points",
                    )
        left.axhline(self.min_agreement, ls="--", c="grey")
        left.set(title="speed vs agreement with fp32 (size = model MB)", xlabel=f"tokens/s, batch {self.batch_sizes[0]}")
        layers = self.activations[self.activations["layer"] >= 0]
        sns.lineplot(data=layers, x="layer", y="max_abs_input", hue="module", ax=right)
        right.set(yscale="log", title="largest input into each Linear (fp32, held-out text)", ylabel="max |input|")
        fig.tight_layout()
        return {"quantization": fig}

    def verdict(self) -> str:
        best = self.ok().get(self.best())
        if best is None or best.speedup is None:
            return f"best scheme: {self.best()}"
        return f"best scheme passing the quality gate: {best.scheme}, {best.speedup:.2f}x fp32 tokens/s"

    def conclusion(self) -> str:
        s, ok = self.summary(), self.ok()
        peaks = self.activations.groupby("module")["max_abs_input"].max().sort_values(ascending=False)
        top = self.activations.loc[self.activations["max_abs_input"].idxmax()]
        lines = [
            f"Largest activation into any Linear: {top.max_abs_input:,.0f} into `{top.module}` of layer {top.layer} "
            f"(next module type: `{peaks.index[1]}` at {peaks.iloc[1]:,.0f}); `int8-dynamic-skip-outliers` keeps "
            f"{', '.join(self.skip_modules) or 'nothing'} in fp32."
        ]
        if "int8-dynamic" in ok and "fp32" in ok:
            naive, ref = ok["int8-dynamic"], ok["fp32"]
            rss_change = 100 * ((naive.peak_rss_mb or 0) / (ref.peak_rss_mb or 1) - 1)
            lines.append(
                f"FP32 -> INT8 dynamic on every Linear: {_x(naive)} tokens/s (batch {self.batch_sizes[0]}), "
                f"{-(naive.size_saving_pct or 0):+.1f}% model bytes and {rss_change:+.1f}% peak RSS "
                f"({ref.peak_rss_mb:,.0f} -> {naive.peak_rss_mb:,.0f} MB, interpreter and libraries included), "
                f"{100 * (naive.top1_agreement or 0):.1f}% top-1 agreement (perplexity {ref.perplexity:.2f} -> "
                f"{naive.perplexity:.2f})."
            )
            lines.append(
                f"By arithmetic, INT8 on every Linear saves at most {self.ideal_int8_saving_pct:.0f}% of this model's fp32 "
                f"bytes: the embedding stays fp32 (and INT8 on a tied `lm_head` unties it, adding an int8 copy beside it); "
                f"all-INT8 from fp32 is -75%, and from an fp16 start INT8 saves at most 50%."
            )
        if "bf16" in ok and "fp32" in ok:
            largest = self.batch_sizes[-1]
            paired = ok["bf16"].paired_speedup(ok["fp32"], largest)
            ratio_text = (
                _spread_x(paired)
                if paired is not None
                else (f"{self.speed(ok['bf16'], largest) / max(self.speed(ok['fp32'], largest), 1e-9):.2f}x")
            )
            faster = paired.at_least(1.0) if paired is not None else None
            if faster is None:
                # An interval that straddles 1 shows no effect either way: no cause is offered for it.
                lines.append(
                    f"bf16 runs at {ratio_text} fp32's tokens/s at batch {largest}: the interval straddles 1x, so "
                    "this run does not show whether bf16 is faster here."
                )
            else:
                native = self.measured_native_bf16()
                why = (
                    "has native bf16 instructions (AVX512-BF16/AMX), so halving the bytes read also speeds the matmuls"
                    if native and faster
                    else "has native bf16 instructions, yet bf16 is slower here: the instructions alone do not decide it"
                    if native
                    else "has no native bf16 instructions, so bf16 matmuls are emulated and large ones run slower than fp32"
                    if native is False
                    else "is not recorded (no provenance), so whether it has bf16 instructions is unknown"
                )
                lines.append(f"bf16 runs at {ratio_text} fp32's tokens/s at batch {largest}: the measuring CPU {why}.")
        if s["best_scheme"] == "fp32" and "fp32" in ok:
            lines.append(
                f"Best trade: stay in fp32. No scheme with top-1 agreement >= {self.min_agreement:.0%} beat fp32's "
                f"tokens/s at batch {self.batch_sizes[0]} on this machine."
            )
        elif s["best_scheme"] in ok:
            best = ok[s["best_scheme"]]
            lines.append(
                f"Best trade (fastest with top-1 agreement >= {self.min_agreement:.0%}): `{best.scheme}`, "
                f"{_x(best)} fp32's tokens/s at batch {self.batch_sizes[0]}, {-(best.size_saving_pct or 0):+.1f}% "
                f"model bytes, {best.top1_agreement:.1%} agreement, perplexity {best.perplexity:.2f}."
            )
        noise = noise_sentence(
            {f"{k} {name}": sp for k, v in ok.items() for name, sp in v.figures().items()}, self.noisy_cv, self.min_repeats
        )
        if noise:
            lines.append(noise)
        if s.get("capped_schemes"):
            lines.append(f"Capped by measure.max_duration_s (fewer repeats, see the table): {s['capped_schemes']}.")
        skipped = [f"`{r.scheme}`: {r.reason}" for r in self.schemes if not r.ok]
        if skipped:
            lines.append(f"Not run here: {'; '.join(skipped)}.")
        packed = PREPACKED in str((self.provenance or {}).get("engine", ""))
        kernels = (
            "; the fp32 and bf16 linear layers, and those a skipping scheme keeps in fp32, run oneDNN over weights "
            "prepacked once (hardware.prepack), quantized layers their own kernels, and fp32 and bf16 hold the output "
            "layer twice, packed and as the tied embedding"
        )
        lines.append(
            "Tokens/s are the reference engine's (transformers' eager forward, dynamic KV cache, no compiled step"
            f"{kernels if packed else ''}) on the machine and at the hour this ran: a timed generation's output tokens "
            "over its whole time, prefill included. Machines of one kind differ by up to 1.7x and drift; the ratios, "
            "timed interleaved, are what carries over."
        )
        return "\n\n".join(lines)
