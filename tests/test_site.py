"""Report pages and the published site: nothing outside the page, nothing only a programmer needs, no broken link."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from types import SimpleNamespace

import nbformat
import pandas as pd
import pytest

from perfkit import pages, site

# A 1x1 PNG: what a seaborn figure is to the page.
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()


def executed(stage: str, conclusion: str) -> nbformat.NotebookNode:
    """What papermill leaves: a stderr stream, a bare repr, a table, a figure, the conclusion."""
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell(f"# {stage} stage"))
    nb.cells.append(nbformat.v4.new_code_cell("cfg = setup()", outputs=[
        nbformat.v4.new_output("stream", name="stderr", text="/home/me/.venv/site-packages/tqdm/auto.py:21: TqdmWarning\n"),
        nbformat.v4.new_output("execute_result", data={"text/plain": "QuantizationConfig(schemes=...)"}, execution_count=3),
    ]))  # fmt: skip
    nb.cells.append(nbformat.v4.new_code_cell("show()", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="rounds: 3\n"),
        nbformat.v4.new_output("display_data", data={"text/html": f"<table><tr><td>{stage}-table</td></tr></table>"}),
        nbformat.v4.new_output("display_data", data={"image/png": PNG}),
        nbformat.v4.new_output("display_data", data={"text/markdown": conclusion}),
    ]))  # fmt: skip
    return nb


class Refs(HTMLParser):
    """Every URL a page would load or link to."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name == "href" and tag == "a":
                self.links.append(value)
            elif name in ("src", "href"):
                self.loads.append(value)


def refs(html: str) -> Refs:
    parser = Refs()
    parser.feed(html)
    return parser


def test_a_page_loads_nothing_from_outside_and_leaves_log_output_off():
    html = pages.render(executed("baseline", "Baseline **holds**."))
    parsed = refs(html)
    assert parsed.loads and all(u.startswith("data:") or u.startswith("#") for u in parsed.loads), parsed.loads
    assert "require" not in html.lower() and "mathjax" not in html.lower()
    body = html[html.index("<body") :]
    assert "TqdmWarning" not in body and "QuantizationConfig" not in body and "Out[" not in body
    assert "baseline-table" in body and "rounds: 3" in html and "<strong>holds</strong>" in html


def test_the_page_keeps_what_it_drops_in_the_log(caplog):
    with caplog.at_level("INFO", logger="perfkit.pages"):
        pages.reader_view(executed("x", "done"))
    assert "TqdmWarning" in caplog.text and "QuantizationConfig" in caplog.text


@pytest.mark.parametrize(
    ("value", "text"),
    [(17512.34, "17,512"), (175.123, "175.1"), (17.512, "17.51"), (0.17512, "0.175"), (0.0, "0.00"), (3, "3"),
     (None, "—"), (float("nan"), "—"), ("holds", "holds"), (True, "True")],
)  # fmt: skip
def test_numbers_read_with_sensible_precision(value, text):
    assert pages.number(value) == text


@dataclass(frozen=True)
class FakeResult:
    """What the site reads of a stage's saved result: its title, table, figures, conclusion and provenance."""

    stage: str
    provenance: dict = field(default_factory=dict)

    @property
    def spec(self) -> SimpleNamespace:
        return SimpleNamespace(name=self.stage, title=f"The {self.stage} stage")

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"variant": [f"{self.stage}-table"], "tok/s": [12.5]})

    def figures(self) -> dict:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.plot([1, 2, 3])
        return {"curve": fig}

    def all_figures(self) -> dict:
        return self.figures()

    def full_conclusion(self) -> str:
        return f"The {self.stage} conclusion."


def stage_results(*ran: str, not_run: tuple[str, ...] = ()) -> dict[str, FakeResult | None]:
    """Saved results of the stages that ran (with provenance) and None for those that did not, in `ran` order first."""
    prov = {"git_commit": "0123456789abcdef", "wall_s": 61.5, "load_avg_1m_start": 0.3, "cpu_model": "EPYC"}
    return {stage: FakeResult(stage, prov) for stage in ran} | dict.fromkeys(not_run)


CLAIMS = pd.DataFrame([{
    "claim": "C4", "area": "quantization", "claim status": "inconclusive", "check": "speed-up", "engine": "perfkit", "kind": "relative",
    "claimed": 2.3, "measured": 2.1234, "CI low": 1.9, "CI high": 2.4, "unit": "x", "status": "inconclusive",
    "why": "the interval straddles 2.3x", "stage": "optimized",
}])  # fmt: skip


def test_the_site_has_a_page_per_stage_and_every_link_resolves(tmp_path):
    import matplotlib.pyplot as plt

    fig, _ = plt.subplots()
    out = tmp_path / "report" / "site"
    (out / "stale.html").parent.mkdir(parents=True)
    (out / "stale.html").write_text("from an earlier run")
    sections = [
        ("Run to run", "Each figure beside the previous runs'.", pd.DataFrame({"figure": ["C4:speed-up"]})),
        ("Empty", "never shown", pd.DataFrame({"figure": []})),
    ]
    index = site.build(
        out,
        {"baseline": stage_results("baseline")["baseline"], "cache": None, "optimized": stage_results("optimized")["optimized"]},
        title="T",
        summary="1 claim.",
        claims=CLAIMS,
        claims_figure=fig,
        sections=sections,
    )
    plt.close(fig)

    assert sorted(p.name for p in out.iterdir()) == ["baseline.html", "index.html", "optimized.html"]  # stale one gone
    text = index.read_text()
    assert "1.90 – 2.40" in text and "2.12" in text and "the interval straddles" in text  # claimed vs measured, interval
    assert "The baseline conclusion." in text and "Not run yet" in text  # cache never ran
    assert "optimized-table" in text  # the featured stage shown whole
    assert "0123456789" in text and "61.50" in text  # provenance
    assert "Run to run" in text and "Each figure beside" in text and "never shown" not in text  # an empty section is left off
    # Each stage's page lists the checks the report judged on its figures, and only those.
    optimized, baseline = (out / "optimized.html").read_text(), (out / "baseline.html").read_text()
    assert "Claims judged on this stage" in optimized and "the interval straddles" in optimized
    assert "Claims judged on this stage" not in baseline and "the interval straddles" not in baseline
    assert "The optimized stage" in optimized and "The optimized conclusion." in optimized
    for page in out.glob("*.html"):
        parsed = refs(page.read_text())
        assert all(u.startswith(("data:", "#")) for u in parsed.loads), (page.name, parsed.loads)
        for link in parsed.links:
            assert not re.match(r"[a-z]+://", link), (page.name, link)
            assert (out / link.split("#")[0]).is_file() or link.startswith("#"), (page.name, link)


def test_a_site_with_no_claims_table_still_builds(tmp_path):
    index = site.build(
        tmp_path / "site",
        stage_results("baseline", not_run=("optimized",)),
        title="T",
        summary="s.",
        claims=pd.DataFrame(columns=[*CLAIMS.columns]),
    )
    text = index.read_text()
    assert "The baseline conclusion." in text and "Not run yet: no saved result in experiments/optimized/" in text
    assert "Claims judged on this stage" not in (tmp_path / "site" / "baseline.html").read_text()
