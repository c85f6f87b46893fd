"""Engines: perfkit's reference server against llama.cpp's llama-server, same model, same load.

The engine matters as much as most optimizations, so a user sees it beside them. Engines on the default model,
each one request at a time and batched, under the same closed-loop Locust load (the workload's prompts at a fixed
output length; `load.*` from params.yaml):

- perfkit's reference server in fp32, in three forms: eager over transformers' dynamic KV cache with its linear
  weights prepacked for oneDNN (`hardware.prepack`, what the stages run), the same with torch's nn.Linear, and
  compiled (`serving.kv_cache: slots`, `serving.compile: default`): each with the sequential scheduler and with
  continuous batching at 8;
- llama-server on an F32 GGUF converted from the same checkpoint, its KV cache in f32 too (equal precision) and
  prompt caching off (`--no-cache-prompt`: SmolLM2's chat template opens every prompt with the same system turn,
  which llama.cpp would otherwise reuse and perfkit's server here does not): 1 slot against 8;
- llama-server on the shipped Q4_1 GGUF (4-bit, its embedding/output layer Q8_0; KV f16): 1 slot against 8.

Both engines get `hardware.threads` threads; how their idle threads wait is recorded beside the figures. The Locust
client shares the cores: its busiest process's CPU is reported per variant. Variants run interleaved over `--rounds`
rounds (ABC... ABC...), each a fresh server (a compiled one compiles its graph in its warm-up, before it reports
ready); tokens/s is the mean with its between-round 95% interval, with TTFT/TPOT p50 and p99 (p99 of fewer than 100
requests is the largest few), E2E p50 and the server's peak RSS. The issue's two targets are read as paired ratios:
perfkit (prepacked eager, and compiled) over llama.cpp at equal precision, one request at a time (>= 0.9x) and 8 rows
against 8 slots (>= 1.0x), round by round, with the interval of the mean ratio. Needs `make llama-server` (skips
llama.cpp otherwise, saying so).

    .venv/bin/python bench/engines.py [--rounds 3] [--requests 20] [--only "perfkit fp32 prepacked" "F32"] [--smoke]

Prints one line per variant, then one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from tempfile import TemporaryDirectory

from perfkit import config
from perfkit.endpoints import llama_server
from perfkit.hardware import ResourceSampler
from perfkit.load.runner import run_load, served_prompts
from perfkit.measure import Spread, ratio
from perfkit.models import default_gguf_path
from perfkit.provenance import load_average
from perfkit.serving.launch import QUEUE_ALL, launch
from perfkit.stats import t_interval

BATCH = 8
# (perfkit variant, llama.cpp variant, the target for perfkit / llama.cpp tokens/s): equal precision, equal width
PAIRS = tuple(
    (f"perfkit fp32 {form} {batching}", f"llama.cpp F32 np{slots}", target)
    for form in ("prepacked", "compiled")
    for batching, slots, target in (("sequential", 1, 0.9), (f"continuous-b{BATCH}", BATCH, 1.0))
)

FORMS = {  # the reference engine's form -> server settings over the baseline's
    "prepacked": {"hardware.prepack": True},
    "unpacked": {"hardware.prepack": False},
    "compiled": {"serving.kv_cache": "slots", "serving.compile": "default"},
}
SCHEDULERS = {
    "sequential": {"serving.scheduler": "sequential"},
    f"continuous-b{BATCH}": {"serving.scheduler": "continuous", "serving.max_batch_size": BATCH},
}


def variants(root: Path) -> list[dict]:
    out = [
        {
            "name": f"perfkit fp32 {form} {batching}",
            "engine": "perfkit",
            "precision": "fp32, KV fp32",
            "batching": batching.replace("-b", ", "),
            "overrides": form_overrides | scheduler,
        }
        for batching, scheduler in SCHEDULERS.items()
        for form, form_overrides in FORMS.items()
    ]
    if llama_server.binary(root) is None:
        print("llama.cpp skipped: no llama-server binary (make llama-server)")
        return out
    files = (("F32 GGUF, KV f32", llama_server.f32_gguf(root), "f32"), ("Q4_1 GGUF (Q8_0 output), KV f16", default_gguf_path(), "f16"))
    for precision, gguf, kv_type in files:
        if not gguf.is_file():
            print(f"llama.cpp {precision} skipped: {gguf} not found (make llama-server converts the F32 file)")
            continue
        for slots in (1, BATCH):
            out.append(
                {
                    "name": f"llama.cpp {precision.split()[0]} np{slots}",
                    "engine": "llama.cpp",
                    "precision": precision,
                    "batching": "one slot" if slots == 1 else f"continuous, {slots} slots",
                    "gguf": gguf,
                    "slots": slots,
                    "kv_type": kv_type,
                }
            )
    return out


def one_round(cfg: config.Config, root: Path, v: dict, prompts: list) -> dict:
    if v["engine"] == "perfkit":
        server = launch(cfg, overrides=v["overrides"] | QUEUE_ALL, probe_cold_start=False, timeout_s=900)  # compiling: minutes
    else:
        server = llama_server.launch(
            root,
            v["gguf"],
            parallel=v["slots"],
            threads=cfg.hardware.threads,
            alias=cfg.model.name,
            ctx_per_slot=cfg.workload.prompt_tokens * 2 + cfg.workload.max_new_tokens * 2,
            kv_type=v["kv_type"],
            cache_prompt=False,  # perfkit's server reuses no prefix here: neither may llama.cpp's
        )
    with server as endpoint, TemporaryDirectory() as folder:
        with ResourceSampler(endpoint.pid, cfg.hardware.sample_interval_s) as sampler:
            load = run_load(cfg, endpoint, prompts, Path(folder))
    s = load.summary
    return {
        "tok_s": s.throughput_tok_s,
        "ttft_ms_p50": s.ttft.p50 if s.ttft else None,
        "ttft_ms_p99": s.ttft.p99 if s.ttft else None,
        "tpot_ms_p50": s.tpot.p50 if s.tpot else None,
        "tpot_ms_p99": s.tpot.p99 if s.tpot else None,
        "client_cpu_pct": s.client_cpu_pct,
        "e2e_ms_p50": s.e2e.p50 if s.e2e else None,
        "error_rate": s.error_rate,
        "truncated": s.truncated,
        "peak_rss_mb": sampler.usage.peak_rss_mb,
        "fixed_length": endpoint.facts.fixed_length,
    }


def paired_ratios(rounds: dict[str, list[dict]]) -> list[dict]:
    """Each of `PAIRS` that ran: perfkit's tokens/s over llama.cpp's, round by round (the rounds interleave, so a
    drift of the machine between rounds cancels), with the mean ratio's 95% interval and whether it meets the target
    (True/False where the interval clears it, None where it straddles it)."""
    out = []
    for num, den, target in PAIRS:
        if num in rounds and den in rounds:
            paired = ratio(Spread(tuple(r["tok_s"] for r in rounds[num])), Spread(tuple(r["tok_s"] for r in rounds[den])))
            low, high = paired.ci if paired.ci is not None else (None, None)
            met = paired.at_least(target)
            out.append(
                {"perfkit": num, "llama.cpp": den, "ratio": paired.mean, "ci_low": low, "ci_high": high, "rounds": paired.n,
                 "target": target, "met": met}
            )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=None, help="measured requests per variant and round (load.requests)")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--only", nargs="+", default=None, help="run only the variants whose names contain one of these")
    args = parser.parse_args()
    root = config.find_root()
    cfg = config.load("baseline", smoke=args.smoke, root=root)
    if args.requests:
        cfg = config.override(cfg, {"load.requests": args.requests})
    prompts = served_prompts(cfg)
    plan = [v for v in variants(root) if args.only is None or any(part in v["name"] for part in args.only)]
    load_start = load_average()
    rounds: dict[str, list[dict]] = {v["name"]: [] for v in plan}
    for _ in range(args.rounds):
        for v in plan:
            rounds[v["name"]].append(one_round(cfg, root, v, prompts))
    rows = []
    for v in plan:
        runs = rounds[v["name"]]
        mean, low, high = t_interval([r["tok_s"] for r in runs])

        def med(key: str, runs: list[dict] = runs) -> float | None:
            values = [r[key] for r in runs if r[key] is not None]
            return statistics.fmean(values) if values else None

        row = {
            "variant": v["name"],
            "engine": v["engine"],
            "precision": v["precision"],
            "batching": v["batching"],
            "rounds": len(runs),
            "tok_s": mean,
            "tok_s_ci_low": low,
            "tok_s_ci_high": high,
            "ttft_ms_p50": med("ttft_ms_p50"),
            "ttft_ms_p99": med("ttft_ms_p99"),
            "tpot_ms_p50": med("tpot_ms_p50"),
            "tpot_ms_p99": med("tpot_ms_p99"),
            "client_cpu_pct_max": max(r["client_cpu_pct"] for r in runs),
            "e2e_ms_p50": med("e2e_ms_p50"),
            "error_rate": med("error_rate"),
            "truncated": sum(r["truncated"] for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "fixed_length": all(r["fixed_length"] for r in runs),
        }
        rows.append(row)
        print(
            f"{row['variant']:28s} [{row['precision']}, {row['batching']}] {mean:7.1f} tok/s (95% CI {low:.1f}-{high:.1f}) "
            f"TTFT p50 {row['ttft_ms_p50'] or float('nan'):.0f} ms, TPOT p50 {row['tpot_ms_p50'] or float('nan'):.1f} ms, "
            f"RSS {row['peak_rss_mb']:.0f} MB, errors {row['error_rate']:.1%}"
        )
    pairs = paired_ratios(rounds)
    for pair in pairs:
        verdict = {True: "met", False: "not met", None: "the interval straddles it"}[pair["met"]]
        low, high = (float("nan") if v is None else v for v in (pair["ci_low"], pair["ci_high"]))
        print(
            f"{pair['perfkit']} / {pair['llama.cpp']}: {pair['ratio']:.2f}x over {pair['rounds']} paired rounds "
            f"(95% CI {low:.2f}-{high:.2f}); target {pair['target']}x: {verdict}"
        )
    print(
        json.dumps(
            {
                "users": cfg.load.users,
                "requests_per_round": cfg.load.requests,
                "threads": cfg.hardware.threads,
                "thread_wait": {  # how idle threads wait: both engines' defaults, recorded
                    "llama.cpp": "--poll 50 (its default: busy-waits between jobs)",
                    "perfkit": "torch's OpenMP, OMP_WAIT_POLICY=" + os.environ.get("OMP_WAIT_POLICY", "unset (spins, then sleeps)"),
                },
                "load_avg_1m_start": load_start,
                "load_avg_1m_end": load_average(),
                "cpu_count": os.cpu_count(),
                "variants": rows,
                "paired_ratios": pairs,
            }
        )
    )


if __name__ == "__main__":
    main()
