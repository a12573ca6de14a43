"""The /playground page, end-to-end in headless Chromium (Debian's `chromium` + `chromium-driver`, driven by
Selenium pointed at both binaries: Selenium Manager never runs, nothing is downloaded).

The test clicks through what a person would do against the real Serve app: zero-shot with a label list and with
label groups, an image with the tiny CLIP, a refused request whose error body is shown, a few-shot classifier
trained from the page's table and used; then it saves the screenshot the README shows (docs/playground.png).
Under a route prefix (a small proxy mounting the app at /acct) the page calls /acct/v1/... and sends the API key.
When Chromium is missing, scripts/install_browser.sh installs it (apt); without apt access the test skips."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "serve_app" / "playground.html"
INSTALL = ROOT / "scripts" / "install_browser.sh"
SCREENSHOT = ROOT / "docs" / "playground.png"
MODEL = "all-MiniLM-L6-v2"
WIDTH, HEIGHT = 1280, 900


def _binaries() -> tuple[str | None, str | None]:
    return shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def chromium():
    """Paths of Debian's chromium and chromedriver, installed once by scripts/install_browser.sh if missing."""
    browser, driver = _binaries()
    if not (browser and driver):
        try:
            r = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, timeout=900)
            out, rc = (r.stdout + r.stderr)[-1500:], r.returncode
        except subprocess.TimeoutExpired:
            out, rc = "timed out after 900 s", "timeout"
        browser, driver = _binaries()
        if not (browser and driver):
            pytest.skip(f"headless Chromium is not installed and scripts/install_browser.sh could not install it (exit {rc}): {out}")
    return browser, driver


@pytest.fixture(scope="module")
def browser(chromium, monkeypatch_module):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch_module.setenv("SE_OFFLINE", "true")  # belt and braces: Selenium Manager must never download
    options = webdriver.ChromeOptions()
    options.binary_location = chromium[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--hide-scrollbars",
                f"--window-size={WIDTH},{HEIGHT}", "--force-device-scale-factor=1", "--lang=en-US"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromium[1]))
    driver.set_page_load_timeout(60)
    # the viewport (and so the screenshot) exactly WIDTH x HEIGHT, whatever the headless window decorations
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


# -- page helpers ---------------------------------------------------------------------------------------------------
def wait(driver, cond, what: str, timeout: float = 90):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: cond(d))
    except TimeoutException:
        boxes = {i: driver.find_element("id", i).text for i in ("models-error", "zs-error", "fs-error")}
        raise AssertionError(f"timed out waiting for {what}; error boxes: {boxes}; console: {driver.get_log('browser')[-5:]}") from None


def by_id(driver, id_):
    return driver.find_element("id", id_)


def set_text(driver, id_: str, text: str) -> None:
    el = by_id(driver, id_)
    el.clear()
    el.send_keys(text)


def select_model(driver, name: str) -> None:
    from selenium.webdriver.support.ui import Select

    wait(driver, lambda d: d.find_elements("css selector", f'#model option[value="{name}"]'), f"model {name} in the picker")
    Select(by_id(driver, "model")).select_by_value(name)


def px(bar, css: str) -> float:
    return float(bar.find_element("css selector", css).value_of_css_property("width").rstrip("px"))


def results(driver, box: str) -> list[dict]:
    """What the page shows in a results box: per input, its prediction and its score bars."""
    out = []
    for r in driver.find_elements("css selector", f"#{box} .result"):
        bars = [
            {
                "label": b.get_attribute("data-label"),
                "score": float(b.get_attribute("data-score")),
                "top": "top" in b.get_attribute("class").split(),
                "filled": px(b, ".fill") / px(b, ".track"),  # the bar's length is its score
            }
            for b in r.find_elements("css selector", ".bar")
        ]
        out.append({"prediction": r.get_attribute("data-prediction"), "text": r.text, "bars": bars,
                    "images": len(r.find_elements("css selector", ".input img"))})
    return out


def run_and_wait(driver, button: str, box: str, n: int) -> list[dict]:
    driver.execute_script(f"document.getElementById('{box}').replaceChildren()")
    by_id(driver, button).click()
    wait(driver, lambda d: len(d.find_elements("css selector", f"#{box} .result")) == n and d.find_element("id", button).is_enabled(),
         f"{n} results in #{box}")
    return results(driver, box)


def assert_reasonable_png(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (WIDTH, HEIGHT), im.size
    assert path.stat().st_size < 600_000


def js_errors(driver) -> list[str]:
    # The browser logs every non-2xx fetch as "Failed to load resource"; those are the error cases we provoke.
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]


# -- tests ------------------------------------------------------------------------------------------------------------
def test_page_is_served_open_self_contained_and_packaged(http):
    r = http.get("/playground")  # no key needed, like /docs
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.text == PAGE.read_text(encoding="utf-8")
    # offline: no external URL at all (scripts, styles, fonts, images), and the API is called by relative paths
    assert not re.search(r"https?://|//cdn|@import|<link(?![^>]*href=\"data:)", r.text)  # the favicon is inline
    assert re.search(r"fetch\(BASE \+ path", r.text)
    assert "/playground" not in http.get("/openapi.json").json()["paths"]
    assert '"*.html"' in (ROOT / "pyproject.toml").read_text()  # shipped as package data with the wheel


