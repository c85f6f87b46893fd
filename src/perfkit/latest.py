"""The README's "latest results" table, generated from the committed metrics.json files, never typed in.

`table(experiments)` writes one row per stage: its verdict line, where and when it was measured and
the stage's wall time. `perfkit latest --write README.md` replaces the block between the two markers
below; a test fails when the README's block differs from what the committed results give.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from perfkit import stages

START, END = "<!-- latest-results:start -->", "<!-- latest-results:end -->"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(experiments: Path) -> str:
    """Stage | what it found | measured on | wall time, in pipeline order, for the stages that have run."""
    lines = ["| stage | what it found (its verdict) | measured on | wall time |", "|---|---|---|---:|"]
    for name, spec in stages.registry().items():
        path = experiments / name / "metrics.json"
        if not spec.notebook or not path.is_file():
            continue
        summary = json.loads(path.read_text())["summary"]
        prov = summary.get("provenance") or {}
        where = f"{prov.get('cpu_model', '?')}, {str(prov.get('started_at', '?'))[:10]}, commit {str(prov.get('git_commit', '?'))[:7]}"
        wall = f"{float(prov['wall_s']) / 60:.1f} min" if "wall_s" in prov else "—"
        lines.append(f"| {name} | {_cell(summary.get('verdict', '—'))} | {where} | {wall} |")
    return "\n".join(lines)


def block(experiments: Path) -> str:
    return f"{START}\n{table(experiments)}\n{END}"


def rewrite(readme: Path, experiments: Path) -> bool:
    """Replace the README's block with the committed results' table; returns whether the text changed."""
    text = readme.read_text()
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme}: no {START} ... {END} block to fill")
    new = pattern.sub(lambda _m: block(experiments), text)
    readme.write_text(new)
    return new != text
