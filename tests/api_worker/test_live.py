"""ONE test against the real bot: `noblink run` (sim, 30x) and the API worker as a separate
process on the same run directory, steered only over HTTP: status, pause/resume, a reload
that works and one that rolls back, metrics that move, garbage that changes nothing, and a
stop through the API that leaves no process and no segment behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from api_worker.main import read_api_info
from tests.api_worker.fuzzing import fuzz
from tests.supervisor.botctl import BROKEN, Bot, strategy_source
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


class Client:
    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def call(self, method: str, path: str, body: Any = None, timeout: float = 150
             ) -> tuple[int, Any]:
        data = None if body is None else orjson.dumps(body)
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, raw, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            status, raw, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
        return status, orjson.loads(raw) if ctype.startswith("application/json") else raw

    def ticks(self) -> float:
        status, text = self.call("GET", "/metrics")
        assert status == 200
        for fam in text_string_to_metric_families(text.decode()):
            for s in fam.samples:
                if s.name == "noblink_ticks_total":
                    return s.value
        raise AssertionError("no noblink_ticks_total")


def test_the_api_steers_a_live_bot(tmp_path: Path) -> None:
    bot = Bot(tmp_path, speed=30)
    api: subprocess.Popen | None = None
    api_log = tmp_path / "api.log"
    try:
        bot.wait_active()
        with open(api_log, "wb") as out:
            api = subprocess.Popen([sys.executable, "-m", "api_worker", "--run-dir",
                                    str(bot.run_dir)], cwd=ROOT, stdout=out,
                                   stderr=subprocess.STDOUT)
        info = wait_for(lambda: read_api_info(bot.run_dir), 30, "api.json", api_log.read_text)
        c = Client(info["url"], Path(info["token_file"]).read_text().strip())

        status, doc = c.call("GET", "/api/status")
        assert status == 200 and doc["run_id"] == bot.run_id and doc["active_epoch"] >= 1

        status, out = c.call("POST", "/api/pause")
        assert status == 200 and out["ack"]["result"] == "ok", out
        wait_for(lambda: bot.status().get("paused") is True, 10, "paused", bot.tail)
        status, out = c.call("POST", "/api/resume")
        assert status == 200 and out["ack"]["result"] == "ok", out
        wait_for(lambda: bot.status().get("paused") is False, 10, "resumed", bot.tail)

        good = tmp_path / "v1.py"
        good.write_text(strategy_source("v1"))
        epoch = bot.status()["active_epoch"]
        status, out = c.call("POST", "/api/reload", {"strategy": str(good)})
        assert status == 200, out
        rec = out["reload"]
        assert rec["result"] == "ok" and rec["command_id"] == out["ack"]["id"]
        assert rec["from_epoch"] == epoch and rec["to_epoch"] > epoch
        wait_for(lambda: bot.status().get("active_epoch") == rec["to_epoch"], 10, "new epoch")
        status, again = c.call("GET", f"/api/reloads/{out['ack']['id']}")
        assert status == 200 and again["reload"]["id"] == rec["id"]

        broken = tmp_path / "broken.py"
        broken.write_text(BROKEN["syntax error"])
        status, out = c.call("POST", "/api/reload", {"strategy": str(broken)})
        assert status == 409, out
        assert out["ack"]["result"] == "rolled_back" and out["reload"]["result"] == "rolled_back"
        assert bot.status()["active_epoch"] == rec["to_epoch"]         # the old one trades on

        t1 = c.ticks()
        bot.wait_ticks(2)
        assert c.ticks() > t1

        sent = len(orjson.loads((bot.run_dir / "control.json").read_bytes())["commands"])
        fuzz(int(info["url"].rsplit(":", 1)[1]), c.token, 100, live=True)
        bot.wait_ticks(3)                                               # still ticking
        assert bot.proc.poll() is None and api.poll() is None
        assert len(orjson.loads((bot.run_dir / "control.json").read_bytes())["commands"]) \
            == sent                                                     # garbage wrote nothing
        assert c.call("GET", "/api/status")[0] == 200

        status, out = c.call("POST", "/api/stop")
        assert status == 200 and out["ack"]["result"] == "ok", out
        assert bot.proc.wait(120) == 0
        api.send_signal(signal.SIGTERM)
        assert api.wait(30) == 0
        assert not (bot.run_dir / "api.json").exists()
        deadline = time.monotonic() + 30
        while bot._children_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not bot._children_alive()
        assert not bot.leftovers()
    finally:
        if api is not None and api.poll() is None:
            api.kill()
            api.wait(30)
        bot.kill_everything()
