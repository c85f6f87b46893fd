"""The distillation stage's result: per model speed and quality, learning curves, C16.

Quality figures carry percentile-bootstrap intervals over the held-out tokens (resampled jointly
for the two models compared, `stats.bootstrap_paired`); speed-ups carry a t-interval over the
timing rounds when there are two or more (each round's ratio is taken side by side).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from perfkit.optim.distill import TrainResult, Trend, fit_trend
from perfkit.quality import TokenScores
from perfkit.stages.base import StageResult
from perfkit.stages.distillation import STAGE, render
from perfkit.stats import bootstrap_paired, t_interval

KEPT_TARGETS = (0.8, 0.89)


@dataclass(frozen=True)
class ModelEval:
    name: str
    role: str  # teacher | student | control-untrained | control-ce
    scores: TokenScores
    layers: tuple[int, ...] = ()
    loss: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class TrainingRun:
    name: str
    loss: str
    layers: tuple[int, ...]
    result: TrainResult

    @property
    def trend(self) -> Trend | None:
        return fit_trend([p["tokens"] for p in self.result.curve], [p["accuracy_kept"] for p in self.result.curve])


@dataclass(frozen=True)
class Student:
    n_layers: int
    layers: tuple[int, ...]
    runs: tuple[TrainingRun, ...]


@dataclass(frozen=True)
class Variant:
    """One timed or scored model: a name, its role, the scheme it was timed in, and its figures."""

    name: str
    role: str
    scheme: str | None
    metrics: dict[str, Any] = field(default_factory=dict)


def _mean(col: np.ndarray) -> np.ndarray:
    return col.mean(axis=1)


@dataclass(frozen=True)
class DistillationResult(StageResult):
    spec = STAGE

    evals: dict[str, ModelEval]
    speeds: dict[tuple[str, str], list[dict[str, Any]]]
    students: tuple[Student, ...]
    importance: tuple[float, ...] | None
    selection: str
    n_layers: int
    batch_sizes: tuple[int, ...]
    bootstrap: int
    context: dict[str, Any]
    target_speedup: float = 4.0  # the student whose speed-up is closest heads the summary
    target_kept_pct: float = 89.0
    target_size_ratio: float = 4.3  # non-embedding parameters, teacher over student: a student at this ratio tests the claim

    # -- measurements ---------------------------------------------------------------------------
    def _boot(self, columns: list[np.ndarray], stat: Any) -> tuple[float, float, float]:
        return bootstrap_paired(columns, stat, n=self.bootstrap)

    def quality(self, name: str) -> dict[str, Any]:
        """Perplexity, agreement, KL, top-1 accuracy and accuracy kept, each with its interval."""
        s, t = self.evals[name].scores, self.evals["teacher-fp32"].scores
        out: dict[str, Any] = {}
        figures = {
            "perplexity": ([s.nll], lambda a: np.exp(_mean(a))),
            "top1_agreement": ([s.agree], _mean),
            "kl_mean": ([s.kl], _mean),
            "top1_accuracy": ([s.correct], _mean),
            "accuracy_kept_pct": ([s.correct, t.correct], lambda a, b: 100.0 * _mean(a) / _mean(b)),
        }
        for key, (cols, stat) in figures.items():
            value, lo, hi = self._boot(cols, stat)
            out |= {key: value, f"{key}_ci_low": lo, f"{key}_ci_high": hi}
        out["eval_tokens"] = len(s.nll)
        return out

    def compare(self, a: str, b: str) -> dict[str, Any]:
        """a minus b on every quality figure, paired over tokens: accuracy and agreement in points, nll and KL in nats."""
        x, y = self.evals[a].scores, self.evals[b].scores
        out: dict[str, Any] = {}
        columns = (("accuracy_pts", "correct", 100.0), ("agreement_pts", "agree", 100.0), ("nll", "nll", 1.0), ("kl", "kl", 1.0))
        for key, col, scale in columns:
            v, lo, hi = self._boot([getattr(x, col), getattr(y, col)], lambda p, q, k=scale: k * (_mean(p) - _mean(q)))
            out |= {f"{key}_diff": v, f"{key}_diff_ci_low": lo, f"{key}_diff_ci_high": hi}
        return out

    def beats(self, a: str, b: str) -> bool:
        """a better than b beyond the interval on every quality figure."""
        c = self.compare(a, b)
        better = c["accuracy_pts_diff_ci_low"] > 0 and c["agreement_pts_diff_ci_low"] > 0
        return better and c["nll_diff_ci_high"] < 0 and c["kl_diff_ci_high"] < 0

    def speed(self, name: str, scheme: str) -> dict[str, Any]:
        """Mean of each timing figure over the rounds that ran; the first failure's status and reason otherwise."""
        rounds = self.speeds.get((name, scheme), [])
        ok = [r for r in rounds if r.get("status") == "ok"]
        if not ok:
            bad = rounds[0] if rounds else {"status": "not timed", "reason": "same architecture as its trained students"}
            return {"status": bad.get("status"), "reason": bad.get("reason")}
        keys = [k for k, v in ok[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
        return {"status": "ok", **{k: float(np.mean([r[k] for r in ok if k in r])) for k in keys}}

    def speedup(self, name: str, scheme: str, base: tuple[str, str], batch: int) -> tuple[float, float, float]:
        """Tokens/s of (name, scheme) over `base`'s at `batch`, per round side by side: (mean, low, high)."""
        key = f"throughput_tok_s_batch{batch}"
        pairs = [
            (r[key], b[key])
            for r, b in zip(self.speeds.get((name, scheme), []), self.speeds.get(base, []))
            if r.get("status") == b.get("status") == "ok" and key in r and key in b
        ]
        if not pairs:
            return math.nan, math.nan, math.nan
        return t_interval([x / y for x, y in pairs])

    def rows(self) -> dict[str, dict[str, Any]]:
        """Each variant's figures by name (a student timed in another dtype as `name@scheme`)."""
        return self._rows

    @cached_property
    def _rows(self) -> dict[str, dict[str, Any]]:
        return {v.name if v.scheme in (None, "fp32") or v.role == "teacher" else f"{v.name}@{v.scheme}": v.metrics for v in self.variants()}

    def variants(self) -> list[Variant]:
        b1, bn = self.batch_sizes[0], self.batch_sizes[-1]
        fp32_bytes = self.speed("teacher-fp32", "fp32").get("model_bytes")
        out = []
        for e in self.evals.values():
            schemes = [s for (n, s) in self.speeds if n == e.name] or [None]
            for scheme in schemes:
                m: dict[str, Any] = {"role": e.role, "layers": len(e.layers) or self.n_layers, "loss": e.loss or ""}
                m["layers_kept"] = " ".join(map(str, e.layers)) if e.layers else "all"
                m |= self.quality(e.name)
                if scheme is not None:
                    sp = self.speed(e.name, scheme)
                    m |= {k: sp.get(k) for k in ("status", "reason", "model_bytes", "peak_rss_mb", "tpot_ms_p50", "ttft_ms_p50")}
                    m |= {f"throughput_tok_s_batch{b}": sp.get(f"throughput_tok_s_batch{b}") for b in self.batch_sizes}
                    for base, label in ((("teacher-fp32", "fp32"), "fp32"), (("teacher-bf16", "bf16"), "bf16")):
                        v, lo, hi = self.speedup(e.name, scheme, base, b1)
                        m |= {f"speedup_vs_{label}": v, f"speedup_vs_{label}_ci_low": lo, f"speedup_vs_{label}_ci_high": hi}
                        m[f"speedup_batch{bn}_vs_{label}"] = self.speedup(e.name, scheme, base, bn)[0]
                    if fp32_bytes and sp.get("model_bytes"):
                        m["size_saving_pct"] = 100.0 * (1 - sp["model_bytes"] / fp32_bytes)
                run = self._run(e.name)
                if run is not None:
                    r = run.result
                    m |= {"steps": r.steps, "tokens_trained": r.tokens, "train_step_s": r.step_s, "stopped_by": r.stopped_by}
                    m["final_train_loss"] = r.losses[-1] if r.losses else math.nan
                    trend = run.trend
                    for target in KEPT_TARGETS:
                        m[f"tokens_for_{round(100 * target)}pct_kept"] = trend.tokens_for(target) if trend else math.nan
                m["path"] = e.path or ""
                out.append(Variant(e.name, e.role, scheme, m))
        return out

    def _run(self, name: str) -> TrainingRun | None:
        return next((r for s in self.students for r in s.runs if r.name == name), None)

    def headline(self) -> str | None:
        """The distilled student whose speed-up over the fp32 teacher is closest to the claimed one."""
        claimed = self.target_speedup
        kd = [e.name for e in self.evals.values() if e.role == "student"]
        if not kd:
            return None
        b1 = self.batch_sizes[0]

        def distance(name: str) -> float:
            v = self.speedup(name, "fp32", ("teacher-fp32", "fp32"), b1)[0]
            return abs(math.log(v / claimed)) if v == v and v > 0 else math.inf

        return min(kd, key=distance)

    def student_kept_and_speedup(self) -> tuple[float | None, float | None]:
        """The headline student's accuracy kept (% of the teacher's) and tokens/s over the fp32 teacher."""
        head = self.headline()
        if head is None:
            return None, None
        row = self.rows()[head]
        return row.get("accuracy_kept_pct"), row.get("speedup_vs_fp32")

    # -- the stage's shape ----------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        rows = self.rows()
        c = self.context
        s: dict[str, Any] = {"load_avg_start": c["load_avg_start"], "load_avg_end": c["load_avg_end"], "rounds": c["rounds"]}
        t = rows["teacher-fp32"]
        s |= {"teacher_top1_accuracy_pct": 100 * t["top1_accuracy"], "teacher_perplexity": t["perplexity"]}
        s["bf16_teacher_speedup"] = rows["teacher-bf16"].get("speedup_vs_fp32")
        s["bf16_teacher_accuracy_kept_pct"] = rows["teacher-bf16"]["accuracy_kept_pct"]
        head = self.headline()
        if head is None:
            return s
        h = rows[head]
        s |= {"student": head, "student_layers": h["layers"], "steps": h["steps"], "tokens_trained": h["tokens_trained"]}
        for key in ("accuracy_kept_pct", "top1_agreement", "perplexity", "kl_mean"):
            s |= {key: h[key], f"{key}_ci_low": h[f"{key}_ci_low"], f"{key}_ci_high": h[f"{key}_ci_high"]}
        # like with like: over the fp32 teacher the student in fp32, over the bf16 teacher the student in bf16 (when timed)
        for key, row in (("speedup_vs_fp32", h), ("speedup_vs_bf16", rows.get(f"{head}@bf16"))):
            if row is not None:
                s |= {key: row.get(key), f"{key}_ci_low": row.get(f"{key}_ci_low"), f"{key}_ci_high": row.get(f"{key}_ci_high")}
        s |= {k: h.get(k) for k in (f"speedup_batch{self.batch_sizes[-1]}_vs_fp32", "size_saving_pct", "train_step_s")}
        s |= {k: h[k] for k in ("tokens_for_80pct_kept", "tokens_for_89pct_kept")}
        s |= self.scale(h, rows["teacher-fp32"])
        untrained = f"{h['layers']}L-untrained"
        s["untrained_accuracy_kept_pct"] = rows[untrained]["accuracy_kept_pct"]
        s["kd_beats_untrained"] = self.beats(head, untrained)
        ce = f"{h['layers']}L-ce"
        if ce in rows:
            d = self.compare(head, ce)
            s |= {"ce_accuracy_kept_pct": rows[ce]["accuracy_kept_pct"], "kd_minus_ce_accuracy_pts": d["accuracy_pts_diff"]}
            s |= {
                "kd_minus_ce_accuracy_pts_ci_low": d["accuracy_pts_diff_ci_low"],
                "kd_minus_ce_accuracy_pts_ci_high": d["accuracy_pts_diff_ci_high"],
            }
            s["kd_effect_resolved"] = d["accuracy_pts_diff_ci_low"] > 0 or d["accuracy_pts_diff_ci_high"] < 0
        return {k: v for k, v in s.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}

    def scale(self, student: dict[str, Any], teacher: dict[str, Any]) -> dict[str, Any]:
        """Whether the headline student tests the claim: its size ratio, and whether its budget reached the target accuracy.

        Decoder layers are all the same size, so the non-embedding parameter ratio is the layer ratio (the final norm's
        576 weights aside); the total ratio, tied embedding included, is the fp32 checkpoints' byte ratio.
        """
        ratio = self.n_layers / student["layers"]
        out: dict[str, Any] = {
            "size_ratio_non_embedding": ratio,
            "target_size_ratio": self.target_size_ratio,
            "at_target_size_ratio": ratio >= 0.95 * self.target_size_ratio,
            "target_kept_pct": self.target_kept_pct,
        }
        if teacher.get("model_bytes") and student.get("model_bytes"):
            out["size_ratio_total"] = teacher["model_bytes"] / student["model_bytes"]
        need = student.get(f"tokens_for_{round(self.target_kept_pct)}pct_kept", math.nan)
        reached = student["accuracy_kept_pct_ci_low"] >= self.target_kept_pct
        out["budget_reaches_target_kept"] = bool(reached or (math.isfinite(need) and student["tokens_trained"] >= need))
        trained = student["tokens_trained"]
        seconds_per_token = student["train_step_s"] * student["steps"] / trained if trained else math.nan
        if math.isfinite(need):
            out["hours_for_target_kept"] = need * seconds_per_token / 3600
        out["kept_target_tested"] = out["at_target_size_ratio"] and out["budget_reaches_target_kept"]
        return out

    def verdict(self) -> str:
        s = self.summary()
        if "student" not in s:
            return "No distilled student was trained."
        return (
            f"{s['student']} ({s['size_ratio_non_embedding']:.1f}x fewer non-embedding parameters): "
            f"{s['accuracy_kept_pct']:.1f}% of the teacher's next-token accuracy kept after {s['tokens_trained']:,.0f} "
            f"training tokens, {s.get('speedup_vs_fp32', math.nan):.2f}x the fp32 teacher's tokens/s."
        )

    def tables(self) -> dict[str, pd.DataFrame]:
        variants = pd.DataFrame([{"variant": n, **m} for n, m in self.rows().items()])
        curve = pd.DataFrame(
            [{"run": r.name, "loss": r.loss, "layers": len(r.layers), **p} for s in self.students for r in s.runs for p in r.result.curve]
        )
        losses = pd.DataFrame(
            [
                {"run": r.name, "loss": r.loss, "step": i + 1, "train_loss": v}
                for s in self.students
                for r in s.runs
                for i, v in enumerate(r.result.losses)
            ]
        )
        layer_rows = []
        for i in range(self.n_layers):
            row: dict[str, Any] = {"layer": i, "importance": self.importance[i] if self.importance else math.nan}
            row |= {f"kept_by_{s.n_layers}L": i in s.layers for s in self.students}
            layer_rows.append(row)
        return {"variants": variants, "curve": curve, "losses": losses, "layers": pd.DataFrame(layer_rows)}

    def figures(self) -> dict[str, Any]:
        return {"frontier": render.frontier(self), "learning_curves": render.learning_curves(self)}

    def conclusion(self) -> str:
        return render.conclusion(self)
