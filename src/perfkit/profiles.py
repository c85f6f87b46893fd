"""Which params.yaml profile a run gets: a GPU needs longer warm-ups, more repeats and wider batches than a CPU.

`profiles: {NAME: {...}}` in params.yaml holds named overrides that `perfkit.config` merges over the
sections (after `smoke:`). `PERFKIT_PROFILE=NAME` picks one (`none`: none); unset, a run on CUDA gets
`gpu` (a smoke run `gpu-smoke`) and a run on the CPU none. Whether CUDA is there is asked of the NVIDIA
driver through NVML and of torch's build (a `+cpu` build never uses a GPU), without importing torch; a
driver too old for torch's CUDA would still read as a GPU.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

PROFILE_ENV = "PERFKIT_PROFILE"  # a profile name, or "none"; unset: `gpu` / `gpu-smoke` on CUDA, else none


@lru_cache(maxsize=1)
def _gpu_count() -> int:
    """GPUs the NVIDIA driver sees (NVML), 0 without a driver, or with a CPU-only build of torch installed."""
    from importlib import metadata

    try:
        if "+cpu" in metadata.version("torch"):  # torch could not use one: `device: auto` resolves to the CPU
            return 0
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:  # no torch, no driver, no library: no GPU
        return 0


def cuda_visible(device: str) -> bool:
    """Whether `hardware.device` resolves to CUDA, asked of the driver (NVML) and torch's build, not of torch itself:
    config imports no torch."""
    if device != "auto":
        return device == "cuda"
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    return _gpu_count() > 0


def profile_name(raw: dict[str, Any], smoke: bool) -> str | None:
    """The profile a run gets: `PERFKIT_PROFILE` (refused later if params.yaml lacks it), else `gpu` (`gpu-smoke`
    for a smoke run) where CUDA is visible and params.yaml has that profile."""
    chosen = os.environ.get(PROFILE_ENV, "").strip()
    if chosen:
        return None if chosen == "none" else chosen
    device = (raw.get("hardware") or {}).get("device", "auto")
    name = "gpu-smoke" if smoke else "gpu"
    return name if name in (raw.get("profiles") or {}) and cuda_visible(str(device)) else None
