"""`noblink run` starts the HTTP API as its own child and says where it is in status.json."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

from tests.supervisor.botctl import Bot
from tests.waiting import wait_for


def test_the_supervisor_runs_the_api_and_status_says_where(tmp_path: Path) -> None:
    bot = Bot(tmp_path, args=("--api", "127.0.0.1:0"))
    try:
        s = wait_for(lambda: bot.active() if (bot.status().get("api") or {}).get("url")
                     else None, 120, "the bot and its API", bot.tail)
        api = s["api"]
        token_file = Path(api["token_file"])
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        req = urllib.request.Request(f"{api['url']}/api/status",
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            doc = json.loads(r.read())
        assert doc["run_id"] == s["run_id"] and doc["active_epoch"] == s["active_epoch"]
        api_pid = s["workers"]["api"]["pid"]
        assert s["workers"]["api"]["state"] == "RUNNING"
        assert bot.stop() == 0, bot.tail()
        wait_for(lambda: not _alive(api_pid), 30, "the API to stop with the bot")
    finally:
        bot.kill_everything()
    assert not bot.leftovers()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
