"""One rank of the tensor-parallel benchmark: `python -m perfkit shard-bench`, started by torchrun.

Every rank joins the process group, loads its slices of the checkpoint (`shard_model.load_sharded`),
and then all ranks run the same greedy generations in lockstep (each holds full logits after the
last all-reduce, so each picks the same token; `ranks_agree` checks it). Rank 0 writes the result.

- *Memory* is private memory (RssAnon from /proc, and USS): RSS would count the shared library pages
  and the mapped checkpoint, about 450 MB per process here. `weight_private_mb` is RssAnon after
  loading minus before; `load_peak_private_mb` the peak above that baseline while loading.
- *Exactness*: greedy tokens and the logits of each step for `exact_prompts` workload prompts,
  compared with the reference file that the 1-rank run writes from the plain `from_pretrained`
  model; logits are compared up to each prompt's first differing token (after it, the two runs
  condition on different text).
- *Speed*: one inference (the workload prompt, then `max_new_tokens` tokens, batch 1) repeated:
  TTFT, TPOT, latency, and each decode step's time, time inside collectives (`Comm`), time in the
  decoder layers and in the lm_head (forward hooks); then tokens/s at each batch size.
- *All-reduce micro-benchmark* (N > 1): seconds per call at a few sizes with both ranks waiting in
  the collective, for the scaling model's latency + bytes / bandwidth.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from perfkit import workload
from perfkit.config import Config
from perfkit.engine import Engine
from perfkit.hardware import now, pin_threads, resolve_device
from perfkit.models import load_causal_lm, load_tokenizer
from perfkit.optim import shard_launch
from perfkit.optim.shard_model import Comm, Plan, allreduce_bytes_per_token, load_sharded, weight_bytes

log = logging.getLogger("perfkit.shard")
REFERENCE = "reference.pt"


def private_mb() -> float:
    """This process's anonymous resident memory (RssAnon), MB: its own heap, not shared files or libraries."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    import psutil  # not Linux: USS is the nearest measure

    return psutil.Process().memory_full_info().uss / 2**20


class PeakPrivate:
    """Samples `private_mb` every few milliseconds in a thread; `.peak` after the block."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s, self.peak, self._stop = interval_s, private_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, private_mb())

    def __enter__(self) -> PeakPrivate:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, private_mb())


@torch.inference_mode()
def greedy_logits(model: torch.nn.Module, ids: list[int], n: int, device: torch.device) -> tuple[list[int], torch.Tensor]:
    """`n` greedy tokens after `ids` and the logits each was picked from ([n, vocab], float32, host)."""
    out = model(input_ids=torch.tensor([ids], device=device), use_cache=True, logits_to_keep=1)
    tokens, rows = [], []
    for _ in range(n):
        logits = out.logits[0, -1].float()
        token = int(logits.argmax())
        tokens.append(token)
        rows.append(logits.cpu())
        out = model(input_ids=torch.tensor([[token]], device=device), cache=out.cache, use_cache=True, logits_to_keep=1)
    return tokens, torch.stack(rows)


def compare(runs: list[tuple[list[int], torch.Tensor]], reference: list[tuple[list[int], torch.Tensor]]) -> dict[str, Any]:
    """Identical greedy tokens per prompt, and the largest |logit difference| up to the first differing token."""
    identical, worst = 0, 0.0
    for (tokens, logits), (ref_tokens, ref_logits) in zip(runs, reference):
        same = next((i for i, (a, b) in enumerate(zip(tokens, ref_tokens)) if a != b), len(tokens))
        identical += same == len(tokens) == len(ref_tokens)
        upto = min(same + 1, len(tokens))
        worst = max(worst, float((logits[:upto] - ref_logits[:upto]).abs().max()))
    return {"prompts": len(runs), "identical_prompts": identical, "tokens_identical": identical == len(runs), "max_logit_diff": worst}


class LayerClock:
    """Seconds per forward in the decoder layers and in the lm_head (hooks on the first and last layer, and the head)."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.layers_s = self.head_s = 0.0
        self._t = {}
        layers = model.model.layers

        def mark(key: str):
            return lambda *_: self._t.__setitem__(key, now(device))

        def add(attr: str, key: str):
            return lambda *_: setattr(self, attr, getattr(self, attr) + now(device) - self._t[key])

        self.hooks = [
            layers[0].register_forward_pre_hook(mark("layers")),
            layers[-1].register_forward_hook(add("layers_s", "layers")),
            model.lm_head.register_forward_pre_hook(mark("head")),
            model.lm_head.register_forward_hook(add("head_s", "head")),
        ]

    def snapshot(self) -> tuple[float, float]:
        return self.layers_s, self.head_s


