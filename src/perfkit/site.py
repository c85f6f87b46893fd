"""The published report: a static site under experiments/report/site/ that needs no network to read.

The report stage writes it from what the stages left in experiments/ (it re-runs nothing):

- `index.html`: the claims table (claimed, measured with its 95% interval, status and why) and its
  chart; the run-to-run table, the figures too wide for the precision target, each stage's time;
  the featured stages shown whole (the optimized stack's before/after tables and ablation
  waterfall, the SLO capacity curve), each other stage's conclusion with a link to its page; and
  where every result came from (commit, when, how long, the load average, the CPU).
- `<stage>.html`: each stage's page, rendered from its saved result (`perfkit.results`: the table,
  every figure, the checks the report judged on its figures, the conclusion), no executed notebook
  needed.

Every page embeds its images; the only links are between the site's own pages. `make report`
serves it on 127.0.0.1 (`python -m http.server`); opening index.html from disk works as well.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perfkit import pages
from perfkit.stages.base import StageResult

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure
    from nbformat import NotebookNode

# Stages whose whole page is repeated on the index: the before/after story.
FEATURED = ("optimized", "capacity")
PROVENANCE_COLUMNS = {
    "started_at": "started (UTC)", "wall_s": "wall time (s)", "load_avg_1m_start": "load at start",
    "load_avg_1m_end": "load at end", "git_commit": "commit", "git_dirty": "uncommitted edits", "smoke": "smoke",
    "threads": "threads", "cpu_model": "CPU", "engine": "engine", "pkg_torch": "torch",
}  # fmt: skip


def figure_png(figure: Figure) -> str:
    """A matplotlib figure as base64 PNG, the way notebooks embed images."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _notebook(blocks: Sequence[tuple[str, Any]]) -> NotebookNode:
    """A notebook of markdown cells and output-only code cells: ("md", text) | ("outputs", [output, ...])."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    for kind, content in blocks:
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(content))
        else:
            nb.cells.append(nbformat.v4.new_code_cell("", outputs=list(content)))
    return nb


def _html(html: str) -> Any:
    import nbformat

    return nbformat.v4.new_output("display_data", data={"text/html": html})


def _png(png: str) -> Any:
    import nbformat

    return nbformat.v4.new_output("display_data", data={"image/png": png})


def page_outputs(view: NotebookNode) -> list[Any]:
    """The outputs of a stage's reader view (`pages.reader_view`: tables, figures, conclusion), in order."""
    return [o for c in view.cells if c.get("cell_type") == "code" for o in c.get("outputs", [])]


def conclusion(view: NotebookNode) -> str | None:
    """The stage's conclusion: the last markdown its notebook displayed."""
    found = None
    for output in page_outputs(view):
        text = output.get("data", {}).get("text/markdown")
        if text:
            found = "".join(text)
    return found


def _markdown(text: str) -> Any:
    import nbformat

    return nbformat.v4.new_output("display_data", data={"text/markdown": text})


def result_view(result: Any, claims: pd.DataFrame | None = None) -> NotebookNode:
    """A stage's page from its saved result: its table, every figure, the checks the report judged on its figures, and
    its conclusion (last: the index's excerpt reads it)."""
    import matplotlib.pyplot as plt

    outputs = [_html(pages.table_html(result.table()))]
    for figure in result.all_figures().values():
        outputs.append(_png(figure_png(figure)))
        plt.close(figure)
    if claims is not None and len(claims):
        outputs.append(_markdown("Claims judged on this stage's figures (by the report):"))
        outputs.append(_html(pages.table_html(_claims_view(claims))))
    outputs.append(_markdown(result.full_conclusion()))  # last: `conclusion()` reads the last markdown shown
    return _notebook([("md", f"# {result.spec.title}"), ("outputs", outputs)])


def _claims_view(claims: pd.DataFrame) -> pd.DataFrame:
    """The claims table as a reader wants it: one status column (each check's), the claim's own status beside its
    name on its first row, claimed beside measured, the interval in one column."""
    t = claims.copy()
    first = ~t["claim"].duplicated()
    t["claim"] = [f"{c}: {status}" if is_first else "" for c, status, is_first in zip(t["claim"], t["claim status"], first)]
    t["95% interval"] = [
        f"{pages.number(lo)} – {pages.number(hi)}" if lo is not None and not (isinstance(lo, float) and math.isnan(lo)) else "—"
        for lo, hi in zip(t["CI low"], t["CI high"], strict=True)
    ]
    return t[["claim", "check", "engine", "kind", "claimed", "measured", "95% interval", "unit", "status", "why"]]


