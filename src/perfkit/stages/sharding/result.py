"""The sharding stage's result: one row per rank count, the scaling model beside it, C5 judged."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from perfkit.optim import shard_scaling as sc
from perfkit.stages.base import StageResult, rows
from perfkit.stages.sharding import STAGE, render

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

MB = 2**20


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 and statistics.fmean(values) else 0.0


@dataclass(frozen=True)
class RankRun:
    """One rank count's figures (rank 0's clock; memory of the largest rank)."""

    ranks: int
    threads_per_rank: int
    embedding: str
    latency_ms: float  # one inference: prefill + max_new_tokens at batch 1 (the claim's unit), median
    ttft_ms: float
    tpot_ms: float
    step_ms: float  # decode step, median over every timed step at batch 1
    step_cv: float
    comm_ms_per_step: float
    comm_share: float
    layers_ms_per_step: float
    head_ms_per_step: float
    allreduce_bytes_per_token: float  # counted by the collectives, decode steps
    allreduce_bytes_per_token_from_shapes: int
    weight_private_mb: float  # largest rank
    load_peak_private_mb: float
    weight_mb: float  # parameter bytes of the largest rank
    read_fraction: float  # bytes the largest rank read / the checkpoint's bytes
    q_heads: str
    imbalance: float
    tokens_identical: bool
    identical_prompts: int
    max_logit_diff: float
    ranks_agree: bool
    capped: bool
    load_avg_1m: float
    tok_s: dict[int, float] = field(default_factory=dict)

    @classmethod
    def of(cls, r: dict[str, Any]) -> RankRun:
        speed = r["speed"]
        sizes = sorted(int(k.removeprefix("batch")) for k in speed if k.startswith("batch"))
        b1 = speed[f"batch{sizes[0]}"]
        steps = [s for run in b1 for s in run["step_s"]]
        comm = [c for run in b1 for c in run["comm_s"]]
        per_token = [b / run["rows"] for run in b1 for b in run["comm_bytes"]]
        big = max(r["ranks"], key=lambda x: x["weight_bytes"])
        tokens = len(b1[0]["step_s"]) + 1  # the prefill's token and one per decode step
        tok_s = {b: b * tokens / _median([x["e2e_s"] for x in speed[f"batch{b}"]]) for b in sizes}
        ex = r["exactness"]
        return cls(
            ranks=r["world"],
            threads_per_rank=r["ranks"][0]["threads"],
            embedding=r["embedding"],
            latency_ms=1e3 * _median([x["e2e_s"] for x in b1]),
            ttft_ms=1e3 * _median([x["ttft_s"] for x in b1]),
            tpot_ms=1e3 * _median([statistics.fmean(x["step_s"]) for x in b1 if x["step_s"]]),
            step_ms=1e3 * _median(steps),
            step_cv=_cv(steps),
            comm_ms_per_step=1e3 * statistics.fmean(comm),
            comm_share=sum(comm) / sum(steps),
            layers_ms_per_step=1e3 * _median([s for x in b1 for s in x["layers_s"]]),
            head_ms_per_step=1e3 * _median([s for x in b1 for s in x["head_s"]]),
            allreduce_bytes_per_token=statistics.fmean(per_token),
            allreduce_bytes_per_token_from_shapes=r["allreduce_bytes_per_token_from_shapes"],
            weight_private_mb=max(x["weight_private_mb"] for x in r["ranks"]),
            load_peak_private_mb=max(x["load_peak_private_mb"] for x in r["ranks"]),
            weight_mb=big["weight_bytes"] / MB,
            read_fraction=max(x["bytes_read"] / x["checkpoint_bytes"] for x in r["ranks"]),
            q_heads="+".join(str(x["q_heads"]) for x in r["ranks"]),
            imbalance=r["imbalance"],
            tokens_identical=ex["tokens_identical"],
            identical_prompts=ex["identical_prompts"],
            max_logit_diff=ex["max_logit_diff"],
            ranks_agree=r["ranks_agree"],
            capped=speed["capped"],
            load_avg_1m=r["load_avg"][0],
            tok_s=tok_s,
        )

    def metrics(self) -> dict[str, Any]:
        """Flat numbers and labels for MLflow: tokens/s per batch size as their own keys."""
        flat = {k: v for k, v in self.__dict__.items() if k != "tok_s"}
        return flat | {f"throughput_tok_s_batch{b}": v for b, v in self.tok_s.items()}


def busiest_share(r: dict[str, Any], single_weight_bytes: int) -> float:
    """The largest rank's part of the sharded weights: replicated bytes R from sum_r w_r = N R + S, w_1 = R + S."""
    n, weights = r["world"], [x["weight_bytes"] for x in r["ranks"]]
    if n == 1:
        return 1.0
    replicated = (sum(weights) - single_weight_bytes) / (n - 1)
    return (max(weights) - replicated) / (single_weight_bytes - replicated)


