"""The web page at GET /, driven in real headless Chromium (Debian's chromium + chromium-driver)
against a real `skipvit serve` of the shipped bundle.

Uploading a real Fashion-MNIST test image shows the same label, top-k and path as the API;
switching point with the admin token moves the chart's active marker (and a wrong token does
not); nothing the page loads comes from anywhere but its own server.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import pytest

from skipvit.training.data.fashion_mnist import FILES, read_idx
from tests.conftest import FMNIST_DIR, SHIPPED_BUNDLE
from tests.service.helpers import png_bytes
from tests.service.server import TOKEN, ServerProcess

pytestmark = pytest.mark.slow
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
STATIC = Path(__file__).resolve().parents[2] / "service" / "static"
WAIT_S = 60  # the machine may be slow and busy; every wait returns as soon as its condition holds
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(SHIPPED_BUNDLE, tmp_path_factory.mktemp("web")).wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} missing. Hint: run `make test`, which installs Debian's chromium and "
            "chromium-driver (or: apt-get install chromium chromium-driver)"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail(
            "selenium is missing. Hint: run `make test`, which installs the dev extras (pip install -e '.[dev]')"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1200,1600",
        "--disable-extensions",
        "--no-first-run",
    ):
        options.add_argument(arg)
    # An explicit driver path: Selenium Manager is never asked to find (or download) anything.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(WAIT_S)
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def image_png(tmp_path_factory) -> Path:
    """The first Fashion-MNIST test image as a PNG file."""
    assert FMNIST_DIR.is_dir(), "Fashion-MNIST is needed: apt-get install dataset-fashion-mnist"
    images = read_idx(FMNIST_DIR / FILES["test"][0])  # (N, 28, 28)
    path = tmp_path_factory.mktemp("img") / "fmnist-test-0.png"
    path.write_bytes(png_bytes(images[0]))
    return path


def wait(driver, condition, message: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition, message)


def active_marker(driver) -> str | None:
    """The chart's active point, read in one script: the chart may be redrawn between two WebDriver calls."""
    return driver.execute_script("return document.getElementById('active-marker')?.dataset.point ?? null")


def marker_spot(driver) -> tuple[str, str]:
    return tuple(
        driver.execute_script(
            "const r = document.querySelector('#active-marker .ring'); return [r.getAttribute('cx'), r.getAttribute('cy')]"
        )
    )


def open_page(driver, server) -> str:
    """Load GET / and wait until the chart is drawn; return the chart's active point."""
    driver.get(f"{server.base}/")
    return wait(driver, active_marker, "the chart's active marker never appeared")


def upload(driver, path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "file-input").send_keys(str(path))
    wait(
        driver,
        lambda d: d.find_element(By.ID, "results").get_attribute("data-state") in ("done", "error"),
        "no answer to the upload",
    )
    error = driver.find_element(By.ID, "error")
    assert not error.is_displayed(), error.text


def test_upload_shows_the_label_top_k_and_path_of_the_api(browser, server, image_png):
    from selenium.webdriver.common.by import By

    open_page(browser, server)
    upload(browser, image_png)
    label = browser.find_element(By.ID, "result-label").text
    card = browser.find_element(By.CSS_SELECTOR, "#results .result")
    served = card.get_attribute("data-point")
    r = httpx2.post(
        f"{server.base}/classify",
        params={"point": served},
        files=[("files", ("x.png", image_png.read_bytes(), "image/png"))],
        timeout=60,
    )
    assert r.status_code == 200, r.text
    want = r.json()["results"][0]
    assert label == want["label"]
    assert card.find_element(By.CSS_SELECTOR, ".served-by").text == served
    # Top-k: one bar per class in the API's order, the bar's length its probability.
    rows = card.find_elements(By.CSS_SELECTOR, ".topk li")
    assert [row.get_attribute("data-label") for row in rows] == [t["label"] for t in want["top_k"]]
    bar = rows[0].find_element(By.CSS_SELECTOR, ".bar")
    fill = rows[0].find_element(By.CSS_SELECTOR, ".fill")
    assert fill.size["width"] == pytest.approx(bar.size["width"] * want["top_k"][0]["probability"], abs=2)
    assert all(row.is_displayed() for row in rows)
    # Path: one cell per layer, ran / skipped as in the API's path.
    cells = card.find_elements(By.CSS_SELECTOR, ".path .cell")
    assert "".join(c.get_attribute("data-ran") for c in cells) == want["path"]
    assert all(c.is_displayed() for c in cells)
    assert (
        card.find_element(By.CSS_SELECTOR, ".layers").text
        == f"{want['layers_executed']} / {len(want['path'])} layers ran"
    )
    thumb = card.find_element(By.CSS_SELECTOR, "img.thumb")
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", thumb) == 28


