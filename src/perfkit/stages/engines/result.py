"""The engines stage's result: each effect's ratio on perfkit's engine and on llama.cpp, and whether it transfers.

An effect transfers when both engines' intervals lie on the same side of 1 (both faster, or both
slower); it does not when they lie on opposite sides; either interval straddling 1 leaves it
inconclusive. Where it transfers, overlapping intervals say the size carries over too, and
otherwise the page gives how far apart the two ratios are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from perfkit.llama_cpp import BUILD_COMMAND
from perfkit.measure import Spread, ratio
from perfkit.stages.base import StageResult
from perfkit.stages.engines import STAGE

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from perfkit.endpoints.base import EndpointFacts
    from perfkit.llama_cpp import KLD
    from perfkit.load.prefix import SharedPrefixTimes
    from perfkit.upstream import Precision, Schedulers

PERFKIT, LLAMA = "perfkit", "llama.cpp"
# The reference engine's scheme (quantization stage) set beside each llama.cpp file type, by the bits it keeps.
PRECISION_PAIRS = {"16-bit": ("bf16", "F16"), "8-bit": ("int8-dynamic", "Q8_0"), "4-bit": ("int4-weight-only-torchao", "Q4_0")}


@dataclass(frozen=True)
class PrecisionFile:
    """One llama.cpp file: what llama-quantize wrote, its speed by round and its distance from F32."""

    precision: str
    file: str
    size_mb: float
    tensor_types: dict[str, int]
    tok_s: Spread  # llama-bench output tokens/s, a value per round
    kld: KLD | None = None  # None for F32 itself


@dataclass(frozen=True)
class ServedArm:
    """One served configuration over the rounds: the client's output tokens/s and latency per round."""

    engine: str
    name: str
    endpoint: EndpointFacts
    tok_s: tuple[float, ...]
    ttft_ms_p50: tuple[float | None, ...]
    tpot_ms_p50: tuple[float | None, ...]
    error_rate: tuple[float, ...]

    @property
    def spread(self) -> Spread:
        return Spread(self.tok_s)


@dataclass(frozen=True)
class PrefixArm:
    engine: str
    endpoint: EndpointFacts
    lengths: tuple[SharedPrefixTimes, ...]


@dataclass(frozen=True)
class Effect:
    """One effect on both engines: the ratio each gives, and whether (and how well) it transfers."""

    key: str  # its summary keys' prefix, and what a claim check names as its `effect`
    name: str
    what: str  # the two arms on each engine, in words
    reference: Spread | None
    llama: Spread | None

    @property
    def transfers(self) -> bool | None:
        if self.reference is None or self.llama is None:
            return None
        a, b = self.reference.at_least(1.0), self.llama.at_least(1.0)
        return None if a is None or b is None else a == b

    def judgement(self) -> str:
        if self.reference is None or self.llama is None:
            return "not measured on both engines"
        if self.transfers is None:
            straddles = [e for e, s in ((PERFKIT, self.reference), (LLAMA, self.llama)) if s.at_least(1.0) is None]
            return f"inconclusive: the interval of {' and of '.join(straddles)} straddles 1"
        if not self.transfers:
            return "does not transfer: the engines move in opposite directions"
        low_a, high_a = self.reference.ci or (self.reference.mean, self.reference.mean)
        low_b, high_b = self.llama.ci or (self.llama.mean, self.llama.mean)
        if low_a <= high_b and low_b <= high_a:
            return "transfers, and so does its size (the intervals overlap)"
        return f"transfers in direction, not in size: llama.cpp's ratio is {self.llama.mean / self.reference.mean:.2f}x perfkit's"