def legend(statuses: Sequence[str]) -> str:
    """What each status shown means (`claims.MEANINGS`), for the statuses the table holds, in the legend's order."""
    from perfkit.claims import MEANINGS

    shown = set(statuses)
    return "\n".join(f"- *{status}*: {meaning}" for status, meaning in MEANINGS.items() if status in shown)


def provenance_table(provenances: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for stage, prov in provenances.items():
        row = {"stage": stage} | {label: prov.get(key) for key, label in PROVENANCE_COLUMNS.items()}
        row["commit"] = str(row["commit"] or "")[:10]
        rows.append(row)
    return pd.DataFrame(rows)


def index_notebook(
    title: str,
    summary: str,
    claims: pd.DataFrame,
    claims_png: str | None,
    stage_pages: Mapping[str, NotebookNode | None],
    provenances: Mapping[str, Mapping[str, Any]],
    sections: Sequence[tuple[str, str, pd.DataFrame]] = (),
    headline: tuple[str, pd.DataFrame] | None = None,
) -> NotebookNode:
    """The index page, the headline first (`headline`: the optimized stack's sentence and figures); `stage_pages` holds
    each stage's reader view (None: not run)."""
    blocks: list[tuple[str, Any]] = [("md", f"# {title}\n\n{summary}")]
    if headline is not None:
        words, table = headline
        blocks.append(("md", f"## What the optimized stack buys here\n\n{words}"))
        blocks.append(("outputs", [_html(pages.table_html(table))]))
    blocks.append(
        (
            "md",
            "## Claims\n\nEach published claim against what the stages measured here; a claim holds or "
            "fails only when the measurement tests what it says and the 95% interval over independent "
            "rounds clears its threshold. A claim's status (beside its name) follows from its checks' (the status "
            "column):\n\n" + legend([*claims["status"], *claims["claim status"]]),
        )
    )
    claim_outputs = [_html(pages.table_html(_claims_view(claims)))]
    if claims_png:
        claim_outputs.append(_png(claims_png))
    blocks.append(("outputs", claim_outputs))
    for stage in FEATURED:
        nb = stage_pages.get(stage)
        if nb is not None:
            blocks.append(("md", f"## {stage.capitalize()} ([its page]({stage}.html))"))
            blocks.append(("outputs", page_outputs(nb)))
    for heading, text, table in sections:
        if len(table):
            blocks.append(("md", f"## {heading}\n\n{text}"))
            blocks.append(("outputs", [_html(pages.table_html(table))]))
    lines = ["## Every stage"]
    for stage, nb in stage_pages.items():
        if nb is None:
            lines.append(f"### {stage}\n\nNot run yet: no saved result in experiments/{stage}/.")
        elif stage not in FEATURED:
            lines.append(f"### [{stage}]({stage}.html)\n\n{conclusion(nb) or 'The page shows no conclusion.'}")
    blocks.append(("md", "\n\n".join(lines)))
    blocks.append(
        (
            "md",
            "## Where the figures come from\n\nEvery figure was measured on the machine below by the "
            "commit shown; only ratios measured side by side in one run compare across machines.",
        )
    )
    blocks.append(("outputs", [_html(pages.table_html(provenance_table(provenances)))]))
    return _notebook(blocks)


def build(
    out: Path,
    stage_results: Mapping[str, Any | None],
    *,
    title: str,
    summary: str,
    claims: pd.DataFrame,
    claims_figure: Figure | None = None,
    sections: Sequence[tuple[str, str, pd.DataFrame]] = (),
) -> Path:
    """Write the site into `out` (emptied first) from the stages' saved results (None: not run) and the report's
    claims table (each stage's page lists the checks judged on its figures); returns index.html."""
    import shutil

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    stage_pages: dict[str, NotebookNode | None] = {}
    nav = '<a href="index.html">← all results</a>'
    for stage, result in stage_results.items():
        # The reader view once per stage: the page, the index's excerpt and the conclusion all read it.
        view = None if result is None else result_view(result, claims[claims["stage"] == stage] if len(claims) else claims)
        stage_pages[stage] = view
        if view is not None:
            (out / f"{stage}.html").write_text(pages.render(view, nav=nav), encoding="utf-8")
    provenances = {stage: dict(r.provenance or {}) for stage, r in stage_results.items() if r is not None}
    png = figure_png(claims_figure) if claims_figure is not None else None
    featured = stage_results.get(FEATURED[0])
    headline = featured.headline_table() if isinstance(featured, StageResult) else None
    index = index_notebook(title, summary, claims, png, stage_pages, provenances, sections, headline)
    path = out / "index.html"
    path.write_text(pages.render(index), encoding="utf-8")
    return path
