"""Device choice, thread pinning, environment capture, a background resource sampler and a CPU-seconds clock.

Timing on a GPU is asynchronous: a kernel launch returns before the kernel runs, so a clock read
without `torch.cuda.synchronize()` measures the launch, not the work. `now(device)` is the one
clock every perfkit measurement reads; it synchronizes first on CUDA.

On a small CPU box torch's default of one intra-op thread per core, plus any other busy process,
oversubscribes the cores and latency collapses by several times. `pin_threads` fixes the count
from params.yaml and every run records it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch

from perfkit.processes import busy_cpu_s
from perfkit.provenance import cpu_flags, cpu_model, has_native_bf16


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when a GPU is visible, else CPU; `cuda` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("hardware.device = 'cuda' but no CUDA GPU is visible; allowed: auto, cpu, cuda")
    return torch.device(name)


def pin_threads(threads: int) -> int:
    """Fix torch's intra-op (and inter-op, where still settable) threads; returns the count in force."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first parallel op; harmless if already set
        pass
    return torch.get_num_threads()


def memory_read_gb_s(size_mb: int = 1024, repeats: int = 5) -> float:
    """This machine's memory read rate as torch's threads see it: the best of `repeats` sums over a buffer far larger
    than any cache (a decode step at batch 1 reads every weight once: this rate over the weights' bytes is its floor)."""
    buffer = torch.ones(size_mb * 2**20 // 4)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - started)
    return buffer.numel() * 4 / best / 1e9


def now(device: torch.device | str | None = None) -> float:
    """perf_counter seconds, after `torch.cuda.synchronize()` when the device is CUDA."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def native_bf16() -> bool:
    """Whether the CPU has bf16 instructions (AVX512-BF16 or AMX-BF16); without them bf16 matmuls are emulated."""
    return has_native_bf16(cpu_flags())


def _git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _nvml() -> Any | None:
    """The pynvml module (from nvidia-ml-py) once initialised, or None where there is no NVIDIA driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # no driver, no library, no GPU: telemetry is simply absent
        return None


def gpu_info() -> dict[str, Any]:
    nvml = _nvml()
    if nvml is None or nvml.nvmlDeviceGetCount() == 0:
        return {}
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    name = nvml.nvmlDeviceGetName(handle)
    return {
        "gpu_name": name.decode() if isinstance(name, bytes) else name,
        "gpu_count": nvml.nvmlDeviceGetCount(),
        "gpu_driver": str(nvml.nvmlSystemGetDriverVersion()),
        "gpu_mem_total_mb": nvml.nvmlDeviceGetMemoryInfo(handle).total / 2**20,
    }


def gpu_clocks() -> dict[str, float]:
    """GPU 0's SM and memory clocks now and at most (MHz): an idle GPU runs at a fraction of its clock."""
    nvml = _nvml()
    if nvml is None or nvml.nvmlDeviceGetCount() == 0:
        return {}
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    return {
        "sm_clock_mhz": nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM),
        "sm_clock_max_mhz": nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_SM),
        "mem_clock_mhz": nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM),
    }


def environment(root: Path | None = None) -> dict[str, Any]:
    """What a number depends on: versions, CPU, threads, GPU, commit. Logged with every run."""
    import transformers

    import perfkit

    env: dict[str, Any] = {
        "perfkit_version": perfkit.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_native_bf16": native_bf16(),
        "mem_total_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cuda_available": torch.cuda.is_available(),
        **gpu_info(),
    }
    if root is not None:
        env["git_commit"] = _git_commit(root)
    return env


@dataclass
class ResourceUsage:
    """Peaks and means over a sampled interval. GPU fields stay None where no NVIDIA GPU is visible."""

    peak_rss_mb: float = 0.0
    cpu_util_pct: float = 0.0
    peak_cpu_util_pct: float = 0.0
    peak_gpu_mem_mb: float | None = None
    gpu_util_pct: float | None = None
    samples: int = 0
    cpu_util_series: list[float] = field(default_factory=list, repr=False)

    def as_metrics(self) -> dict[str, float]:
        keys = ("peak_rss_mb", "cpu_util_pct", "peak_cpu_util_pct", "peak_gpu_mem_mb", "gpu_util_pct")
        return {k: v for k, v in asdict(self).items() if k in keys and v is not None}


