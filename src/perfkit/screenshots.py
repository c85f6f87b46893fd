"""The README's screenshots of the published site, taken in headless Chromium and stamped with the results they show.

Each PNG carries, in a text chunk, the digest of the committed results it was taken from (`results_digest`: every
stage's metrics.json and result.json). A test compares the stamp with the committed results, so a screenshot that shows an older run
fails the suite instead of going stale; `perfkit site --screenshots` (`make screenshots`) takes them again. Chromium is
Debian's (`make setup` installs it as root), driven by Playwright from pip: nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from PIL import Image, PngImagePlugin

from perfkit.errors import PerfkitError

STAMP = "perfkit-results"  # the PNG text chunk that names the results a screenshot shows
SCREENSHOTS = {"docs/img/site-index.png": "index.html"}  # repo path -> the site page it shows
VIEWPORT = {"width": 1280, "height": 1400}


def results_digest(experiments: Path) -> str:
    """A digest of every stage's committed metrics.json and result.json (their bytes, in stage order): what the site
    is built from."""
    digest = hashlib.sha256()
    for path in sorted([*experiments.glob("*/metrics.json"), *experiments.glob("*/result.json")]):
        digest.update(f"{path.parent.name}/{path.name}".encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def stamp_of(png: Path) -> str | None:
    """The results digest a screenshot was stamped with; None for an unstamped image."""
    with Image.open(png) as image:
        return image.text.get(STAMP) if hasattr(image, "text") else None


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise PerfkitError("no chromium binary: `make setup` installs Debian's as root (apt-get install chromium)")
    return found


def take(page: Path, out: Path, stamp: str) -> Path:
    """A screenshot of the top of `page` (a file of the built site) at `out`, stamped with `stamp`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium())
        try:
            view = browser.new_page(viewport=VIEWPORT)
            view.goto(page.resolve().as_uri())
            raw = out.with_suffix(".raw.png")
            out.parent.mkdir(parents=True, exist_ok=True)
            view.screenshot(path=str(raw))
        finally:
            browser.close()
    info = PngImagePlugin.PngInfo()
    info.add_text(STAMP, stamp)
    with Image.open(raw) as image:
        image.save(out, pnginfo=info, optimize=True)
    raw.unlink()
    return out


def take_all(root: Path, site: Path) -> list[Path]:
    """Every README screenshot, from the site built at `site` out of `root`'s committed results."""
    stamp = results_digest(root / "experiments")
    return [take(site / page, root / path, stamp) for path, page in SCREENSHOTS.items()]
