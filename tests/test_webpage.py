"""The web page in a real headless Chromium: choose a photo, see its label and score bars."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from deploy_support import COLORS, color_bundle, jpeg_bytes, running_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").is_file() else shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Debian's chromium and chromium-driver are not installed (make browser installs them)",
)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="imgclass-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_upload_a_photo_and_read_the_label(browser, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    bundle = color_bundle(tmp_path_factory.mktemp("colorbundle"))
    with running_server(bundle) as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: "Classes: red, green, blue" in d.find_element(By.ID, "model").text)
        assert "test accuracy 100.0%" in browser.find_element(By.ID, "model").text
        for name in ("green", "blue"):
            photo = tmp_path / f"my {name} photo.jpg"
            photo.write_bytes(jpeg_bytes(COLORS[name], size=(120, 90), seed=3))
            browser.find_element(By.ID, "file").send_keys(str(photo))
            # "Scoring <name>..." while waiting; "<name>: <label> (model ...)" once the reply is shown.
            wait.until(lambda d: f"{photo.name}: " in d.find_element(By.ID, "status").text)
            assert browser.find_element(By.ID, "label").text == name
            bars = browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
            assert [b.get_attribute("data-class") for b in bars][0] == name and len(bars) == 3
            assert browser.find_element(By.ID, "result").is_displayed()
            # The preview shows the chosen image (a blob: URL the browser decoded).
            assert browser.execute_script("return document.getElementById('preview').naturalWidth") == 120
        # A file that is not an image: the service's error is shown, nothing crashes.
        bad = tmp_path / "notes.jpg"
        bad.write_text("not an image")
        browser.find_element(By.ID, "file").send_keys(str(bad))
        wait.until(lambda d: "Error 415" in d.find_element(By.ID, "status").text)
        assert "notes.jpg: not an image" in browser.find_element(By.ID, "status").text
        # No asset comes from anywhere but the service itself.
        sources = browser.execute_script(
            "return Array.from(document.querySelectorAll('script[src],link[href],img[src]'))"
            ".map(e => e.src || e.href)")
        assert sources and all(s.startswith(url) or s.startswith("blob:") for s in sources), sources


def test_the_results_browser_shows_every_image_even_heic_and_tiff(browser, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image
    from selenium.webdriver.support.ui import WebDriverWait

    from imgclass.evaluate import write_browser

    images = tmp_path / "images"
    (images / "red").mkdir(parents=True)
    paths = []
    for suffix in (".jpg", ".tif", ".heic", ".png"):
        Image.new("RGB", (120, 80), (200, 30, 30)).save(images / "red" / f"photo{suffix}")  # HEIC via pillow-heif
        paths.append(f"red/photo{suffix}")
    scores = np.tile([[0.9, 0.1]], (len(paths), 1))
    page = write_browser(tmp_path / "results" / "browser.html", images, paths, np.zeros(len(paths), int), scores,
                         ["red", "blue"], title="t")
    assert len(list((tmp_path / "results" / "browser_thumbs").glob("*.jpg"))) == 2  # the TIFF and the HEIC
    browser.get(page.as_uri())
    loaded = "return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)"
    WebDriverWait(browser, 20).until(lambda b: all(b.execute_script(loaded)))
    assert browser.execute_script(loaded) == [True] * 4
