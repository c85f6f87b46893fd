"""The GPU check's report as one JSON file and a Markdown page beside it (docs/gpu/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict[str, Any]) -> str:
    """The device, then one row per stage: ran / failed with the error / skipped with the reason, and its verdict."""
    dev = report["device"]
    gpu = dev.get("gpu_name", "no GPU")
    lines = [
        f"# perfkit gpu-check on {gpu}",
        "",
        f"Device `{dev['device']}`; driver {dev.get('gpu_driver', '-')}; torch {dev['torch']} (CUDA {dev.get('cuda')}); "
        f"TF32 matmul {dev['tf32_matmul']} (float32 precision `{dev['float32_matmul_precision']}`); "
        f"SM clock {dev.get('sm_clock_mhz', '-')} MHz before, "
        f"{report.get('device_after', {}).get('sm_clock_mhz', '-')} after, {dev.get('sm_clock_max_mhz', '-')} at most; "
        f"{dev['cpu_count']} CPUs ({dev['cpu_model']}).",
        "",
        f"Model `{report['model']}`"
        + (" (random weights: quality figures are not meaningful)" if report["random_weights"] else "")
        + f"; profile `{report['profile']}`; each stage capped at "
        f"{report['cap_s']:.0f} s, {report['budget_s']:.0f} s in all; the check took {report['wall_s']:.0f} s.",
        "",
        "| stage | status | seconds | verdict, or why not |",
        "|---|---|---|---|",
    ]
    for s in report["stages"]:
        lines.append(f"| {s['stage']} | {s['status']} | {s['wall_s']:.0f} | {_cell(s['verdict'] or s['reason'])} |")
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], path: Path) -> tuple[Path, Path]:
    """`path` (JSON) and the same name with .md."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    page = path.with_suffix(".md")
    page.write_text(markdown(report))
    return path, page
