"""The published site in a real headless browser: it renders, every link and image resolves, nothing leaves the page.

Needs Debian's chromium (`make setup` installs it as root with apt-get, as on CI) and Playwright from
pip, which drives that binary: no `playwright install` download.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_site import stage_results

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary: `make setup` installs Debian's as root")


def test_every_page_renders_offline_with_its_links_images_and_tables(tmp_path: Path):
    import matplotlib.pyplot as plt
    import pandas as pd

    from perfkit import site

    claims = pd.DataFrame([{
        "claim": "C19", "area": "operations", "claim status": "holds", "check": "cold start", "engine": "perfkit", "kind": "relative",
        "claimed": 60.0, "measured": 75.0, "CI low": 70.0, "CI high": 80.0, "unit": "%", "status": "holds", "why": "w",
        "stage": "baseline",
    }])  # fmt: skip
    fig, _ = plt.subplots()
    index = site.build(tmp_path / "site", stage_results("baseline", "optimized"), title="T", summary="s.", claims=claims, claims_figure=fig)
    plt.close(fig)

    outside: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page()
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(("file://", "data:")) else None)
        seen = {index.as_uri()}
        queue = [index.as_uri()]
        while queue:
            url = queue.pop()
            response = page.goto(url)
            assert response is not None and response.ok, url
            assert page.locator("table").count() > 0, f"{url}: no table"
            broken = page.eval_on_selector_all("img", "imgs => imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length")
            assert broken == 0, f"{url}: {broken} broken image(s)"
            for href in page.eval_on_selector_all("a[href]", "as => as.map(a => a.href)"):
                target = href.split("#")[0]
                assert target.startswith("file://"), f"{url} links outside the site: {href}"
                assert Path(target.removeprefix("file://")).is_file(), f"{url}: broken link {href}"
                if target not in seen:
                    seen.add(target)
                    queue.append(target)
        browser.close()
    assert outside == []
    assert len(seen) == 3  # index and both stage pages were reached by links


def test_a_screenshot_of_a_site_page_is_stamped_with_the_results_it_shows(tmp_path: Path):
    from PIL import Image

    from perfkit import screenshots

    page = tmp_path / "page.html"
    page.write_text("<html><body><h1>perfkit</h1></body></html>")
    out = screenshots.take(page, tmp_path / "img" / "shot.png", "0123abcd")
    assert screenshots.stamp_of(out) == "0123abcd" and not (tmp_path / "img" / "shot.raw.png").exists()
    with Image.open(out) as image:
        assert image.size[0] == screenshots.VIEWPORT["width"]
