"""`perfkit gpu-check`: every registered stage's smoke path on this machine's device, each with a time cap.

Each stage runs in its own process (`perfkit.gpu.stage_child`) under a scratch root (`--work`): its
params.yaml is the checkout's with the model, the device and (random weights) a pinned optimized stack
set; the corpus and claims are linked; the stages write their results under its smoke root, so the later stages
(optimized, capacity, report) read the earlier ones and the committed experiments stay untouched. MLflow
and notebooks are left out (`PERFKIT_TRACKING=off`): a GPU machine may have neither. On CUDA the
`gpu-smoke` profile applies (a warm-up of >= 2 s, GPU batch widths); `--device cpu` is the dry run with
the plain smoke sizes, which CI runs on the tiny model: a stage added later without a working smoke path
fails it. A stage ran (its verdict and headline figures kept), failed (the error), or was skipped (the
reason: the check's budget ran out first). The JSON also records the device: name, driver, SM clocks
before and after, torch, CUDA, the TF32 setting.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from perfkit import config, model_shapes, processes, results, stages
from perfkit.errors import PerfkitError

# Summary keys whose figures judge output quality: on random weights they are reported as not meaningful.
QUALITY_WORDS = ("top1", "agreement", "rouge", "accuracy", "perplexity", "kept_pct", "nll", "similar")
LINKED_DATA = ("data/corpus", "data/claims.yaml")


@dataclass(frozen=True)
class StageCheck:
    stage: str
    status: Literal["ran", "failed", "skipped"]
    wall_s: float = 0.0
    reason: str = ""
    verdict: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


def stage_names(only: list[str] | None = None) -> list[str]:
    """The stages the check runs, in pipeline order: every one with a notebook, or those `--only` names."""
    names = [name for name, spec in stages.registry().items() if spec.notebook]
    unknown = [n for n in only or () if n not in names]
    if unknown:
        raise PerfkitError(f"--only {', '.join(unknown)}: no such stage; stages: {', '.join(names)}")
    return [n for n in names if not only or n in only]


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *path, leaf = dotted.split(".")
    for part in path:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def scratch_root(repo: Path, work: Path, sets: dict[str, Any]) -> Path:
    """`work` as a perfkit root: the checkout's params.yaml with `sets` ({dotted key: value}), data linked."""
    work.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in sets.items():
        _set(params, key, value)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for rel in LINKED_DATA:
        link = work / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink() and not link.exists():
            link.symlink_to((repo / rel).resolve())
    return work


def device_info(device: str) -> dict[str, Any]:
    """What the check ran on, read without starting a CUDA context in this process."""
    import platform

    import torch

    from perfkit.hardware import gpu_clocks, gpu_info
    from perfkit.provenance import cpu_model

    return {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        **gpu_info(),
        **gpu_clocks(),
    }


def headline(summary: dict[str, Any], random_weights: bool) -> dict[str, Any]:
    """The summary's scalar figures; quality figures of random weights replaced by why they mean nothing."""
    out: dict[str, Any] = {}
    for key, value in summary.items():
        if key in ("provenance", "claims", "verdict") or isinstance(value, dict | list):
            continue
        quality = any(word in key for word in QUALITY_WORDS)
        out[key] = model_shapes.RANDOM_QUALITY if random_weights and quality and value is not None else value
    return out


def run_one(root: Path, stage: str, cap_s: float, env: dict[str, str], random_weights: bool) -> StageCheck:
    """One stage in its own process, killed with everything it started after `cap_s`."""
    log_path = root / "logs" / f"{stage}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    metrics = config.experiments_dir(root, smoke=True) / stage / "metrics.json"
    metrics.unlink(missing_ok=True)
    (metrics.parent / results.RESULT_FILE).unlink(missing_ok=True)
    started = time.perf_counter()
    with log_path.open("w") as log:
        proc = processes.spawn([sys.executable, "-m", "perfkit.gpu.stage_child", stage], cwd=root, env=env, stdout=log, stderr=log)
        try:
            proc.wait(cap_s)
        except Exception:  # TimeoutExpired: the stage and what it started are stopped
            processes.stop(proc, grace_s=5)
            return StageCheck(stage, "failed", time.perf_counter() - started, f"ran past its cap of {cap_s:.0f} s")
    wall = time.perf_counter() - started
    lines = log_path.read_text(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not metrics.is_file():
        return StageCheck(stage, "failed", wall, (lines[-1] if lines else f"exit code {proc.returncode}")[:500])
    summary = json.loads(metrics.read_text())["summary"]
    return StageCheck(stage, "ran", wall, verdict=str(summary.get("verdict", "")), figures=headline(summary, random_weights))


def check(
    repo: Path,
    *,
    device: str,
    model: Path,
    embedding: Path | None,
    work: Path,
    only: list[str] | None = None,
    cap_s: float = 120.0,
    budget_s: float = 360.0,
    profile: str | None = None,
) -> dict[str, Any]:
    """Run the stages' smoke paths within `budget_s` in all (`cap_s` each at most); returns the report.

    `profile` is the params.yaml profile the stages get (default `gpu-smoke` on CUDA, none on the CPU): a CPU dry
    run with `gpu-smoke` checks the GPU's settings before GPU time is spent."""
    names = stage_names(only)
    random_weights = model_shapes.is_random(model)
    sets: dict[str, Any] = {"hardware.device": device, "model.path": str(model.resolve())}
    if embedding is not None:
        sets["model.embedding_path"] = str(embedding.resolve())
    if random_weights:  # a quality gate on random weights is arbitrary: the GPU's stack is pinned
        sets["optimized.pinned"] = {"scheduler": "dynamic", "max_batch_size": 8, "dtype": "bfloat16"}
    root = scratch_root(repo, work, sets)
    if not only:  # a whole check starts clean: later stages must not read an earlier check's results
        shutil.rmtree(config.experiments_dir(root, smoke=True), ignore_errors=True)
    env = os.environ | {
        "PERFKIT_ROOT": str(root),
        "PERFKIT_TRACKING": "off",
        "PYTHONUNBUFFERED": "1",
        "PERFKIT_PROFILE": profile or ("gpu-smoke" if device == "cuda" else "none"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.pop(processes.RUN_ID_ENV, None)
    report: dict[str, Any] = {
        "device": device_info(device),
        "model": str(model),
        "random_weights": random_weights,
        "profile": env["PERFKIT_PROFILE"],
        "cap_s": cap_s,
        "budget_s": budget_s,
        "stages": [],
    }
    started = time.perf_counter()
    for stage in names:
        left = budget_s - (time.perf_counter() - started)
        if left < 10:
            result = StageCheck(stage, "skipped", reason=f"the check's budget of {budget_s:.0f} s ran out before it")
        else:
            result = run_one(root, stage, min(cap_s, left), env, random_weights)
        report["stages"].append(asdict(result))
        print(json.dumps({k: v for k, v in asdict(result).items() if k != "figures"}), flush=True)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["device_after"] = {k: v for k, v in device_info(device).items() if k.endswith("_mhz")}
    return report
