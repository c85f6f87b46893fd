"""Speed and memory of one model variant, timed the same way for every stage that compares models.

A variant is a checkpoint folder plus a scheme (`perfkit.optim.quantize.SCHEMES`: `fp32`, `bf16`,
int8, ...). It is measured in a fresh process (`spawn`: forked from a forkserver that has imported
torch and transformers once, or on CUDA a fresh interpreter; the stage's resolved config handed over,
never re-read from params.yaml),
because a process's peak RSS only rises: after fp32 and bf16 ran in one process, an int8 model would
inherit their peak. `python -m perfkit.speed --model DIR --scheme X --plan JSON --config FILE` runs the
same measurement from a shell. The child pins threads, loads, applies the scheme, then generates a
fixed number of tokens from the same "summarize" prompts at each batch size, after short warm-up
generations, with at least `measure.min_repeats` timed repeats within `measure.max_duration_s`,
shared by the batch sizes (a capped variant says how many repeats it did; a batch size the cap
leaves no time for reports 0 repeats). Peak RSS is sampled while serving, after the freed fp32
copy went back to the OS; `load_peak_rss_mb` is the process's peak including loading and the
scheme. It reports TTFT and TPOT (with its CV) at the first batch size, tokens/s at every batch
size, model bytes (each storage once), and the harness's own cost: clock reads x the cost of one
read, over the end-to-end time. It prints one JSON line and is killed after `Plan.timeout_s`.

The quantization stage times its schemes with it, the distillation stage its teachers and students.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perfkit import config, workload
from perfkit.config import Config
from perfkit.processes import RUN_ID_ENV, exit_when_gone


@dataclass(frozen=True)
class Plan:
    """What one timing runs: prompt length, output length, batch sizes, and the subprocess's limit."""

    prompt_tokens: int
    new_tokens: int
    batch_sizes: tuple[int, ...]
    timeout_s: float
    timeout_key: str  # the params key that sets timeout_s, named when a variant runs past it
    skip_modules: tuple[str, ...] = ()  # module-name suffixes a scheme that skips outliers keeps in fp32
    repeats: int | None = None  # timed repeats per batch size in one round (None: measure.min_repeats)