MODEL_TOLERANCE_PCT = 20.0  # the scaling model's error at a measured rank count that lets it extrapolate


@dataclass(frozen=True)
class ShardingResult(StageResult):
    spec = STAGE
    runs: tuple[RankRun, ...]
    raw: dict[int, dict[str, Any]]
    other_embedding: dict[str, Any] | None  # the load-only run in the other embedding mode
    max_step_cv: float
    max_logit_diff_allowed: float
    links: dict[str, sc.Link]
    device_bytes_s: float
    claim_model: dict[str, Any]
    cores: int = 0  # the machine's cores: a model check with more threads than cores is not made

    # ---- derived -------------------------------------------------------------------------------
    def by_n(self) -> dict[int, RankRun]:
        return {r.ranks: r for r in self.runs}

    def measured_link(self) -> sc.Link | None:
        sharded = [n for n in sorted(self.raw) if n > 1 and "allreduce" in self.raw[n]]
        return sc.fit_link(self.raw[sharded[0]]["allreduce"], "this machine (gloo)", sharded[0]) if sharded else None

    def pieces(self) -> sc.StepModel | None:
        one = self.by_n().get(1)
        if one is None:
            return None
        raw = self.raw[1]
        return sc.measured_pieces(
            one.step_ms / 1e3,
            one.layers_ms_per_step / 1e3,
            one.head_ms_per_step / 1e3,
            layers=raw["layers"],
            hidden=raw["hidden"],
            rows=1,
            dtype_bytes={"float32": 4}.get(raw["dtype"], 2),
            vocab_split=one.embedding == "vocab",
        )

    def model_checks(self) -> list[sc.Check]:
        pieces, link, runs = self.pieces(), self.measured_link(), self.by_n()
        if pieces is None or link is None:
            return []
        single = self.raw[1]["ranks"][0]["weight_bytes"]
        out = []
        for n, run in runs.items():
            if n > 1:
                share = busiest_share(self.raw[n], single)
                out.append(
                    sc.Check(
                        n,
                        pieces.step_s(n, link, share),
                        run.step_ms / 1e3,
                        max(run.step_cv, runs[1].step_cv),
                        self.max_step_cv,
                        n * run.threads_per_rank,
                        self.cores,
                    )
                )
        return out

    def claim_steps(self) -> sc.StepModel:
        m = self.claim_model
        return sc.weight_pieces(
            params_b=m["params_b"],
            layers=m["layers"],
            hidden=m["hidden"],
            vocab=m["vocab"],
            dtype_bytes=m["dtype_bytes"],
            bytes_per_s=self.device_bytes_s,
        )

    def gpt_fast_steps(self) -> tuple[sc.StepModel, sc.Link]:
        """The model for gpt-fast's published configuration (LLaMA-2-7B), over NVLink: the model checked against a publication."""
        seven = sc.weight_pieces(**{k: v for k, v in sc.LLAMA2_7B.items() if k != "name"}, bytes_per_s=self.device_bytes_s)
        return seven, self.links.get("nvlink") or next(iter(self.links.values()))

    def prediction(self) -> pd.DataFrame:
        """Speed-up against N: the model for the claim's model per link, gpt-fast's published curve, this machine."""
        import pandas as pd

        table, devices = [], self.claim_model["devices"]
        upto = sorted({1, 2, 4, 8, devices})
        steps = self.claim_steps()
        for link in self.links.values():
            for n in upto:
                table.append(
                    {
                        "series": f"model: {self.claim_model['name']}, {link.name}",
                        "ranks": n,
                        "step_ms": 1e3 * steps.step_s(n, link),
                        "speedup": steps.speedup(n, link),
                        "source": "model",
                    }
                )
        seven, nvlink = self.gpt_fast_steps()
        a, b, _ = sc.fit_inverse(sc.GPT_FAST_TOK_S)
        for n, tok_s in sc.GPT_FAST_TOK_S.items():
            table.append(
                {
                    "series": "gpt-fast llama-2-7b (published)",
                    "ranks": n,
                    "step_ms": 1e3 / tok_s,
                    "speedup": tok_s / sc.GPT_FAST_TOK_S[1],
                    "source": "published",
                }
            )
            table.append(
                {
                    "series": f"model: llama-2-7b, {nvlink.name}",
                    "ranks": n,
                    "step_ms": 1e3 * seven.step_s(n, nvlink),
                    "speedup": seven.speedup(n, nvlink),
                    "source": "model",
                }
            )
            table.append(
                {
                    "series": "fit to gpt-fast: a + b/N",
                    "ranks": n,
                    "step_ms": 1e3 * (a + b / n),
                    "speedup": (a + b) / (a + b / n),
                    "source": "fit",
                }
            )
        pieces, link = self.pieces(), self.measured_link()
        if pieces is not None and link is not None:
            for n in upto:
                table.append(
                    {
                        "series": "model: this machine, measured pieces",
                        "ranks": n,
                        "step_ms": 1e3 * pieces.step_s(n, link),
                        "speedup": pieces.speedup(n, link),
                        "source": "model",
                    }
                )
        one = self.by_n().get(1)
        for run in self.runs:
            if one is not None:
                table.append(
                    {
                        "series": "measured here (decode step)",
                        "ranks": run.ranks,
                        "step_ms": run.step_ms,
                        "speedup": one.step_ms / run.step_ms,
                        "source": "measured",
                    }
                )
        return pd.DataFrame(table)

    # ---- StageResult ---------------------------------------------------------------------------
    def variants(self) -> list[RankRun]:
        return list(self.runs)

    def summary(self) -> dict[str, Any]:
        runs, out = self.by_n(), {}
        one = runs.get(1)
        out["ranks_measured"] = ",".join(map(str, sorted(runs)))
        for n, r in sorted(runs.items()):
            out |= {
                f"latency_ms_n{n}": r.latency_ms,
                f"ttft_ms_n{n}": r.ttft_ms,
                f"tpot_ms_n{n}": r.tpot_ms,
                f"weight_private_mb_n{n}": r.weight_private_mb,
                f"comm_share_n{n}": r.comm_share,
            }
            out |= {f"throughput_tok_s_batch{b}_n{n}": v for b, v in r.tok_s.items()}
            if one is not None and n > 1:
                speedup = one.latency_ms / r.latency_ms
                out |= {
                    f"speedup_n{n}": speedup,
                    f"efficiency_n{n}": speedup / n,
                    f"private_ratio_n{n}": r.weight_private_mb / one.weight_private_mb,
                    f"comm_ms_per_step_n{n}": r.comm_ms_per_step,
                    f"allreduce_bytes_per_token_n{n}": r.allreduce_bytes_per_token,
                }
        if one is not None and 4 in runs:
            out["speedup_4_ranks"] = one.latency_ms / runs[4].latency_ms
        out["tokens_identical"] = all(r.tokens_identical and r.ranks_agree for r in self.runs)
        out["max_logit_diff"] = max(r.max_logit_diff for r in self.runs)
        out["exact"] = out["tokens_identical"] and out["max_logit_diff"] <= self.max_logit_diff_allowed
        if self.other_embedding is not None and one is not None:
            other = self.other_embedding
            worst = max(x["weight_private_mb"] for x in other["ranks"])
            out[f"private_ratio_n{other['world']}_{other['embedding']}"] = worst / one.weight_private_mb
            out["other_embedding_tokens_identical"] = other["exactness"]["tokens_identical"] and other["ranks_agree"]
        validated = []
        for check in self.model_checks():
            out[f"model_step_ms_n{check.n}"] = 1e3 * check.predicted_s
            out[f"measured_step_ms_n{check.n}"] = 1e3 * check.measured_s
            out[f"model_error_pct_n{check.n}"] = check.error_pct
            out[f"model_checked_n{check.n}"] = check.checked
            out[f"model_check_n{check.n}"] = check.status
            validated.append(check.checked and abs(check.error_pct) <= MODEL_TOLERANCE_PCT)
        out["model_validated"] = any(validated)  # the extrapolation is shown only where the model met a measurement
        out["model_tolerance_pct"] = MODEL_TOLERANCE_PCT
        steps, devices = self.claim_steps(), self.claim_model["devices"]
        out["claim_devices"] = devices
        out["claim_ranks_measured"] = devices in runs
        for name, link in self.links.items():
            out[f"model_speedup_claim_{name}"] = steps.speedup(devices, link)
        out["gpt_fast_speedup_4"] = sc.GPT_FAST_TOK_S[4] / sc.GPT_FAST_TOK_S[1]
        seven, nvlink = self.gpt_fast_steps()
        out["model_speedup_gpt_fast_4"] = seven.speedup(4, nvlink)
        out["model_vs_gpt_fast_pct"] = 100 * (out["model_speedup_gpt_fast_4"] / out["gpt_fast_speedup_4"] - 1)
        out["load_avg_1m"] = max(r.load_avg_1m for r in self.runs)
        return out

    def scaling(self) -> pd.DataFrame:
        import pandas as pd

        frame = pd.DataFrame(rows(self.runs)).drop(columns=["tok_s"])
        for b in sorted({b for r in self.runs for b in r.tok_s}):
            frame[f"tok_s_batch{b}"] = [r.tok_s.get(b) for r in self.runs]
        one = self.by_n().get(1)
        if one is not None:
            frame["speedup"] = one.latency_ms / frame["latency_ms"]
            frame["efficiency"] = frame["speedup"] / frame["ranks"]
        return frame

    def memory(self) -> pd.DataFrame:
        import pandas as pd

        table = []
        extra = [self.other_embedding] if self.other_embedding else []
        for r in [*self.raw.values(), *extra]:
            for x in r["ranks"]:
                table.append(
                    {
                        "ranks": r["world"],
                        "embedding": r["embedding"],
                        "rank": x["rank"],
                        "weight_private_mb": x["weight_private_mb"],
                        "load_peak_private_mb": x["load_peak_private_mb"],
                        "weight_mb": x["weight_bytes"] / MB,
                        "read_mb": x["bytes_read"] / MB,
                        "q_heads": x["q_heads"],
                        "kv_heads": x["kv_heads"],
                    }
                )
        return pd.DataFrame(table)

    def tables(self) -> dict[str, pd.DataFrame]:
        import pandas as pd

        allreduce = [{"ranks": n, **row} for n, r in self.raw.items() for row in r.get("allreduce", [])]
        return {
            "scaling": self.scaling(),
            "memory": self.memory(),
            "prediction": self.prediction(),
            "allreduce": pd.DataFrame(allreduce, columns=["ranks", "bytes", "seconds"]),
        }

    def figures(self) -> dict[str, Figure]:
        return render.figures(self)

    def conclusion(self) -> str:
        return render.conclusion(self)
