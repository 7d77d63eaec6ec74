"""The web page in a real headless Chromium (Debian's `chromium`, driven by Playwright; no
browser is ever downloaded): upload a photo, wait for the map, check the pins, the regions,
the result panel and the EXIF check; a corrupt file shows a readable message.

Set GEOALIGN_SCREENSHOT=docs/serve.png to refresh the README's screenshot."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from _serve import (  # noqa: E402
    concept_config,
    concept_engine,
    concept_model,
    config,
    engine,
    gps_exif,
    jpeg_bytes,
    live_server,
    small_gallery,
    tiny_clip,
)
from _shared import SHARED_DATA  # noqa: E402

__all__ = [  # fixtures
    "concept_config",
    "concept_engine",
    "concept_model",
    "config",
    "engine",
    "small_gallery",
    "tiny_clip",
]

CHROMIUM = next(
    (p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and Path(p).exists()), None
)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium installed: apt-get install -y chromium (scripts/setup.sh --dev)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: pip install playwright"
    )
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def _photo(folder: Path) -> Path:
    """A real street-level photo (OSV-5M sample) with its true location written as EXIF GPS,
    so that the page shows a claim check; a generated image where the data is absent."""
    from PIL import Image

    table = SHARED_DATA / "osv5m_select" / "photos.csv"
    out = folder / "street.jpg"
    if table.exists():
        import pandas as pd

        row = pd.read_csv(table).iloc[0]
        with Image.open(table.parent / row["path"]) as image:
            image.convert("RGB").save(out, "JPEG", quality=92, exif=gps_exif(row.lat, row.lon))
    else:
        out.write_bytes(jpeg_bytes(0, (640, 480), exif=gps_exif(48.8584, 2.2945)))
    return out


def test_page_locates_a_photo_and_reports_a_corrupt_one(browser, config, engine, tmp_path):
    from geoalign.serve.app import create_app

    photo = _photo(tmp_path)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    with live_server(create_app(config, engine)) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        problems: list[str] = []
        page.on("pageerror", lambda err: problems.append(str(err)))
        page.on(
            "request",
            lambda req: (
                None
                if req.url.startswith((url, "blob:", "data:"))
                else problems.append(f"left: {req.url}")
            ),
        )
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready=true]", timeout=20_000)
        page.set_input_files("#files", str(photo))
        card = page.wait_for_selector("article.card[data-state=done]", timeout=30_000)
        assert card.query_selector_all("path.ga-pin").__len__() == 5
        assert len(card.query_selector_all("path.ga-region")) >= 1
        assert len(card.query_selector_all("path.ga-heat")) >= 10  # the density heatmap
        assert len(card.query_selector_all("path.ga-estimate")) == 1
        assert len(card.query_selector_all("path.ga-country")) > 100  # the offline base map
        rows = card.query_selector_all("table[data-testid=topk] tbody tr")
        assert len(rows) == 5 and "%" in rows[0].inner_text()
        assert "Estimate (median)" in card.inner_text()
        assert "50% region" in card.inner_text() and "90% region" in card.inner_text()
        exif = card.query_selector("[data-testid=exif]").inner_text()
        assert "EXIF claim" in exif and ("consistent" in exif or "inconsistent" in exif)
        links = [a.get_attribute("download") for a in card.query_selector_all(".downloads a")]
        assert links == ["street.json", "street.geojson"]
        shot = Path(os.environ.get("GEOALIGN_SCREENSHOT") or tmp_path / "serve.png")
        page.screenshot(path=str(shot), full_page=False)
        assert shot.stat().st_size > 10_000

        assert card.query_selector("[data-testid=concepts]") is None  # not a concept model

        # the prior selector: a bounding box keeps every candidate inside it
        page.select_option("#prior-kind", "bbox")
        page.fill("#bbox", "35,-10,60,30")
        page.set_input_files("#files", str(photo))
        page.locator("article.card[data-state=done]").nth(1).wait_for(timeout=30_000)
        boxed = page.query_selector("article.card")  # the newest card comes first
        for row in boxed.query_selector_all("table[data-testid=topk] tbody tr"):
            lat, lon = (float(v) for v in row.query_selector_all("td")[3].inner_text().split(","))
            assert 35 <= lat <= 60 and -10 <= lon <= 30, (lat, lon)
        page.select_option("#prior-kind", "none")

        page.set_input_files("#files", str(corrupt))
        failed = page.wait_for_selector("article.card[data-state=error]", timeout=30_000)
        message = failed.query_selector("[data-testid=error]").inner_text()
        assert "corrupt.jpg" in message and "request" in message
        assert "Traceback" not in message
        assert problems == []  # no script error, no request left the server
        page.close()


def test_page_shows_the_concept_explanation_of_a_concept_model(
    browser, concept_config, concept_engine, tmp_path
):
    from geoalign.serve.app import create_app

    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg_bytes(3, (320, 240)))
    with live_server(create_app(concept_config, concept_engine)) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        problems: list[str] = []
        page.on("pageerror", lambda err: problems.append(str(err)))
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready=true]", timeout=20_000)
        page.set_input_files("#files", str(photo))
        card = page.wait_for_selector("article.card[data-state=done]", timeout=30_000)
        panel = card.query_selector("[data-testid=concepts]")
        assert panel is not None and "Strongest concepts" in panel.inner_text()
        rows = panel.query_selector_all("tbody tr")
        assert len(rows) == 6  # the model's top_k
        scores = [float(r.query_selector_all("td")[2].inner_text()) for r in rows]
        assert scores == sorted(scores, reverse=True)
        country = card.query_selector("[data-testid=concept-country]").inner_text()
        assert "Concept bottleneck:" in country and "%" in country
        assert len(card.query_selector_all("path.ga-pin")) == 5
        assert problems == []
        page.close()
