"""Executed stage notebooks as report pages: what a reader needs, nothing only a programmer needs.

A page is nbconvert's JupyterLab HTML with perfkit's template (`templates/page`) on top. The lab
template fetches require.js and MathJax from a CDN (two failed requests per page offline, and a
page that phones out when opened); perfkit's pages use neither, so the template drops them, and a
page makes no request outside itself: images are embedded. Code cells and prompts are hidden.

Some outputs belong in the stage log, not on the page, and are left out of it (the executed
notebook beside the page keeps them): stderr streams (tqdm bars, torchao's missing CUDA
kernels, torch deprecation notices, all with machine paths) and a cell's bare value repr
(`Out[3]: QuantizationConfig(...)`), which a thin notebook should not produce but an edited one may.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from nbformat import NotebookNode

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE = "page"
log = logging.getLogger("perfkit.pages")


def _for_the_page(output: NotebookNode) -> bool:
    if output.get("output_type") == "stream":
        return output.get("name") != "stderr"
    if output.get("output_type") == "execute_result":
        return set(output.get("data", {})) != {"text/plain"}  # a bare repr
    return True


def reader_view(nb: NotebookNode) -> NotebookNode:
    """A copy of `nb` without the outputs that belong in a log; what was dropped goes to the log."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        kept = [o for o in cell.get("outputs", []) if _for_the_page(o)]
        for dropped in (o for o in cell.get("outputs", []) if not _for_the_page(o)):
            text = dropped.get("text") or dropped.get("data", {}).get("text/plain", "")
            log.info("left off the page: %s", "".join(text).strip()[:500])
        cell["outputs"] = kept
    return nb


def title(nb: NotebookNode) -> str:
    """The page's title: the first top-level heading its markdown shows (a stage notebook's, or a built page's)."""
    for cell in nb.cells:
        texts = (
            [cell.get("source", "")]
            if cell.get("cell_type") == "markdown"
            else ["".join(o.get("data", {}).get("text/markdown", "")) for o in cell.get("outputs", [])]
        )
        for text in texts:
            for line in str(text).splitlines():
                if line.startswith("# "):
                    return re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", line[2:]).strip().strip("*")
    return "perfkit"


def render(nb: NotebookNode, *, nav: str = "") -> str:
    """The page's HTML; `nav` is an HTML fragment shown above the content (e.g. a link back to the index)."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(
        template_name=TEMPLATE,
        extra_template_basedirs=[str(TEMPLATES)],
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        embed_images=True,
    )
    resources = {"perfkit_nav": nav, "metadata": {"name": title(nb)}}
    body, _ = exporter.from_notebook_node(reader_view(nb), resources=resources)
    return body


def write(notebook: Path, html: Path, *, nav: str = "") -> Path:
    """Render the executed notebook at `notebook` into the page `html`."""
    import nbformat

    html.write_text(render(nbformat.read(notebook, as_version=4), nav=nav), encoding="utf-8")
    return html


def number(value: Any) -> str:
    """A figure with the precision a reader can use: 17,512 / 175.1 / 17.51 / 0.175; '—' when absent."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    size = abs(value)
    if isinstance(value, int) or size >= 1000:
        return f"{value:,.0f}"
    if size >= 100:
        return f"{value:.1f}"
    if size >= 1 or size == 0:
        return f"{value:.2f}"
    return f"{value:.3g}"


def table_html(frame: pd.DataFrame) -> str:
    """A DataFrame as a report table: no index, readable numbers (right-aligned), '—' for absent values, and prose
    (a column with words in it) left-aligned and wrapped."""
    styler = frame.style.hide(axis="index").format(number)
    prose = [c for c in frame.columns if frame[c].map(_has_words).any()]
    if prose:
        styler = styler.set_properties(subset=prose, **{"text-align": "left", "white-space": "normal"})
        headings = [{"selector": f"th.col{frame.columns.get_loc(c)}", "props": "text-align: left;"} for c in prose]
        styler = styler.set_table_styles(headings, overwrite=False)
    return styler.to_html()


def _has_words(value: Any) -> bool:
    return isinstance(value, str) and any(ch.isalpha() for ch in value)
