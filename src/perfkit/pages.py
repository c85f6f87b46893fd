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
    body, _ = exporter.from_notebook_node(reader_view(nb), resources={"perfkit_nav": nav})
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
    """A DataFrame as a report table: no index, readable numbers, '—' for absent values."""
    return frame.style.hide(axis="index").format(number).to_html()