class ResourceSampler:
    """Samples RSS and CPU% of a process tree (and GPU memory/utilization via NVML) in a thread.

    CPU% is summed over the process and its children, so 200% means both cores of a 2-core box.
    Use as a context manager; `usage` holds the result after exit.
    """

    def __init__(self, pid: int | None = None, interval_s: float = 0.1, children: bool = True) -> None:
        self.process = psutil.Process(pid or os.getpid())
        self.interval_s = interval_s
        self.children = children
        self.usage = ResourceUsage()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="perfkit-sampler", daemon=True)
        self._nvml = _nvml()

    def _tree(self) -> list[psutil.Process]:
        procs = [self.process]
        if self.children:
            try:
                procs += self.process.children(recursive=True)
            except psutil.Error:
                pass
        return procs

    def _sample(self) -> None:
        rss, cpu = 0.0, 0.0
        for proc in self._tree():
            try:
                rss += proc.memory_info().rss
                cpu += proc.cpu_percent(None)
            except psutil.Error:
                continue
        u = self.usage
        u.peak_rss_mb = max(u.peak_rss_mb, rss / 2**20)
        u.cpu_util_series.append(cpu)
        u.samples += 1
        if self._nvml is not None and self._nvml.nvmlDeviceGetCount() > 0:
            handle = self._nvml.nvmlDeviceGetHandleByIndex(0)
            mem = self._nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
            util = float(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            u.peak_gpu_mem_mb = max(u.peak_gpu_mem_mb or 0.0, mem)
            n = u.samples
            u.gpu_util_pct = util if u.gpu_util_pct is None else u.gpu_util_pct + (util - u.gpu_util_pct) / n

    def _run(self) -> None:
        for proc in self._tree():  # the first cpu_percent call of a process only primes it
            try:
                proc.cpu_percent(None)
            except psutil.Error:
                pass
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> ResourceSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        series = self.usage.cpu_util_series[:-1] or self.usage.cpu_util_series
        self.usage.cpu_util_pct = sum(series) / len(series)
        self.usage.peak_cpu_util_pct = max(series)


def tree_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a process and its descendants have used so far, reaped children included.

    A child that exits moves its time into its parent's `children_*` fields, so the sum stays
    continuous while the parent lives. None for a process that is gone.
    """
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def usable_cores() -> int:
    """The cores this process may run on (its affinity), which is what its children share."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class CpuClock:
    """Cumulative CPU seconds of named process trees and of the whole machine, read every `interval_s`.

    Afterwards `used(t0, t1)` gives each tree's CPU seconds between two epoch times, interpolated
    between readings, so a window fixed only after the fact (the first and last request of a load)
    can still be measured.
    """

    def __init__(self, pids: dict[str, int], interval_s: float = 0.25) -> None:
        self.pids = dict(pids)
        self.interval_s = interval_s
        self.readings: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="perfkit-cpu-clock", daemon=True)

    def read(self) -> None:
        """One reading; a tree whose root is gone keeps its last value (what it used stays used)."""
        last = self.readings[-1][1] if self.readings else {}
        values = {"machine": busy_cpu_s()}  # perfkit.processes: the pre-measurement check reads it too
        for name, pid in self.pids.items():
            cpu = tree_cpu_s(pid)
            values[name] = last.get(name, 0.0) if cpu is None else cpu
        self.readings.append((time.time(), values))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.read()

    def __enter__(self) -> CpuClock:
        self.read()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.read()

    def at(self, t: float) -> dict[str, float]:
        """Each counter at epoch time `t` (clamped to the first and last reading)."""
        if not self.readings:
            raise ValueError("CpuClock.at: no readings (use it as a context manager)")
        before = [r for r in self.readings if r[0] <= t] or self.readings[:1]
        after = [r for r in self.readings if r[0] >= t] or self.readings[-1:]
        (t0, v0), (t1, v1) = before[-1], after[0]
        w = 0.0 if t1 <= t0 else (t - t0) / (t1 - t0)
        return {k: v0[k] + w * (v1[k] - v0[k]) for k in v0}

    def used(self, t0: float, t1: float) -> dict[str, float]:
        """CPU seconds each counter (the named trees and "machine") used between epoch times `t0` and `t1`."""
        a, b = self.at(t0), self.at(t1)
        return {k: max(0.0, b[k] - a[k]) for k in a}