@dataclass(frozen=True)
class EnginesResult(StageResult):
    spec = STAGE
    missing: tuple[str, ...]  # llama.cpp tools or files not found: empty when it is built
    bin_dir: str
    reference: Precision | None  # the quantization stage's schemes (None: it has not run)
    files: tuple[PrecisionFile, ...] = ()
    arms: tuple[ServedArm, ...] = ()  # llama.cpp's (perfkit's two schedulers are the batching stage's, `schedulers`)
    prefix: tuple[PrefixArm, ...] = ()
    schedulers: Schedulers | None = None  # the batching stage's served schedulers (None: it has not run)

    @property
    def built(self) -> bool:
        return not self.missing

    def file(self, precision: str) -> PrecisionFile | None:
        return next((f for f in self.files if f.precision == precision), None)

    def _batching_reference(self) -> tuple[Spread | None, str]:
        """Perfkit's continuous batching over its sequential server, paired by round in the batching stage, in words."""
        s = self.schedulers
        rounds = s.speedup_rounds.get("continuous") if s is not None else None
        if s is None or not rounds:
            return None, "perfkit: no continuous-batching rounds in the batching stage's saved result"
        return Spread(rounds), f"perfkit continuous-{s.served_tok_s['continuous'][1]} / sequential (the batching stage's rounds)"

    def list_effects(self) -> list[Effect]:
        """Precision by bits, batching, and prefix reuse at each length, on both engines."""
        out = []
        f32 = self.file("F32")
        for bits, (scheme, precision) in PRECISION_PAIRS.items():
            ref = self.reference.schemes.get(scheme) if self.reference else None
            mine = self.file(precision)
            out.append(
                Effect(
                    f"precision_{bits.replace('-', '')}",
                    f"{bits} weights",
                    f"perfkit {scheme} / fp32; llama.cpp {precision} / F32 (output tokens/s)",
                    Spread(ref.speedup_rounds or (ref.speedup,)) if ref else None,
                    ratio(mine.tok_s, f32.tok_s) if mine and f32 else None,
                )
            )
        if len(self.arms) == 2:
            one, many = self.arms
            reference, words = self._batching_reference()
            out.append(
                Effect(
                    "batching",
                    "batching",
                    f"{words}; llama.cpp {many.name} / {one.name} (served output tokens/s, the baseline's load)",
                    reference,
                    ratio(many.spread, one.spread),
                )
            )
        by_engine = {a.engine: a for a in self.prefix}
        if PERFKIT in by_engine and LLAMA in by_engine:
            for ref_t, llama_t in zip(by_engine[PERFKIT].lengths, by_engine[LLAMA].lengths):
                out.append(
                    Effect(
                        f"prefix_{ref_t.prefix_tokens}",
                        f"prefix reuse, {ref_t.prefix_tokens}-token system turn",
                        "time to first token without / with the prefix cached (perfkit prefix store; llama.cpp cache_prompt)",
                        Spread(tuple(c / w for c, w in zip(ref_t.cold_ms, ref_t.warm_ms))),
                        Spread(tuple(c / w for c, w in zip(llama_t.cold_ms, llama_t.warm_ms))),
                    )
                )
        return out

    def effects(self) -> pd.DataFrame:
        import pandas as pd

        rows = []
        for e in self.list_effects():
            for engine, s in ((PERFKIT, e.reference), (LLAMA, e.llama)):
                ci = s.ci if s is not None and s.ci is not None else (None, None)
                rows.append(
                    {
                        "effect": e.name,
                        "engine": engine,
                        "ratio": s.mean if s is not None else None,
                        "ratio_ci_low": ci[0],
                        "ratio_ci_high": ci[1],
                        "rounds": s.n if s is not None else 0,
                        "transfers": e.judgement(),
                        "what": e.what,
                    }
                )
        return pd.DataFrame(rows, columns=["effect", "engine", "ratio", "ratio_ci_low", "ratio_ci_high", "rounds", "transfers", "what"])

    def precision_table(self) -> pd.DataFrame:
        import pandas as pd

        f32 = self.file("F32")
        rows = []
        for f in self.files:
            speed = ratio(f.tok_s, f32.tok_s) if f32 else None
            rows.append(
                {"precision": f.precision, "file": f.file, "size_mb": f.size_mb}
                | {"tensor_types": ", ".join(f"{t} x{n}" for t, n in f.tensor_types.items())}
                | f.tok_s.columns("tok_s", 0.05, 2)
                | {"speedup_vs_f32": speed.mean if speed else None}
                | {
                    "top1_agreement_pct": f.kld.same_top1_pct if f.kld else 100.0,
                    "top1_agreement_err_pct": f.kld.same_top1_err_pct if f.kld else 0.0,
                    "kld_mean": f.kld.kld_mean if f.kld else 0.0,
                    "ppl_ratio": f.kld.ppl_ratio if f.kld else 1.0,
                }
            )
        return pd.DataFrame(rows)

    def served_table(self) -> pd.DataFrame:
        import pandas as pd

        rows = []
        for a in self.arms:
            for i, tok_s in enumerate(a.tok_s):
                rows.append(
                    {"engine": a.engine, "arm": a.name, "round": i, "tok_s": tok_s, "ttft_ms_p50": a.ttft_ms_p50[i]}
                    | {"tpot_ms_p50": a.tpot_ms_p50[i], "error_rate": a.error_rate[i], "endpoint": a.endpoint.engine}
                )
        return pd.DataFrame(rows)

    def prefix_table(self) -> pd.DataFrame:
        import pandas as pd

        rows = []
        for arm in self.prefix:
            for t in arm.lengths:
                for cold, warm in zip(t.cold_ms, t.warm_ms):
                    rows.append({"engine": arm.engine, "prefix_tokens": t.prefix_tokens, "ttft_ms_cold": cold, "ttft_ms_cached": warm})
        return pd.DataFrame(rows)

    def variants(self) -> list[dict[str, Any]]:
        return self.effects().to_dict("records")

    def tables(self) -> dict[str, pd.DataFrame]:
        """The effects always (its columns even when nothing was measured), each measurement's table where it has rows."""
        tables = {"precision": self.precision_table(), "served": self.served_table(), "prefix": self.prefix_table()}
        return {"effects": self.effects()} | {name: t for name, t in tables.items() if not t.empty}

    def summary(self) -> dict[str, Any]:
        if not self.built:
            return {"llama_cpp": "not built", "build_command": BUILD_COMMAND, "missing": ", ".join(self.missing)}
        out: dict[str, Any] = {"llama_cpp": "built", "effects": 0, "effects_transfer": 0, "effects_do_not_transfer": 0}
        for e in self.list_effects():
            for engine, s in (("perfkit", e.reference), ("llama", e.llama)):
                if s is not None:
                    out |= s.summary(f"{e.key}_{engine}_ratio")
            out[f"{e.key}_transfers"] = e.transfers
            out["effects"] += e.reference is not None and e.llama is not None  # measured on both engines
            out["effects_transfer"] += e.transfers is True
            out["effects_do_not_transfer"] += e.transfers is False
        for f in self.files:
            if f.kld is not None:
                out[f"{f.precision.lower()}_top1_agreement_pct"] = f.kld.same_top1_pct
        return out

    def figures(self) -> dict[str, Figure]:
        from perfkit.stages.engines.render import effects_figure

        return {} if not self.built else {"effects": effects_figure(self)}

    def verdict(self) -> str:
        if not self.built:
            return f"llama.cpp not built: run `{BUILD_COMMAND}`"
        s = self.summary()
        unmeasured = [e.name for e in self.list_effects() if e.reference is None or e.llama is None]
        left = f"; not measured on both: {', '.join(unmeasured)}" if unmeasured else ""
        return (
            f"of {s['effects']} effects measured on both engines, {s['effects_transfer']} transfer to llama.cpp and "
            f"{s['effects_do_not_transfer']} do not{left}"
        )

    def conclusion(self) -> str:
        from perfkit.stages.engines.render import conclusion

        return conclusion(self)