def click_zero_shot(d) -> None:
    """Two texts, a comma-separated label list -> one result with a bar per label for each input."""
    set_text(d, "zs-texts", "Heavy rain and strong wind are forecast for tomorrow\nThe striker scored twice in the cup final")
    set_text(d, "zs-labels", "weather, sport, cooking")
    got = run_and_wait(d, "zs-run", "zs-results", 2)
    assert [g["prediction"] for g in got] == ["weather", "sport"], got
    for g in got:
        assert [b["label"] for b in g["bars"]] == ["weather", "sport", "cooking"]  # the request's order
        assert abs(sum(b["score"] for b in g["bars"]) - 1) < 1e-4
        top = max(g["bars"], key=lambda b: b["score"])
        assert top["top"] and top["label"] == g["prediction"]
        assert all(abs(b["filled"] - b["score"]) < 0.02 for b in g["bars"]), g


def click_label_groups(d) -> None:
    """One "group: a, b" line each -> a prediction per group."""
    set_text(d, "zs-labels", "topic: weather, sport, cooking\nmood: happy, sad")
    got = run_and_wait(d, "zs-run", "zs-results", 2)
    assert '"topic":"weather"' in got[0]["prediction"] and len(got[0]["bars"]) == 5, got
    assert "topic: weather" in got[0]["text"] and "mood:" in got[0]["text"]


def click_multi_label(d) -> None:
    """The multi-label toggle: each result lists every label that applies ("applies: ..."), the bars of those labels
    are marked, and each bar is that label's own probability; unticked again for the steps after."""
    set_text(d, "zs-labels", "weather, sport, cooking")
    by_id(d, "zs-multi").click()
    try:
        got = run_and_wait(d, "zs-run", "zs-results", 2)
        shown = [json.loads(e.get_attribute("data-labels")) for e in d.find_elements("css selector", "#zs-results .labels")]
        assert len(shown) == 2 and all(g["prediction"] in labels for g, labels in zip(got, shown, strict=True)), (got, shown)
        for g, labels in zip(got, shown, strict=True):
            marked = {b["label"] for b in g["bars"] if b["top"]} | {
                e.get_attribute("data-label") for e in d.find_elements("css selector", "#zs-results .bar.applies")}
            assert set(labels) <= marked
            assert [b["label"] for b in sorted(g["bars"], key=lambda b: -b["score"]) if b["label"] in labels] == labels
    finally:
        by_id(d, "zs-multi").click()


def click_refused_request(d) -> None:
    """A refused request shows the error body: code, detail and request id."""
    set_text(d, "zs-labels", "weather, weather")
    d.find_element("id", "zs-run").click()
    wait(d, lambda d: "INPUT_INVALID_LABELS" in by_id(d, "zs-error").text, "the error body")
    err = by_id(d, "zs-error").text
    assert "HTTP 400 INPUT_INVALID_LABELS" in err and "2 distinct labels" in err and re.search(r"request_id: \S+", err), err
    assert not d.find_elements("css selector", "#zs-results .result")


def click_image(d, tmp_path: Path) -> None:
    """An image for the CLIP model (the drop zone appears only for models that accept images)."""
    assert not by_id(d, "zs-drop").is_displayed()
    from tests.image_server import _png

    picture = tmp_path / "red.png"
    picture.write_bytes(_png((32, 32), "RGB", (220, 20, 20)))
    select_model(d, "tiny-clip")
    assert by_id(d, "zs-drop").is_displayed() and "image" in by_id(d, "model-info").text
    by_id(d, "zs-images").send_keys(str(picture))
    wait(d, lambda d: d.find_elements("css selector", "#zs-thumbs img"), "the image thumbnail")
    set_text(d, "zs-texts", "a red square")
    set_text(d, "zs-labels", "red, blue")
    got = run_and_wait(d, "zs-run", "zs-results", 2)  # the text, then the image
    assert got[1]["images"] == 1 and "red.png" in got[1]["text"] and len(got[1]["bars"]) == 2, got
    assert not by_id(d, "zs-error").is_displayed()


def click_final_zero_shot(d) -> None:
    """Back to the text model: the final zero-shot state the screenshot shows."""
    select_model(d, MODEL)
    assert not by_id(d, "zs-drop").is_displayed()
    set_text(d, "zs-texts", "Heavy rain and strong wind are forecast for tomorrow\nThe striker scored twice in the cup final\n"
             "Whisk the eggs with sugar, then fold in the flour")
    set_text(d, "zs-labels", "weather, sport, cooking")
    got = run_and_wait(d, "zs-run", "zs-results", 3)
    assert [g["prediction"] for g in got] == ["weather", "sport", "cooking"], got