def _sync(device: torch.device) -> None:
    """All ranks start a timed run together (a collective outside `Comm`, so not counted)."""
    if dist.get_world_size() > 1:
        dist.all_reduce(torch.zeros(1, device=device))


def timed_inference(engine: Engine, comm: Comm, clock: LayerClock, prompts: list[list[int]], n: int) -> dict[str, Any]:
    """One generation of `n` tokens for a batch of prompts: e2e, TTFT, and per decode step its time and parts."""
    _sync(engine.device)
    start = now(engine.device)
    marks = [(0.0, *comm.snapshot(), *clock.snapshot())]
    for _ in engine.steps(prompts, n, stop_at_eos=False):
        marks.append((now(engine.device) - start, *comm.snapshot(), *clock.snapshot()))
    # per step (the prefill first): seconds, collective calls, seconds in collectives, bytes, layers s, head s
    diff = np.diff(np.array(marks), axis=0)
    decode = diff[1:]
    return {
        "e2e_s": marks[-1][0],
        "ttft_s": marks[1][0],
        "step_s": decode[:, 0].tolist(),
        "comm_s": decode[:, 2].tolist(),
        "comm_calls": decode[:, 1].tolist(),
        "comm_bytes": decode[:, 3].tolist(),
        "layers_s": decode[:, 4].tolist(),
        "head_s": decode[:, 5].tolist(),
        "prefill_comm_s": float(diff[0, 2]),
        "rows": len(prompts),
    }


def measure_speed(cfg: Config, engine: Engine, comm: Comm, clock: LayerClock, prompts: list[list[int]]) -> dict[str, Any]:
    """Batch-1 inferences (latency, TTFT, TPOT, steps) and tokens/s at each batch size, within the time cap."""
    s, n = cfg.sharding, cfg.workload.max_new_tokens
    deadline = time.perf_counter() + s.max_duration_s
    out: dict[str, Any] = {"capped": False}
    for i, b in enumerate(s.batch_sizes):
        batch = [prompts[j % len(prompts)] for j in range(b)]
        for _ in range(s.warmup):
            engine.generate_batch(batch, 2, stop_at_eos=False)
        runs = []
        share = (deadline - time.perf_counter()) / (len(s.batch_sizes) - i)
        until = time.perf_counter() + share
        while len(runs) < s.repeats:
            runs.append(timed_inference(engine, comm, clock, batch, n))
            # every rank must run the same number of repeats: rank 0's clock decides for all
            stop = torch.tensor([float(time.perf_counter() > until)], device=engine.device)  # NCCL sends device tensors
            if dist.get_world_size() > 1:
                dist.broadcast(stop, 0)
            if stop.item() and len(runs) < s.repeats:
                out["capped"] = True
                break
        out[f"batch{b}"] = runs
    return out


def allreduce_bench(comm: Comm, hidden: int, dtype: torch.dtype, iters: int) -> list[dict[str, float]]:
    """Median seconds per all-reduce at a token's, a batch of 8's and larger payloads, ranks otherwise idle."""
    rows = []
    for numel in (hidden, 8 * hidden, 2**14, 2**18):
        x = torch.ones(numel, dtype=dtype, device=comm.device)
        times = []
        for _ in range(iters):
            _sync(comm.device)
            t0 = now(comm.device)
            dist.all_reduce(x)
            times.append(now(comm.device) - t0)
        rows.append({"bytes": numel * x.element_size(), "seconds": float(np.median(times))})
    return rows


def _exactness(model: torch.nn.Module, prompts: list[list[int]], n: int, device: torch.device):
    return [greedy_logits(model, p, n, device) for p in prompts]