def measure(cfg: Config, model_dir: Path, scheme: str, plan: Plan) -> dict[str, Any]:
    """Speed, memory and size of one variant in this process (meant to be a fresh one)."""
    from perfkit.engine import Engine
    from perfkit.hardware import ResourceSampler, pin_threads, resolve_device
    from perfkit.measure import Latency, clock_read_cost_s, repeat, warm_up
    from perfkit.models import load_causal_lm
    from perfkit.optim import quantize

    m = cfg.measure
    threads = pin_threads(cfg.hardware.threads)
    device = resolve_device(cfg.hardware.device)
    # Sampled, not getrusage's ru_maxrss: a forked child inherits its parent's high-water mark.
    with ResourceSampler(interval_s=cfg.hardware.sample_interval_s, children=False) as loading:
        model, tokenizer = load_causal_lm(model_dir, device)
        try:
            model = quantize.apply(scheme, model, quantize.Target(device, plan.skip_modules))
        except Exception as exc:  # the scheme cannot run here: reported, not fatal
            return {"status": "skipped", "reason": f"{type(exc).__name__}: {exc}"}
    out: dict[str, Any] = {"status": "ok", "load_peak_rss_mb": loading.usage.peak_rss_mb}
    out |= {"model_bytes": quantize.model_bytes(model), "threads": threads}  # before prepacking: the weights as stored
    engine = Engine(model, tokenizer, device, prepack=cfg.hardware.prepack)
    release_freed_memory()  # what loading, `model_bytes` and packing let go, before memory is sampled
    prompts = workload.summary_prompts(
        tokenizer, cfg.corpus_dir, max(plan.batch_sizes), plan.prompt_tokens, cfg.workload.passage_words, cfg.workload.seed
    )
    timed_calls, e2e_total, slowest_call_s = 0, 0.0, 0.0
    deadline = time.perf_counter() + m.max_duration_s
    with ResourceSampler(interval_s=cfg.hardware.sample_interval_s, children=False) as sampler:
        for i, b in enumerate(plan.batch_sizes):
            remaining = deadline - time.perf_counter()
            if remaining < slowest_call_s:  # a larger batch takes at least as long as a smaller one did
                out |= {f"repeats_batch{b}": 0, f"capped_batch{b}": True}
                continue
            batch = [p.input_ids for p in prompts[:b]]
            # prefill + one decode step warm every kernel (the cap is kept for timing): `measure.warmup` of them, and on
            # for `measure.warmup_s` while a GPU's clocks rise from idle
            warm_up(lambda batch=batch: engine.generate_batch(batch, 2, stop_at_eos=False), m.warmup, m.warmup_s)
            runs: list[list] = []
            reps = repeat(
                lambda batch=batch, runs=runs: runs.append(engine.generate_batch(batch, plan.new_tokens, stop_at_eos=False)),
                warmup=0,
                min_repeats=plan.repeats or m.min_repeats,
                min_duration_s=m.min_duration_s,
                max_duration_s=(deadline - time.perf_counter()) / (len(plan.batch_sizes) - i),
                device=device,
            )
            lat = reps.latency
            timed_calls += len(runs)
            e2e_total += sum(reps.seconds)
            slowest_call_s = max(reps.seconds)
            out |= {
                f"throughput_tok_s_batch{b}": b * plan.new_tokens / (lat.p50 / 1000.0),
                f"latency_ms_p50_batch{b}": lat.p50,
                f"cv_batch{b}": lat.cv,
                f"repeats_batch{b}": len(reps.seconds),
                f"capped_batch{b}": reps.capped,
                f"noisy_batch{b}": lat.cv > m.noisy_cv,
            }
            if i == 0:
                out |= Latency.from_samples([g[0].timing.ttft_s for g in runs]).as_metrics("ttft")
                out |= Latency.from_samples([g[0].timing.tpot_s for g in runs]).as_metrics("tpot")
    # Per timed call: the engine reads the clock once at start and once per token, `repeat` twice.
    reads = timed_calls * (plan.new_tokens + 3)
    out["harness_overhead_pct"] = 100.0 * reads * clock_read_cost_s(device=device) / e2e_total
    out["peak_rss_mb"] = sampler.usage.peak_rss_mb
    out["cpu_util_pct"] = sampler.usage.cpu_util_pct
    return out


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc keeps them otherwise).

    A scheme replaces the loaded fp32 weights; without this, RSS while serving would still count
    the freed fp32 copy and an int8 model would look as big as the fp32 one.
    """
    gc.collect()
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if trim is not None:
        trim(0)


# What every measuring child imports before it measures anything (5.3 s of a fresh interpreter here): the
# forkserver imports them once, and each child forks from it, still a fresh process with its own peak RSS.
PRELOAD = (
    "torch",
    "transformers",
    "perfkit.engine",
    "perfkit.hardware",
    "perfkit.measure",
    "perfkit.models",
    "perfkit.optim.quantize",
    "perfkit.workload",
)


def start_context(device_type: str) -> Any:
    """Where a measuring child comes from: forked from the preloaded forkserver, or on CUDA a fresh interpreter.

    CUDA cannot be used in a forked child of a process that initialised it, and the forkserver's preloaded
    imports do (seen on an H200: every scheme's child failed with "Cannot re-initialize CUDA in forked
    subprocess"). On a GPU the child pays its imports (a few seconds) instead.
    """
    import multiprocessing

    if device_type == "cuda":
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))  # takes effect when the forkserver starts (the first spawn)
    return ctx


def _child(conn: Any, cfg_json: str, model_dir: str, scheme: str, plan: Plan, root: str, stage_pid: int) -> None:
    """The measuring child: dies with the stage that asked for it, measures, sends one dict."""
    preloaded = all(name in sys.modules for name in PRELOAD)  # the forkserver's imports, inherited by the fork
    exit_when_gone(stage_pid)  # a forked child's parent is the forkserver, which a killed stage does not take down
    os.environ.update({"PERFKIT_ROOT": root, "TOKENIZERS_PARALLELISM": "false"})
    os.environ.pop(RUN_ID_ENV, None)
    try:
        out = measure(config.from_json(cfg_json), Path(model_dir), scheme, plan)
    except Exception as exc:  # reported as the variant's failure, not a crash of the stage
        out = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    conn.send(out | {"pid": os.getpid(), "preloaded": preloaded})
    conn.close()


def spawn(cfg: Config, model_dir: Path, scheme: str, plan: Plan) -> dict[str, Any]:
    """`measure` in a fresh process (`start_context`), killed after `plan.timeout_s`.

    A failure (an exception, a crash, the time limit) is reported as `{"status": "failed", "reason": ...}`, not
    raised. The child is a fresh process as far as memory goes (its peak RSS is sampled, not inherited), and it
    pays for no imports: they were ~5 s of every scheme's time in every round.
    """
    from perfkit.hardware import resolve_device

    ctx = start_context(resolve_device(cfg.hardware.device).type)
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(
        target=_child,
        args=(send, config.to_json(cfg), str(model_dir), scheme, plan, str(cfg.root), os.getpid()),
        name=f"perfkit-speed-{scheme}",
        daemon=True,
    )
    child.start()
    send.close()  # the child holds the only writer: a child that dies without a result reads as EOF
    ready = receive.poll(plan.timeout_s)
    out: dict[str, Any] | None = None
    if ready:
        try:
            out = receive.recv()
        except EOFError:
            pass
        child.join(timeout=10.0)
    if child.is_alive():
        child.kill()
        child.join()
    receive.close()
    if not ready:
        return {"status": "failed", "reason": f"exceeded {plan.timeout_key} = {plan.timeout_s:g} s"}
    if out is None:
        return {"status": "failed", "reason": f"exit {child.exitcode}: the measuring process died without a result"}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}", description="one variant's speed and memory")
    parser.add_argument("--model", type=Path, required=True, help="checkpoint folder")
    parser.add_argument("--scheme", required=True, help="a perfkit.optim.quantize scheme, e.g. fp32 or bf16")
    parser.add_argument("--plan", required=True, help="the Plan as JSON")
    parser.add_argument("--config", type=Path, required=True, help="the resolved config (JSON) the stage runs with")
    args = parser.parse_args(argv)
    raw = json.loads(args.plan)
    plan = Plan(**(raw | {"batch_sizes": tuple(raw["batch_sizes"]), "skip_modules": tuple(raw["skip_modules"])}))
    cfg = config.from_json(args.config.read_text())
    print(json.dumps(measure(cfg, args.model, args.scheme, plan)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
