"""Mission Control in a real browser: Debian's chromium, driven by selenium through
chromium-driver (nothing is downloaded: no browser can be fetched here).

The test runs the real bot (sim, speed 30) and the real API worker, opens the dashboard with
the token in the URL fragment, waits for every slot to show prices over the live event
stream, clicks Reload and waits for the new epoch, and saves a full-page screenshot to the
test's tmp_path and to ``test-output/dashboard.png``.

Without /usr/bin/chromium, /usr/bin/chromedriver or the selenium package the test is
skipped, with the reason; under CI (``$CI`` set) it fails instead: ``.ci/run`` installs them.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.markets import SLOTS
from tests.supervisor.botctl import Bot
from tests.waiting import wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "test-output"
LABELS = [s.label for s in SLOTS]

# Every slot card's label and its two asks as the page shows them, in one round trip.
SLOT_TEXT_JS = """
return Array.from(document.querySelectorAll('#slots [data-slot]')).map(e => [
  e.dataset.slot, e.querySelector('.up-ask').textContent,
  e.querySelector('.down-ask').textContent]);
"""


def _missing() -> list[str]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package")
    return missing


@pytest.fixture
def browser_tools() -> None:
    missing = _missing()
    if not missing:
        return
    why = (f"the dashboard browser test needs {', '.join(missing)} (apt-get install chromium "
           "chromium-driver; pip install -e '.[dev]')")
    if os.environ.get("CI"):
        pytest.fail(f"{why}: under CI they must be there (.ci/run installs them)")
    pytest.skip(why)


class ApiWorker:
    """``python -m api_worker`` on a free port beside the bot, unless the bot started one."""

    def __init__(self, run_dir: Path, log: Path) -> None:
        self.run_dir = run_dir
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.url = self.token = ""

    def start(self, listen: str = "127.0.0.1:0") -> None:
        info = self._info()
        if info is None or not _alive(int(info.get("pid") or 0)):
            with open(self.log, "ab") as out:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "api_worker", "--run-dir", str(self.run_dir),
                     "--listen", listen], stdout=out, stderr=subprocess.STDOUT)
        info = wait_for(self._ready, 30, "api.json of the API worker", self.tail)
        token_file = Path(info.get("token_file") or self.run_dir / "api.token")
        self.token = token_file.read_text().strip()
        self.url = str(info["url"]).rstrip("/")

    def _info(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.run_dir / "api.json").read_text())
        except (OSError, ValueError):
            return None

    def _ready(self) -> dict[str, Any] | None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the API worker exited with {self.proc.returncode}\n"
                                 f"{self.tail()}")
        info = self._info()
        if info is None or not info.get("url"):
            return None
        if self.proc is not None and info.get("pid") != self.proc.pid:
            return None
        return info

    def tail(self, n: int = 3000) -> str:
        try:
            return "--- api worker\n" + self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture
def bot(tmp_path: Path) -> Iterator[Bot]:
    b = Bot(tmp_path, speed=30)
    try:
        yield b
    finally:
        b.kill_everything()


def _driver() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--disable-gpu", "--no-first-run"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)


def _screenshot(driver: Any, path: Path) -> None:
    """The whole page (not only the 1400x1000 viewport), through the DevTools protocol."""
    try:
        m = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = m.get("cssContentSize") or m["contentSize"]
        width = max(size["width"], driver.execute_script("return window.innerWidth"))
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1}})
        path.write_bytes(base64.b64decode(shot["data"]))
    except Exception:                       # an older driver: the viewport will do
        driver.save_screenshot(str(path))


def _num(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _slots_with_prices(driver: Any) -> list[list[str]] | None:
    rows = driver.execute_script(SLOT_TEXT_JS)
    if sorted(r[0] for r in rows) != sorted(LABELS):
        return None
    for _, up, down in rows:
        u, d = _num(up), _num(down)
        if u is None or d is None or not (0 <= u <= 1 and 0 <= d <= 1):
            return None
    return rows


def _shown_epoch(driver: Any) -> int:
    from selenium.webdriver.common.by import By

    text = driver.find_element(By.ID, "epoch").text.strip()
    return int(text) if text.isdigit() else 0


@pytest.mark.timeout(170)
def test_dashboard_in_a_browser(browser_tools: None, bot: Bot, tmp_path: Path) -> None:
    bot.wait_active(90)
    api = ApiWorker(bot.run_dir, tmp_path / "api.log")
    driver = None
    try:
        api.start()
        # the page is a static file with no data in it: served without a token
        try:
            with urllib.request.urlopen(api.url + "/", timeout=10) as r:
                page = r.read().decode()
        except urllib.error.HTTPError as e:
            raise AssertionError(f"GET / answered {e.code} without a token: the API must "
                                 "serve the dashboard page publicly") from None
        assert 'id="slots"' in page, "GET / is not api_worker/static/dashboard.html"
        driver = _driver()
        _drive(driver, api, bot, tmp_path)
    finally:
        if driver is not None:
            with contextlib.suppress(Exception):
                driver.quit()
        api.stop()
        code = bot.stop()
    assert code == 0, bot.tail()
    bot.kill_everything()
    assert not bot.leftovers(), bot.leftovers()


def _drive(driver: Any, api: ApiWorker, bot: Bot, tmp_path: Path) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    def until(cond: Any, what: str, timeout: float = 60) -> Any:
        try:
            return WebDriverWait(driver, timeout, poll_frequency=0.2).until(cond)
        except TimeoutException:
            logs = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n"
                                 f"browser errors: {logs}\n{api.tail()}\n{bot.tail(2000)}"
                                 ) from None

    def attr(elem_id: str, name: str) -> str:
        return driver.find_element(By.ID, elem_id).get_attribute(name) or ""

    driver.get(f"{api.url}/#token={api.token}")
    rows = until(_slots_with_prices, f"{len(SLOTS)} slots with numeric prices")
    assert len(rows) == len(SLOTS)
    until(lambda d: attr("conn", "data-state") == "live", "the event stream to be live")
    assert "token=" not in driver.current_url, "the token stays in the address bar"

    epoch0 = until(_shown_epoch, "an epoch on the page")
    sha = bot.status()["strategy"]["sha256"]
    assert driver.find_element(By.ID, "sha").text == sha[:12]
    # the selected slot's 1m candles (btc-5m by default) are drawn
    until(lambda d: attr("price-chart", "data-label") == "btc-5m"
          and int(attr("price-chart", "data-candles") or 0) > 0,
          "btc-5m's candles in the price chart")
    n_reloads = len(driver.find_elements(By.CSS_SELECTOR, "#reload-history tbody tr"))

    driver.find_element(By.ID, "btn-reload").click()
    epoch1 = until(lambda d: (e := _shown_epoch(d)) > epoch0 and e, "a new epoch after Reload")
    until(lambda d: attr("action-result", "data-state") in ("ok", "error"),
          "the reload's answer on the page")
    result = driver.find_element(By.ID, "action-result")
    assert result.get_attribute("data-state") == "ok", result.text
    assert f"→ {epoch1}" in result.text, result.text
    until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#reload-history tbody tr"))
          > n_reloads, "the reload in the history table")
    newest = driver.find_element(By.CSS_SELECTOR, "#reload-history tbody tr")
    rec = bot.status()["reloads"][-1]
    assert rec["trigger"] == "command" and rec["to_epoch"] == epoch1, rec
    assert newest.get_attribute("data-reload") == rec["id"], newest.text
    assert newest.get_attribute("data-result") == "ok", newest.text

    # pause and resume, with the token; Kill asks first (dismissed here: nothing is sent)
    def answered(name: str) -> Any:
        el = driver.find_element(By.ID, "action-result")
        return el.get_attribute("data-state") == "ok" and el.text.startswith(name)

    driver.find_element(By.ID, "btn-pause").click()
    until(lambda d: answered("pause") and d.find_element(By.ID, "paused-badge").is_displayed()
          and bot.status().get("paused"), "the bot paused")
    driver.find_element(By.ID, "btn-resume").click()
    until(lambda d: answered("resume")
          and not d.find_element(By.ID, "paused-badge").is_displayed()
          and not bot.status().get("paused"), "the bot resumed")
    commands = len(bot.status().get("commands") or [])
    driver.find_element(By.ID, "btn-kill").click()
    until(EC.alert_is_present(), "the kill confirmation", 10).dismiss()
    assert attr("action-result", "data-state") == "ok"
    assert len(bot.status().get("commands") or []) == commands, "kill sent without a yes"

    # the stream drops with the API and comes back by itself (when this test started it)
    if api.proc is not None:
        port = api.url.rsplit(":", 1)[1]
        api.stop()
        until(lambda d: attr("conn", "data-state") == "disconnected", "a disconnected badge")
        api.start(f"127.0.0.1:{port}")
        until(lambda d: attr("conn", "data-state") == "live", "the stream back", 30)

    errors = [e for e in driver.get_log("browser")
              if e.get("level") == "SEVERE" and e.get("source") == "javascript"]
    assert not errors, f"errors in the page's script: {errors}"

    shot = tmp_path / "dashboard.png"
    _screenshot(driver, shot)
    assert shot.stat().st_size > 10_000
    OUTPUT.mkdir(exist_ok=True)
    shutil.copyfile(shot, OUTPUT / "dashboard.png")
