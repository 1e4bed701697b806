"""A real browser opens report.html: every figure loads, has size, and is not blank."""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import synthetic_results  # noqa: E402

from transferlens.report import FIGURES, render_report  # noqa: E402
from transferlens.results import save_results  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def open_in_chromium(html_path: Path):
    """Yield a Selenium driver on headless Debian Chromium showing ``html_path``."""
    assert CHROMIUM and DRIVER, (
        "needs Debian's chromium and chromium-driver (make test installs them)"
    )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,2000",
        "--disable-dev-shm-usage",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.get(html_path.resolve().as_uri())
    return driver


def check_figures_in_browser(html_path: Path, expected: int) -> list[str]:
    """Open the page; return the ids of figures that loaded, have size, and are not blank."""
    from PIL import Image
    from selenium.webdriver.common.by import By

    driver = open_in_chromium(html_path)
    try:
        figs = driver.find_elements(By.CSS_SELECTOR, "figure img")
        assert len(figs) == expected, f"{len(figs)} figures in the page, expected {expected}"
        ok = []
        for img in figs:
            driver.execute_script("arguments[0].scrollIntoView(true);", img)
            loaded = driver.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth > 0;", img
            )
            w, h = img.size["width"], img.size["height"]
            pixels = np.asarray(Image.open(io.BytesIO(img.screenshot_as_png)).convert("L"), float)
            fig_id = img.find_element(By.XPATH, "..").get_attribute("id")
            if loaded and w > 50 and h > 50 and pixels.std() > 10:
                ok.append(fig_id)
        return ok
    finally:
        driver.quit()


@pytest.mark.slow
def test_report_html_in_headless_chromium(tmp_path):
    save_results(tmp_path / "results.json", synthetic_results(4), meta={"title": "Browser"})
    html = render_report(tmp_path, formats=["png"])
    ok = check_figures_in_browser(html, len(FIGURES))
    assert sorted(ok) == sorted(f"fig-{s.name}" for s in FIGURES)


def test_blank_figure_is_detected(tmp_path):
    """The check can fail: a page whose image is a flat white PNG is rejected."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (300, 200), "white").save(buf, format="PNG")
    import base64

    data = base64.b64encode(buf.getvalue()).decode()
    page = tmp_path / "blank.html"
    page.write_text(
        f"<html><body><figure id='fig-x'><img src='data:image/png;base64,{data}'>"
        "</figure></body></html>"
    )
    assert check_figures_in_browser(page, 1) == []