def rl_point(server) -> str:
    """The id of the served bundle's first RL point, as /pareto lists it."""
    points = httpx2.get(f"{server.base}/pareto").json()["points"]
    return next(p["id"] for p in points if p["method"] == "rl")


def test_switch_point_moves_the_active_marker_and_a_wrong_token_does_not(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    before = open_page(browser, server)
    assert before == httpx2.get(f"{server.base}/config").json()["point"]
    spot = marker_spot(browser)
    target = "static" if before != "static" else rl_point(server)
    try:
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        Select(browser.find_element(By.ID, "point-select")).select_by_value(target)
        browser.find_element(By.ID, "switch-button").click()
        wait(browser, lambda d: active_marker(d) == target, f"the active marker never moved to {target}")
        assert marker_spot(browser) != spot, "the marker did not move"
        status = browser.find_element(By.ID, "switch-status")
        wait(browser, lambda d: status.get_attribute("data-state") == "ok", "no success message")
        assert target in status.text
        assert httpx2.get(f"{server.base}/config").json()["point"] == target
        row = browser.find_element(By.CSS_SELECTOR, "#pareto-table tr.active")
        assert row.get_attribute("data-point") == target
        assert browser.find_element(By.ID, "active-point").text == target

        # A wrong token: the server's 401 is shown, and nothing switches.
        token = browser.find_element(By.ID, "token")
        token.clear()
        token.send_keys("not-the-token")
        Select(browser.find_element(By.ID, "point-select")).select_by_value(before)
        browser.find_element(By.ID, "switch-button").click()
        wait(browser, lambda d: status.get_attribute("data-state") == "error", "no error for a wrong token")
        assert "401" in status.text and "token" in status.text
        assert active_marker(browser) == target
        assert httpx2.get(f"{server.base}/config").json()["point"] == target
    finally:
        httpx2.put(f"{server.base}/config", json={"point": before}, headers=ADMIN).raise_for_status()


def test_the_autopilot_panel_turns_it_on_shows_its_choice_live_and_turns_it_off(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    before = open_page(browser, server)
    text = lambda d, i: d.find_element(By.ID, i).text  # noqa: E731
    try:
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        p95 = browser.find_element(By.ID, "autopilot-p95")
        p95.clear()
        p95.send_keys("5000")
        rl = rl_point(server)
        Select(browser.find_element(By.ID, "autopilot-family")).select_by_value(rl)
        browser.find_element(By.ID, "autopilot-on").click()
        wait(browser, lambda d: text(d, "ap-state") == "on" and text(d, "ap-point") != "–", "no live choice")
        family = httpx2.get(f"{server.base}/pareto").json()["autopilot_family"]
        assert rl in family and text(browser, "ap-point") in family
        # the page follows the server: the active point line shows the autopilot's choice
        wait(browser, lambda d: text(d, "active-point") in family, "the active point line never followed")
        browser.find_element(By.ID, "autopilot-off").click()
        wait(browser, lambda d: text(d, "ap-state") == "off", "the autopilot never showed off")
        assert httpx2.get(f"{server.base}/config").json()["autopilot"] is None
    finally:
        httpx2.put(
            f"{server.base}/config", json={"autopilot": None, "point": before}, headers=ADMIN
        ).raise_for_status()


def test_nothing_is_loaded_from_off_host(browser, server, image_png):
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC / name).read_text()
        assert not re.search(r"https?://|(?:src|href)\s*=\s*[\"']//|@import", text, re.IGNORECASE), name
    assert "url(" not in (STATIC / "style.css").read_text(), "style.css loads something"
    browser.get_log("browser")  # drop what the other tests logged (e.g. the wrong token's 401)
    open_page(browser, server)
    upload(browser, image_png)
    entries = browser.execute_script(
        "return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
        ".map(e => [e.entryType, e.name])"
        ".concat([...document.querySelectorAll('[src],[href]')].map(n => ['attr', n.src || n.href]))"
    )
    origin = server.base
    off_host = [
        (kind, url) for kind, url in entries if not url.startswith((f"{origin}/", f"blob:{origin}/", "data:"))
    ]
    assert not off_host, off_host
    loaded = {urlsplit(url).path for kind, url in entries if kind in ("navigation", "resource")}
    assert {"/", "/static/app.js", "/static/style.css", "/pareto", "/config", "/classify"} <= loaded, loaded
    # A blocked load (the page's Content-Security-Policy allows only its own server) is logged as an error.
    severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
