"""The README's latest-results table and its screenshots come from the committed metrics, and are kept in step with them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO

from perfkit import latest, screenshots


def test_the_readme_table_is_what_the_committed_results_give():
    readme = (REPO / "README.md").read_text()
    assert latest.block(REPO / "experiments") in readme, "run `perfkit latest --write README.md` and commit it"


@pytest.mark.parametrize("path", sorted(screenshots.SCREENSHOTS))
def test_each_readme_screenshot_shows_the_committed_results(path: str):
    assert path in (REPO / "README.md").read_text()
    stamp = screenshots.stamp_of(REPO / path)
    assert stamp == screenshots.results_digest(REPO / "experiments"), f"{path} shows other results: run `make screenshots`"


def test_the_results_digest_changes_with_any_stage_metrics(tmp_path: Path):
    (tmp_path / "baseline").mkdir()
    (tmp_path / "baseline" / "metrics.json").write_text('{"summary": {"x": 1}}')
    before = screenshots.results_digest(tmp_path)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "metrics.json").write_text("{}")
    added = screenshots.results_digest(tmp_path)
    (tmp_path / "baseline" / "metrics.json").write_text('{"summary": {"x": 2}}')
    assert len({before, added, screenshots.results_digest(tmp_path)}) == 3


def test_a_row_per_run_stage_in_pipeline_order_with_where_and_when(tmp_path: Path):
    prov = {"cpu_model": "AMD EPYC", "started_at": "2026-12-05T04:24:15+00:00", "git_commit": "66757c6abc", "wall_s": 90}
    for stage, verdict in (("optimized", "5.29x | the baseline"), ("baseline", "15.1 tok/s")):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "metrics.json").write_text(json.dumps({"summary": {"verdict": verdict, "provenance": prov}}))
    rows = latest.table(tmp_path).splitlines()[2:]
    assert rows == [
        "| baseline | 15.1 tok/s | AMD EPYC, 2026-12-05, commit 66757c6 | 1.5 min |",
        "| optimized | 5.29x \\| the baseline | AMD EPYC, 2026-12-05, commit 66757c6 | 1.5 min |",
    ]


def test_rewrite_replaces_only_the_block_and_needs_its_markers(tmp_path: Path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{latest.START}\nold\n{latest.END}\noutro\n")
    assert latest.rewrite(readme, tmp_path / "none") is True
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("\noutro\n") and "old" not in text
    assert latest.rewrite(readme, tmp_path / "none") is False
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="no <!-- latest-results:start -->"):
        latest.rewrite(readme, tmp_path)
