"""Where a result came from: enough to tell, months later, whether two figures can be compared.

Every stage result carries `summary.provenance` (metrics.json) and the same entries as `prov.*` tags
on its MLflow runs: the git commit and whether the tree had uncommitted changes, perfkit's and the
stage's version, the sha256 of the resolved config, of the corpus and of data/claims.yaml, a digest of
the model files (the md5 dvc.lock records for them where it has one: hashing half a gigabyte again
costs ~5 s; else their sha256), the versions of every package a stage times, the CPU model and the
instruction-set flags that decide kernel choice, the thread count, the 1-minute load average at
the start and the end, the cores other processes kept busy just before the stage measured
(`busy_cores_start`, from /proc/stat over 2 s), and when the stage started and how long it ran
(`wall_s`: the stage budgets in the README are these figures). A stage that starts on a busy
machine says so (`notes`). Busy is judged on `busy_cores_start`, not on the load average: the
1-minute average lags by about a minute, so in a `dvc repro` every stage after the first would
read ~1.5 from its predecessor's work on an idle machine. The stage runner samples it in its
preflight and hands it to the kernel (`PERFKIT_BUSY_CORES`); a notebook run by hand samples it here.

`begin(cfg, spec)` takes everything but the end load and the wall time; `finish(prov)` adds them.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from perfkit.model_shapes import is_random

if TYPE_CHECKING:
    from perfkit.config import Config
    from perfkit.stages.base import StageSpec

# Every package whose code is inside a timed region of some stage.
TIMED_PACKAGES = (
    "torch",
    "transformers",
    "torchao",
    "optimum-quanto",
    "grpcio",
    "protobuf",
    "brotli",
    "zstandard",
    "locust",
    "uvicorn",
    "fastapi",
    "redis",
)
# CPU flags that change which kernels torch and the codecs pick (and so the figures).
CPU_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "sha_ni",
    "aes",
)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # bf16 matmuls run natively, not emulated
# A quiet start: other processes keep less than this many cores busy (2 s of /proc/stat) before measuring.
QUIET_BUSY_CORES = 0.5
BUSY_CORES_ENV = "PERFKIT_BUSY_CORES"  # set by the stage runner from its preflight sample


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


# What the pipeline itself writes: the earlier stages of the same `dvc repro` change these, not the code.
PIPELINE_OUTPUTS = ("experiments", "dvc.lock", "mlflow")


def git_state(root: Path) -> tuple[str, bool | None]:
    """(commit, dirty): dirty means tracked files other than the pipeline's outputs differ from the commit;
    (unknown, None) outside git. Without the exclusion every stage after the first of a `dvc repro` would
    read as run on uncommitted code: its predecessors rewrote their metrics and dvc.lock."""
    excluded = [f":(exclude){path}" for path in PIPELINE_OUTPUTS]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *excluded],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    return commit, bool(status.strip())


def sha256_files(paths: Iterable[Path], base: Path) -> str:
    """sha256 over (relative path, bytes) of each file, in sorted order: a folder's digest, independent of where it lies."""
    h = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.relative_to(base).as_posix()):
        h.update(path.relative_to(base).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def sha256_path(path: Path) -> str:
    """A file's sha256, or a folder's (every file under it); "absent" when it does not exist."""
    if path.is_file():
        return sha256_files([path], path.parent)
    if path.is_dir():
        return sha256_files([p for p in path.rglob("*") if p.is_file()], path)
    return "absent"


def dvc_lock_md5(root: Path, rel: str) -> str | None:
    """The md5 dvc.lock records for `rel` (an output or a dependency of any stage), if any."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return None
    try:
        data = yaml.safe_load(lock.read_text()) or {}
    except yaml.YAMLError:
        return None
    want = rel.rstrip("/")
    for stage in (data.get("stages") or {}).values():
        for entry in list(stage.get("outs") or []) + list(stage.get("deps") or []):
            if str(entry.get("path", "")).rstrip("/") == want and entry.get("md5"):
                return str(entry["md5"])
    return None


def model_digest(root: Path, model_path: Path) -> str:
    """`md5:<dvc.lock's>` when dvc.lock records this model folder, else `sha256:<of its files>`."""
    try:
        rel = model_path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        rel = None
    if rel is None:  # a symlinked data/models: compare the path as configured
        rel = os.path.relpath(model_path, root)
    md5 = dvc_lock_md5(root, rel)
    return f"md5:{md5}" if md5 else f"sha256:{sha256_path(model_path)}"


def package_versions(names: Iterable[str] = TIMED_PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return " ".join(f for f in CPU_FLAGS if f in have)
    except OSError:
        pass
    return "unknown"


def has_native_bf16(flags: str) -> bool:
    """Whether CPU flags (as `cpu_flags` gives them) include bf16 instructions; without them bf16 matmuls are emulated."""
    return any(flag in flags.split() for flag in BF16_FLAGS)


def begin(cfg: Config, spec: StageSpec) -> dict[str, Any]:
    """Everything but the end load, taken before the stage runs."""
    from perfkit import __version__

    commit, dirty = git_state(cfg.root)
    model_path = cfg.resolve(cfg.model.path)
    prov: dict[str, Any] = {
        "git_commit": commit,
        "git_dirty": dirty if dirty is not None else "unknown",
        "perfkit_version": __version__,
        "stage_version": spec.version,
        "budget_s": spec.budget_s,
        "config_sha256": cfg.sha256(),
        "corpus_sha256": sha256_path(cfg.corpus_dir),
        "model_digest": model_digest(cfg.root, Path(model_path)),
        "random_weights": is_random(model_path),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count() or 0,
        "threads": cfg.hardware.threads,
        "engine": engine_label(cfg.serving.kv_cache, cfg.serving.compile, cfg.hardware.prepack and spec.prepacks),
        "load_avg_1m_start": load_average(),
        "busy_cores_start": busy_cores_start(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "smoke": cfg.smoke,
        "profile": cfg.profile or "none",
    }
    prov |= {f"pkg_{name.replace('-', '_')}": version for name, version in package_versions().items()}
    return prov


PREPACKED = ", linear weights prepacked for oneDNN on a CPU"
FUSED = ", q/k/v and gate/up fused"  # a layer's sibling projections, one packed product each (`prepack.FusedProjections`)


def engine_label(kv_cache: str, compile_mode: str, prepack: bool = False) -> str:
    """Which of the reference engine's forms a stage's figures come from. Only servers follow `serving.kv_cache` and
    `serving.compile`; offline timings run the eager dynamic-cache engine (with `hardware.prepack`, its linear weights
    prepacked on a CPU), quality figures the eager engine as loaded."""
    eager = "eager, dynamic KV cache" + (PREPACKED + FUSED if prepack else "")
    if (kv_cache, compile_mode) == ("dynamic", "off"):
        return eager
    return f"served: {engine_form(kv_cache, compile_mode, prepack)}; offline: {eager}"


def engine_form(kv_cache: str, compile_mode: str, prepack: bool = False) -> str:
    """The reference engine's KV cache and decode step in words, e.g. "slots KV cache, torch.compile default"."""
    if compile_mode != "off":  # inductor's freezing prepacks the weights by itself
        return f"{kv_cache} KV cache, torch.compile {compile_mode}"
    return f"{kv_cache} KV cache, eager" + (PREPACKED + FUSED if prepack else "")


def finish(prov: Mapping[str, Any]) -> dict[str, Any]:
    started = datetime.fromisoformat(str(prov["started_at"])).timestamp()
    return dict(prov) | {"load_avg_1m_end": load_average(), "wall_s": round(time.time() - started, 1)}


def busy_cores_start() -> float:
    """Cores busy just before the stage: the runner's preflight sample, else a fresh one."""
    from perfkit.processes import busy_cores

    given = os.environ.get(BUSY_CORES_ENV)
    return round(float(given) if given else busy_cores(), 2)


def started_busy(prov: Mapping[str, Any] | None) -> bool:
    if not prov:
        return False
    if "busy_cores_start" in prov:
        return float(prov["busy_cores_start"]) >= QUIET_BUSY_CORES
    return float(prov.get("load_avg_1m_start", 0.0)) >= QUIET_BUSY_CORES  # results from before the sample was kept


def notes(prov: Mapping[str, Any] | None) -> list[str]:
    """Sentences about the conditions of the run: a busy start, random weights, over its time budget, uncommitted code."""
    if not prov:
        return []
    out = []
    if started_busy(prov):
        end = prov.get("load_avg_1m_end")
        busy = prov.get("busy_cores_start")
        out.append(
            "This run started on a busy machine: "
            + (
                f"other processes kept {busy:.2f} of {prov.get('cpu_count', '?')} cores busy just before it measured "
                f"(quiet: below {QUIET_BUSY_CORES:g}); "
                if busy is not None
                else ""
            )
            + f"1-minute load average {prov['load_avg_1m_start']:.2f} at the start"
            + (f" and {end:.2f} at the end" if isinstance(end, int | float) else "")
            + ". Its timings carry other processes' work, so compare them with a quiet run's before drawing conclusions."
        )
    if prov.get("random_weights") is True:
        out.append(
            "The model has seeded random weights (`perfkit model random`): its speed, memory and batching are its "
            "shape's, its quality figures are not meaningful."
        )
    budget, wall = prov.get("budget_s"), prov.get("wall_s")
    if isinstance(budget, int | float) and isinstance(wall, int | float) and wall > budget and not prov.get("smoke"):
        out.append(f"This stage ran {wall:.0f} s, over its {budget:.0f} s budget on the reference 2-core machine.")
    if prov.get("git_dirty") is True:
        out.append(f"The code had uncommitted changes (commit {str(prov.get('git_commit', ''))[:10]} plus edits).")
    return out


def tags(prov: Mapping[str, Any]) -> dict[str, str]:
    """MLflow tags: `prov.<key>`."""
    return {f"prov.{k}": str(v) for k, v in prov.items()}
