"""The web page in a real headless Chromium: choose a photo, see its label and score bars."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from deploy_support import COLORS, color_bundle, jpeg_bytes, recording_proxy, running_server

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


def test_the_page_works_behind_a_proxy_that_serves_it_under_a_path(
        browser, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    import httpx

    bundle = color_bundle(tmp_path_factory.mktemp("colorbundle"))
    with running_server(bundle, "dep_rootPath=/classifier") as url, \
            recording_proxy(url, prefix="/classifier") as (proxy, records):
        browser.get(proxy + "/classifier")  # no trailing slash: the page moves itself to /classifier/
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: d.current_url == proxy + "/classifier/")
        wait.until(lambda d: "Classes: red, green, blue" in d.find_element(By.ID, "model").text)
        photo = tmp_path / "a blue photo.jpg"
        photo.write_bytes(jpeg_bytes(COLORS["blue"], size=(120, 90), seed=3))
        browser.find_element(By.ID, "file").send_keys(str(photo))
        wait.until(lambda d: f"{photo.name}: " in d.find_element(By.ID, "status").text)
        assert browser.find_element(By.ID, "label").text == "blue"
        # The API documentation page asks for its schema under the prefix too (dep_rootPath).
        docs = httpx.get(proxy + "/classifier/docs", timeout=10)
        assert docs.status_code == 200 and "/classifier/openapi.json" in docs.text
        assert httpx.get(proxy + "/classifier/openapi.json", timeout=10).json()["paths"]
    assert ("POST", "/classifier/score") in {(m, p) for m, p, _, _ in records}
    # Before the page moved itself, the browser's preload scanner may have asked for /static/... (404s
    # that change nothing); from /classifier/ on, every request the page makes is answered.
    moved = [p for _, p, _, _ in records].index("/classifier/")
    assert all(status != 404 for _, p, _, status in records[moved:] if p != "/favicon.ico"), records


def test_a_service_with_an_api_key_asks_for_it_once_per_tab(
        browser, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    key = "page-test-key-42"
    bundle = color_bundle(tmp_path_factory.mktemp("colorbundle"))
    with running_server(bundle, env={"IMGCLASS_API_KEY": key}) as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 30)
        form = browser.find_element(By.ID, "keyform")
        wait.until(lambda d: form.is_displayed())  # /info answered 401
        assert "needs an API key" in browser.find_element(By.ID, "keynote").text
        assert browser.find_element(By.ID, "key").get_attribute("type") == "password"
        # A photo chosen before the key: its 401 is read (not a network error) and it waits for the key.
        photo = tmp_path / "green before the key.jpg"
        photo.write_bytes(jpeg_bytes(COLORS["green"], size=(120, 90), seed=3))
        browser.find_element(By.ID, "file").send_keys(str(photo))
        wait.until(lambda d: "waiting for the service's API key" in d.find_element(By.ID, "status").text)
        # A wrong key: asked again, and not kept.
        browser.find_element(By.ID, "key").send_keys("wrong key")
        browser.find_element(By.CSS_SELECTOR, "#keyform button").click()
        wait.until(lambda d: "did not accept that API key" in d.find_element(By.ID, "keynote").text)
        assert form.is_displayed()
        assert browser.execute_script("return sessionStorage.getItem('imgclass-api-key')") is None
        # The right key: the model description and the waiting photo's label come.
        browser.find_element(By.ID, "key").send_keys(key)
        browser.find_element(By.CSS_SELECTOR, "#keyform button").click()
        wait.until(lambda d: "Classes: red, green, blue" in d.find_element(By.ID, "model").text)
        wait.until(lambda d: f"{photo.name}: green (model " in d.find_element(By.ID, "status").text)
        assert browser.find_element(By.ID, "label").text == "green" and not form.is_displayed()
        # Kept for the tab: a reload asks no more, and the next photo is scored at once.
        browser.refresh()
        wait.until(lambda d: "Classes: red, green, blue" in d.find_element(By.ID, "model").text)
        assert not browser.find_element(By.ID, "keyform").is_displayed()
        blue = tmp_path / "blue.jpg"
        blue.write_bytes(jpeg_bytes(COLORS["blue"], size=(120, 90), seed=4))
        browser.find_element(By.ID, "file").send_keys(str(blue))
        wait.until(lambda d: "blue.jpg: blue (model " in d.find_element(By.ID, "status").text)
        assert browser.execute_script("return sessionStorage.getItem('imgclass-api-key')") == key
        assert browser.execute_script("return localStorage.length") == 0  # not kept beyond the tab


# Holds the page's /score replies until the test lets them through, one by one in the order it
# chooses: the request itself goes out at once; only the page's view of the reply waits.
HOLD_SCORE_REPLIES = """
window.heldReplies = [];
const realFetch = window.fetch;
window.fetch = (resource, options) => {
  const reply = realFetch(resource, options);
  if (!String(resource).endsWith("score")) return reply;
  return new Promise((resolve, reject) => window.heldReplies.push(() => {
    reply.then(resolve, reject);
    return reply.then(() => null, () => null);
  }));
};
"""
# Lets held reply number arguments[0] through, and returns 0.5 s after it settled (the page has
# long shown it by then, if it shows it at all).
RELEASE_REPLY = """
const done = arguments[arguments.length - 1];
window.heldReplies[arguments[0]]().then(() => setTimeout(() => done(document.getElementById("status").textContent), 500));
"""


def test_a_late_reply_for_an_earlier_photo_does_not_replace_the_later_one(
        browser, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    bundle = color_bundle(tmp_path_factory.mktemp("colorbundle"))
    with running_server(bundle) as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: "Classes: red, green, blue" in d.find_element(By.ID, "model").text)
        browser.execute_script(HOLD_SCORE_REPLIES)
        large, small = tmp_path / "large green.jpg", tmp_path / "small blue.jpg"
        large.write_bytes(jpeg_bytes(COLORS["green"], size=(1600, 1200), seed=4))
        small.write_bytes(jpeg_bytes(COLORS["blue"], size=(120, 90), seed=5))
        # A large photo, then quickly a small one: the large one's reply comes last.
        browser.find_element(By.ID, "file").send_keys(str(large))
        wait.until(lambda d: d.execute_script("return window.heldReplies.length") == 1)
        browser.find_element(By.ID, "file").send_keys(str(small))
        wait.until(lambda d: d.execute_script("return window.heldReplies.length") == 2)
        assert "small blue.jpg" in browser.execute_async_script(RELEASE_REPLY, 1)
        wait.until(lambda d: d.find_element(By.ID, "label").text == "blue")
        late = browser.execute_async_script(RELEASE_REPLY, 0)
        assert late.startswith("small blue.jpg: blue (model "), f"the large photo's late reply shown: {late}"
        assert browser.find_element(By.ID, "label").text == "blue"
        assert browser.find_elements(By.CSS_SELECTOR, "#bars .bar")[0].get_attribute("data-class") == "blue"
        assert browser.find_element(By.ID, "result").is_displayed()
        assert browser.execute_script("return document.getElementById('preview').naturalWidth") == 120


def test_a_photo_over_the_upload_limit_is_named_before_it_is_sent(
        browser, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    bundle = color_bundle(tmp_path_factory.mktemp("colorbundle"))
    limit = 60_000
    # Behind a proxy that records what the page sends (and reads whole bodies, so that a 413 sent
    # before the upload is read reaches the page as an answer rather than a network error).
    with running_server(bundle, f"dep_maxUploadBytes={limit}") as url, recording_proxy(url) as (proxy, records):
        browser.get(proxy + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: "Classes: red, green, blue" in d.find_element(By.ID, "model").text)
        big = tmp_path / "holiday photo.jpg"
        big.write_bytes(jpeg_bytes(COLORS["red"], size=(600, 450), seed=6))
        assert big.stat().st_size > limit
        browser.find_element(By.ID, "file").send_keys(str(big))
        wait.until(lambda d: "too large" in d.find_element(By.ID, "status").text)
        status = browser.find_element(By.ID, "status")
        assert status.text.startswith("holiday photo.jpg: ") and f"at most 0.1 MB ({limit} bytes)" in status.text
        assert status.get_attribute("class") == "error"
        assert not [r for r in records if r[0] == "POST"], records  # nothing was sent
        # A photo within the limit is scored as usual, and replaces the message.
        ok = tmp_path / "small red.jpg"
        ok.write_bytes(jpeg_bytes(COLORS["red"], size=(120, 90), seed=6))
        browser.find_element(By.ID, "file").send_keys(str(ok))
        wait.until(lambda d: "small red.jpg: " in d.find_element(By.ID, "status").text)
        assert browser.find_element(By.ID, "label").text == "red"
        assert [r[:2] for r in records if r[0] == "POST"] == [("POST", "/score")]


def test_the_results_browser_shows_every_image_even_heic_tiff_and_netpbm(browser, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image
    from selenium.webdriver.support.ui import WebDriverWait

    from imgclass.evaluate import write_browser

    images = tmp_path / "images"
    (images / "red").mkdir(parents=True)
    paths = []
    for suffix in (".jpg", ".tif", ".heic", ".png", ".ppm", ".tga"):
        Image.new("RGB", (120, 80), (200, 30, 30)).save(images / "red" / f"photo{suffix}")  # HEIC via pillow-heif
        paths.append(f"red/photo{suffix}")
    scores = np.tile([[0.9, 0.1]], (len(paths), 1))
    page = write_browser(tmp_path / "results" / "browser.html", images, paths, np.zeros(len(paths), int), scores,
                         ["red", "blue"], title="t")
    # the TIFF, the HEIC, the PPM and the TGA
    assert len(list((tmp_path / "results" / "browser_thumbs").glob("*.jpg"))) == 4
    browser.get(page.as_uri())
    loaded = "return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)"
    WebDriverWait(browser, 20).until(lambda b: all(b.execute_script(loaded)))
    assert browser.execute_script(loaded) == [True] * 6


@pytest.mark.parametrize("other_drive", [False, True])
def test_the_results_browser_shows_images_whose_names_have_url_characters(
        browser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other_drive: bool) -> None:
    """'#' would end the address at a fragment, '?' start a query, '%' be taken for an escape.
    `other_drive`: the images on another drive than the page (Windows: no relative path leads
    there, os.path.relpath raises ValueError), so the page links them by absolute file: URLs."""
    import numpy as np
    from PIL import Image
    from selenium.webdriver.support.ui import WebDriverWait

    from imgclass.evaluate import write_browser

    images = tmp_path / "images"
    paths = ["red/IMG #2.jpg", "red/50% off.jpg", "C#/what?.png", "red/café &amp.jpg"]
    for rel in paths:
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (120, 80), (200, 30, 30)).save(images / rel)
    scores = np.tile([[0.9, 0.1]], (len(paths), 1))
    if other_drive:
        def relpath(path: str, start: str) -> str:
            raise ValueError("path is on mount 'E:', start on mount 'C:'")
        monkeypatch.setattr("imgclass.evaluate.os.path.relpath", relpath)
    page = write_browser(tmp_path / "results" / "browser.html", images, paths, np.zeros(len(paths), int), scores,
                         ["red", "C#"], title="t")
    assert ('src="file:///' in page.read_text()) == other_drive
    browser.get(page.as_uri())
    loaded = "return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)"
    WebDriverWait(browser, 20).until(lambda b: all(b.execute_script(loaded)))
    assert browser.execute_script(loaded) == [True] * 4


def test_the_results_browser_wraps_a_long_class_name_without_spaces(browser, tmp_path: Path) -> None:
    """The list of sections at the top links each class by name: a name of one long word (no space
    to break at) made the page wider than the window, to be scrolled sideways."""
    import numpy as np
    from PIL import Image

    from imgclass.evaluate import write_browser

    long_name = "long_sleeve_womens_blouse_with_small_polka_dots_navy_blue_" * 3
    images = tmp_path / "images"
    paths = ["a/1.jpg", "b/2.jpg"]
    for rel in paths:
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (60, 40), (200, 30, 30)).save(images / rel)
    page = write_browser(tmp_path / "results" / "browser.html", images, paths, np.array([0, 1]),
                         np.array([[0.9, 0.1], [0.2, 0.8]]), [long_name, "b"], title="t", left_out=[("x" * 200, "why")])
    browser.set_window_size(700, 600)
    browser.get(page.as_uri())
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def test_the_results_browser_shows_images_on_the_first_screen_with_many_long_class_names(browser, tmp_path: Path) -> None:
    """The list of sections at the top has a link per class: with 200 long class names it was 5000 px
    tall, and the first image six screens down. It scrolls in a box instead; its last link still works."""
    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from imgclass.evaluate import write_browser

    classes = [f"category_{i:03d}_long_sleeve_womens_blouse_with_small_polka_dots_navy_blue" for i in range(60)]
    images = tmp_path / "images"
    paths = []
    for i, c in enumerate(classes):
        (images / c).mkdir(parents=True)
        Image.new("RGB", (40, 30), (200, 30, 30)).save(images / c / "1.jpg")
        paths.append(f"{c}/1.jpg")
    page = write_browser(tmp_path / "results" / "browser.html", images, paths, np.arange(len(classes)),
                         np.eye(len(classes)), classes, title="t")
    browser.set_window_size(1280, 900)
    browser.get(page.as_uri())
    nav = browser.find_element(By.TAG_NAME, "nav")
    assert browser.execute_script("return document.querySelector('.grid img').getBoundingClientRect().bottom") \
        < browser.execute_script("return window.innerHeight")
    assert browser.execute_script("return arguments[0].scrollHeight > arguments[0].clientHeight", nav)  # the links fill more than the box
    nav.find_elements(By.TAG_NAME, "a")[-1].click()
    WebDriverWait(browser, 10).until(lambda b: b.execute_script("return location.hash") == f"#s{len(classes) - 1}")
    top = browser.execute_script(f"return document.getElementById('s{len(classes) - 1}').getBoundingClientRect().top")
    assert 0 <= top < browser.execute_script("return window.innerHeight")


def test_the_results_browser_filters_by_true_and_predicted_class(browser, tmp_path: Path) -> None:
    """With 40 classes and 1000 mistakes, one class's mistakes were found by Ctrl+F: two selects show
    only the cards of a true and/or predicted class, with a count, and hide the sections left empty.
    Class names with quotes, '<', '&' and unicode are options like any other."""
    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from imgclass.evaluate import write_browser

    classes = ["plain", 'say "hi" <b>&amp;', "café ☕"]
    # (true, predicted): one right and one wrong of each class
    pairs = [(0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (2, 0)]
    images = tmp_path / "images"
    paths = []
    for i, (t, _) in enumerate(pairs):
        (images / f"c{t}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (60, 40), (30 * i, 30, 30)).save(images / f"c{t}" / f"{i}.jpg")
        paths.append(f"c{t}/{i}.jpg")
    labels = np.array([t for t, _ in pairs])
    scores = np.array([np.eye(3)[p] * 0.6 + 0.1 for _, p in pairs])
    page = write_browser(tmp_path / "results" / "browser.html", images, paths, labels, scores, classes, title="t")
    browser.get(page.as_uri())

    def shown() -> list[str]:
        return [c.find_element(By.TAG_NAME, "small").text for c in browser.find_elements(By.CLASS_NAME, "card")
                if c.is_displayed()]

    def sections() -> list[str]:
        return [h.text for h in browser.find_elements(By.TAG_NAME, "h3") if h.is_displayed()]

    def links() -> list[str]:
        return [a.text for a in browser.find_elements(By.CSS_SELECTOR, "nav a") if a.is_displayed()]

    def count() -> str:
        return browser.find_element(By.ID, "fn").text

    true, predicted = Select(browser.find_element(By.ID, "ft")), Select(browser.find_element(By.ID, "fp"))
    assert [o.text for o in true.options] == ["all", "plain (2)", 'say "hi" <b>&amp; (2)', "café ☕ (2)"]
    assert count() == "6 images" and len(shown()) == 6 and len(sections()) == 4
    true.select_by_visible_text('say "hi" <b>&amp; (2)')
    assert shown() == ["c1/3.jpg", "c1/2.jpg"]  # its mistake (in "misclassified"), then its correct one
    assert count() == "2 of 6 images shown"
    assert sections() == ["misclassified (3)", 'say "hi" <b>&amp;: correct (1)'] == links()
    predicted.select_by_visible_text("café ☕ (2)")  # both: its images taken for café
    assert shown() == ["c1/3.jpg"] and count() == "1 of 6 images shown" and sections() == ["misclassified (3)"]
    true.select_by_visible_text("all")
    assert sorted(shown()) == ["c1/3.jpg", "c2/4.jpg"] and count() == "2 of 6 images shown"
    assert sections() == ["misclassified (3)", "café ☕: correct (1)"] == links()
    # The links' separators: none before the first one shown, one between the two shown.
    before = "return Array.from(document.querySelectorAll('nav span')).filter(s => !s.hidden)" \
             ".map(s => getComputedStyle(s, '::before').content)"
    assert browser.execute_script(before) == ["none", '" · "']
    predicted.select_by_visible_text("all")
    assert len(shown()) == 6 and count() == "6 images" and len(sections()) == 4 == len(links())

    # scoreImages' page: no true classes, only the predicted one to choose.
    new = write_browser(tmp_path / "results" / "new.html", images, paths, None, scores, classes, title="n")
    browser.get(new.as_uri())
    assert not browser.find_elements(By.ID, "ft")
    Select(browser.find_element(By.ID, "fp")).select_by_visible_text('say "hi" <b>&amp; (2)')
    assert sorted(shown()) == ["c0/1.jpg", "c1/2.jpg"] and count() == "2 of 6 images shown"
    assert sections() == ['predicted say "hi" <b>&amp; (2)']


def test_the_results_browser_reads_on_a_phone_and_marks_mistakes_beyond_colour(tmp_path: Path) -> None:
    """Without a viewport line a phone laid the page out 980 px wide and shrank it onto its 400 px
    screen (captions of 12 px shown at 5); on a narrow screen two cards fit a row. Right and wrong
    cards differ by a mark as well as by the border's green or red (one colour to a red-green
    colour-blind reader)."""
    import numpy as np
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from imgclass.evaluate import write_browser

    images = tmp_path / "images"
    paths = []
    for i, c in enumerate(["b", "a", "a", "a", "a"]):
        (images / c).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (120, 80), (200, 30 * i, 30)).save(images / c / f"{i}.jpg")
        paths.append(f"{c}/{i}.jpg")
    labels = np.array([1, 0, 0, 0, 0])
    scores = np.array([[0.9, 0.1], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])  # the first a mistake
    page = write_browser(tmp_path / "results" / "browser.html", images, paths, labels, scores, ["a", "b"], title="t")

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="imgclass-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.add_experimental_option("mobileEmulation", {"deviceMetrics": {"width": 400, "height": 800, "pixelRatio": 1.0,
                                                                        "mobile": True, "touch": True}})
    phone = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        phone.get(page.as_uri())
        assert phone.execute_script("return window.innerWidth") == 400  # laid out for the screen, not 980 px
        assert phone.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        cards = phone.find_elements(By.CLASS_NAME, "card")
        tops = [c.rect["y"] for c in cards[1:]]  # the section of the 4 right ones, after the mistake's
        assert tops[0] == tops[1] < tops[2] == tops[3]  # two a row
        mark = "return getComputedStyle(arguments[0].querySelector('b'), '::before').content"
        marks = {c.get_attribute("class"): phone.execute_script(mark, c) for c in cards}
        assert marks == {"card err": '"\u2717 "', "card ok": '"\u2713 "'}
    finally:
        phone.quit()
        shutil.rmtree(profile, ignore_errors=True)