def run_rank(cfg: Config, out_dir: Path, mode: str, reference: Path | None) -> dict[str, Any] | None:
    """This rank's whole benchmark; rank 0 returns the result, the others None."""
    s = cfg.sharding
    rank, world, device = shard_launch.init_process_group(resolve_device(cfg.hardware.device).type, s.collective_timeout_s)
    threads = pin_threads(s.threads_per_rank or max(1, cfg.hardware.threads // world))
    model_dir = cfg.resolve(cfg.model.path)
    tokenizer = load_tokenizer(model_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    from transformers import AutoConfig

    plan = Plan.build(
        AutoConfig.from_pretrained(model_dir, local_files_only=True), world, rank, uneven_heads=s.uneven_heads, embedding=s.embedding
    )
    comm = Comm.current(device)
    gc.collect()
    before = private_mb()
    started = time.perf_counter()
    with PeakPrivate() as peak:
        model, report = load_sharded(model_dir, plan, comm, device=device, dtype=s.dtype)
    mine: dict[str, Any] = {
        "rank": rank,
        "threads": threads,
        "load_s": time.perf_counter() - started,
        "weight_bytes": weight_bytes(model),
        "weight_private_mb": private_mb() - before,
        "load_peak_private_mb": peak.peak - before,
        "private_mb": private_mb(),
        "bytes_read": report.bytes_read,
        "checkpoint_bytes": report.checkpoint_bytes,
        "q_heads": plan.q_heads[1] - plan.q_heads[0],
        "kv_heads": plan.kv_heads[1] - plan.kv_heads[0],
    }
    if device.type == "cuda":  # on a GPU the weights live in device memory: the allocator's count is the figure
        mine |= {
            "gpu_weight_mb": torch.cuda.memory_allocated(device) / 2**20,
            "gpu_load_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20,
        }
    (out_dir / f"ready-rank{rank}").touch()
    log.info("rank %d/%d loaded %.0f MB of %.0f MB", rank, world, report.bytes_read / 1e6, report.checkpoint_bytes / 1e6)
    n_prompts = max(s.exact_prompts, max(s.batch_sizes))
    prompts = [
        list(p.input_ids)
        for p in workload.summary_prompts(
            tokenizer, cfg.corpus_dir, n_prompts, cfg.workload.prompt_tokens, cfg.workload.passage_words, cfg.workload.seed
        )
    ]
    exact = _exactness(model, prompts[: s.exact_prompts], s.exact_new_tokens, device)
    result: dict[str, Any] = {
        "world": world,
        "mode": mode,
        "embedding": plan.embedding,
        "imbalance": plan.imbalance(),
        "backend": dist.get_backend(),
        "device": str(device),
        "dtype": s.dtype,
        "allreduce_bytes_per_token_from_shapes": allreduce_bytes_per_token(model.config, plan, s.dtype),
        "layers": model.config.num_hidden_layers,
        "hidden": model.config.hidden_size,
    }
    if mode == "full":
        clock = LayerClock(model, device)
        result["speed"] = measure_speed(cfg, Engine(model, tokenizer, device), comm, clock, prompts)
        if world > 1:
            result["allreduce"] = allreduce_bench(comm, model.config.hidden_size, model.lm_head.weight.dtype, s.allreduce_iters)
    ranks: list[Any] = [None] * world
    dist.all_gather_object(ranks, {**mine, "tokens": [t for t, _ in exact]})
    result["ranks"] = ranks
    result["ranks_agree"] = all(r["tokens"] == ranks[0]["tokens"] for r in ranks)
    if rank == 0:
        result |= _check_exactness(cfg, model_dir, exact, prompts, device, out_dir, reference)
    dist.barrier()
    dist.destroy_process_group()
    return result if rank == 0 else None


def _check_exactness(
    cfg: Config, model_dir: Path, exact: list, prompts: list[list[int]], device: torch.device, out_dir: Path, reference: Path | None
) -> dict[str, Any]:
    """Compare with the reference file; without one (the 1-rank run), build it from the plain model and write it."""
    s = cfg.sharding
    if reference is not None:
        return {"exactness": compare(exact, torch.load(reference))}
    plain, _ = load_causal_lm(model_dir, device, s.dtype)
    ref = _exactness(plain, prompts[: s.exact_prompts], s.exact_new_tokens, device)
    torch.save(ref, out_dir / REFERENCE)
    return {"exactness": compare(exact, ref), "reference": str(out_dir / REFERENCE)}


def main(cfg: Config, out_dir: Path, mode: str = "full", reference: Path | None = None) -> int:
    """The torchrun entry point's body: rank 0 writes result.json into `out_dir`."""
    import json

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{os.environ.get('RANK', '?')} %(message)s")
    out_dir.mkdir(parents=True, exist_ok=True)
    result = run_rank(cfg, out_dir, mode, reference)
    if result is not None:
        for r in result["ranks"]:
            r.pop("tokens")
        result["load_avg"] = list(os.getloadavg())
        (out_dir / shard_launch.RESULT).write_text(json.dumps(result))
    return 0
