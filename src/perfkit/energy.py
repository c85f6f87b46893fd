"""Energy used over a measured window, from the counters the machine exposes, or why there is none.

Two counters, read at the window's start and end, every one found summed:
- NVML's total energy per GPU (`nvmlDeviceGetTotalEnergyConsumption`, millijoules since the driver
  loaded; Volta and later): the accelerator alone, not the host;
- RAPL through Linux's powercap (`/sys/class/powercap/intel-rapl:N/energy_uj`, one per CPU package,
  also on AMD Zen): the whole package, every process on it (the load generator too), not DRAM. It is
  readable by root only since Linux 5.10 (a side channel), and absent in most VMs.

Where neither can be read the figure is "not available" with the reason (never a zero), so a joules
per token figure exists only where a counter measured it. The cost per 1k requests (`costs`) stands
beside it either way: it prices the machine's time, not its power.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

POWERCAP = Path("/sys/class/powercap")
NOT_AVAILABLE = "not available"


@dataclass(frozen=True)
class Energy:
    """Joules over a window and the counters they come from; `joules` None with `why` where nothing was readable."""

    joules: float | None
    sources: tuple[str, ...] = ()
    why: str = ""

    def per(self, count: float) -> float | None:
        return self.joules / count if self.joules is not None and count > 0 else None

    def as_metrics(self, output_tokens: int) -> dict[str, Any]:
        if self.joules is None:
            return {"energy": f"{NOT_AVAILABLE}: {self.why}"}
        return {"energy_j": self.joules, "energy_j_per_output_token": self.per(output_tokens), "energy_sources": ", ".join(self.sources)}

    def text(self, output_tokens: int) -> str:
        if self.joules is None:
            return f"Energy: {NOT_AVAILABLE} ({self.why})."
        per = self.per(output_tokens)
        each = f", {per:.3g} J per output token" if per is not None else ""
        return f"Energy: {self.joules:.0f} J over the run ({', '.join(self.sources)}){each}."


def _rapl_files(root: Path) -> list[Path]:
    """The package-level counters (`intel-rapl:N`, not their `:N:M` sub-zones)."""
    return sorted(p / "energy_uj" for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)


def _read_rapl(root: Path) -> tuple[dict[str, tuple[int, int]], str]:
    """{zone: (microjoules, wrap range)} of every package counter, and why there are none."""
    files = _rapl_files(root)
    if not files:
        return {}, f"no RAPL counters under {root} (a VM, or a kernel without the powercap driver)"
    found, denied = {}, []
    for f in files:
        try:
            value = int(f.read_text())
        except PermissionError:
            denied.append(str(f))
            continue
        except (OSError, ValueError):
            continue
        wrap_file = f.with_name("max_energy_range_uj")
        wrap = int(wrap_file.read_text()) if wrap_file.is_file() else 0
        name_file = f.with_name("name")
        name = name_file.read_text().strip() if name_file.is_file() else f.parent.name
        found[f"rapl:{name}"] = (value, wrap)
    if not found and denied:
        return {}, f"RAPL counters are readable by root only since Linux 5.10 ({denied[0]})"
    return found, "" if found else f"RAPL counters under {root} could not be read"


def _read_nvml() -> tuple[dict[str, int], str]:
    """{gpu: millijoules} of every GPU whose driver reports total energy, and why there are none."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # no driver, no GPU: the usual case on a CPU machine
        return {}, f"no NVML ({type(exc).__name__})"
    try:
        out = {}
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            try:
                out[f"nvml:gpu{i}"] = int(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))
            except pynvml.NVMLError:
                continue
        return out, "" if out else "no GPU reports its total energy through NVML"
    finally:
        pynvml.nvmlShutdown()


class EnergyMeter:
    """`with EnergyMeter() as meter: ...` then `meter.energy`: the joules every readable counter counted inside."""

    def __init__(self, powercap: Path = POWERCAP) -> None:
        self.powercap = powercap
        self.energy = Energy(None, why="not measured yet")
        self._start: tuple[dict[str, tuple[int, int]], dict[str, int]] = ({}, {})

    def __enter__(self) -> EnergyMeter:
        rapl, self._rapl_why = _read_rapl(self.powercap)
        nvml, self._nvml_why = _read_nvml()
        self._start = (rapl, nvml)
        return self

    def __exit__(self, *exc: object) -> None:
        rapl_end, _ = _read_rapl(self.powercap)
        nvml_end, _ = _read_nvml()
        rapl_start, nvml_start = self._start
        joules: dict[str, float] = {}
        for zone, (begin, wrap) in rapl_start.items():
            if zone in rapl_end:
                delta = rapl_end[zone][0] - begin
                joules[zone] = (delta + wrap if delta < 0 and wrap else delta) / 1e6  # the counter wrapped once
        for gpu, begin in nvml_start.items():
            if gpu in nvml_end:
                joules[gpu] = (nvml_end[gpu] - begin) / 1e3
        if joules:
            self.energy = Energy(sum(joules.values()), tuple(joules))
        else:
            self.energy = Energy(None, why=f"{self._rapl_why}; {self._nvml_why}")