def train_from_the_table(d) -> str:
    """Replace the table's sample rows with six examples of three labels and train; the new classifier's id."""
    for x in d.find_elements("css selector", "#fs-table tbody button"):
        x.click()
    examples = [
        ("Thunderstorms will roll in this afternoon", "weather"), ("Expect frost and clear skies overnight", "weather"),
        ("The goalkeeper saved a late penalty", "sport"), ("She won the final in straight sets", "sport"),
        ("Simmer the sauce for ten minutes", "cooking"), ("Knead the dough until it is smooth", "cooking"),
    ]
    for text, label in examples:
        by_id(d, "fs-add-row").click()
        row = d.find_elements("css selector", "#fs-table tbody tr")[-1]
        row.find_element("css selector", ".fs-text").send_keys(text)
        row.find_element("css selector", ".fs-label").send_keys(label)
    assert len(d.find_elements("css selector", "#fs-table tbody tr")) == 6
    by_id(d, "fs-train").click()
    wait(d, lambda d: by_id(d, "fs-status").get_attribute("data-classifier-id"), "the trained classifier's id")
    return by_id(d, "fs-status").get_attribute("data-classifier-id")


def use_the_trained_classifier(d, http, cid: str) -> None:
    """Classify with the classifier just trained, save the screenshot, then provoke a few-shot error body."""
    assert by_id(d, "fs-id").get_attribute("value") == cid
    assert "6 examples" in by_id(d, "fs-status").text
    summary = next(c for c in http.get("/v1/classifiers").json() if c["classifier_id"] == cid)
    assert summary["model"] == MODEL and summary["num_samples"] == 6 and summary["access"] == "private"
    assert sorted(summary["labels"]) == ["cooking", "sport", "weather"]

    set_text(d, "fs-texts", "Snow is expected on the hills tonight\nThe home team lost the derby 3-1\nBake the bread for forty minutes")
    got = run_and_wait(d, "fs-run", "fs-results", 3)
    assert [g["prediction"] for g in got] == ["weather", "sport", "cooking"], got
    assert all(len(g["bars"]) == 3 for g in got)

    # a few-shot failure shows its error body too (an unknown classifier id)
    d.execute_script("window.scrollTo(0, 0)")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    assert d.save_screenshot(str(SCREENSHOT))
    assert_reasonable_png(SCREENSHOT)
    set_text(d, "fs-id", "00000000-0000-0000-0000-000000000000")
    d.find_element("id", "fs-run").click()
    wait(d, lambda d: "HTTP 404" in by_id(d, "fs-error").text, "the few-shot error body")
    assert "request_id:" in by_id(d, "fs-error").text


def test_click_through_zero_shot_error_images_few_shot(browser, serve_url, http, tmp_path):
    d = browser
    d.get(serve_url + "/playground")
    select_model(d, MODEL)
    click_zero_shot(d)
    click_label_groups(d)
    click_multi_label(d)
    click_refused_request(d)
    click_image(d, tmp_path)
    click_final_zero_shot(d)
    cid = train_from_the_table(d)
    try:
        use_the_trained_classifier(d, http, cid)
    finally:
        http.delete(f"/v1/classifiers/{cid}")

    # nothing was loaded from anywhere but the service itself, and no script error happened
    origin = serve_url.rstrip("/")
    resources = d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(u.startswith(origin + "/") for u in resources), resources
    assert js_errors(d) == []


class _PrefixProxy(ThreadingHTTPServer):
    """Mounts the app under /acct (as a route prefix or a reverse proxy would) and records what the page sends."""

    def __init__(self, upstream: str):
        self.upstream, self.seen = upstream, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self):
                outer.seen.append((self.command, self.path, self.headers.get("Authorization")))
                if not self.path.startswith("/acct/"):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization", "accept")}
                req = urllib.request.Request(outer.upstream + self.path[len("/acct"):], data=body, headers=headers, method=self.command)
                try:
                    with urllib.request.urlopen(req, timeout=120) as r:
                        status, ctype, data = r.status, r.headers.get("Content-Type", ""), r.read()
                except urllib.error.HTTPError as e:
                    status, ctype, data = e.code, e.headers.get("Content-Type", ""), e.read()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _forward

        super().__init__(("127.0.0.1", 0), Handler)


def test_under_a_route_prefix_with_an_api_key(browser, serve_url):
    proxy = _PrefixProxy(serve_url)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        d = browser
        d.get(f"http://127.0.0.1:{proxy.server_address[1]}/acct/playground")
        select_model(d, MODEL)
        set_text(d, "apikey", "rck_example_key")  # ignored by this anonymous-mode app; checked at the proxy
        set_text(d, "zs-texts", "Sunny and warm all week")
        set_text(d, "zs-labels", "weather, sport")
        got = run_and_wait(d, "zs-run", "zs-results", 1)
        assert got[0]["prediction"] == "weather"
        paths = [(m, p) for m, p, _ in proxy.seen]
        assert ("GET", "/acct/v1/models") in paths and ("POST", "/acct/v1/classify") in paths, paths
        assert all(p.startswith("/acct/") for _, p in paths), paths
        assert ("POST", "/acct/v1/classify", "Bearer rck_example_key") in proxy.seen
        assert js_errors(d) == []
    finally:
        proxy.shutdown()
        proxy.server_close()
