"""A real bot for the reload tests: `noblink run` in a subprocess, steered through its files.

Also the test strategies: each records every tick it evaluates in its state, so a test can
check that the ticks seen across every reload have no gap and no duplicate.
"""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from state.segment import SHM_DIR
from supervisor.control_file import append_command, wait_for_ack
from tests.waiting import wait_for

# {schema}: SCHEMA_VERSION; {key}: the state key the ticks live under; {extra}: class body
# lines (indented 4), {module}: module-level lines. The strategy bets Up late in a window so
# that intents flow (the position worker dedupes and fences them).
TEMPLATE = '''
import time
from strategy_worker.api import Decision
{module}
SCHEMA_VERSION = {schema}
VERSION = {version!r}

def migrate(old, state):
    if old == 1 and SCHEMA_VERSION == 2:
        return {{"seen_ticks": state["ticks"], "history": state.get("history", [])}}
    if old == 2 and SCHEMA_VERSION == 1:
        return {{"ticks": state["seen_ticks"], "history": state.get("history", [])}}
    return state

class Strategy:
    def __init__(self, params):
        self.ticks = []
        self.history = []
        self.calls = 0
{extra}
    def evaluate(self, view):
        self.calls += 1
        if not self.ticks or self.ticks[-1] != view.tick:
            self.ticks.append(view.tick)
            if not self.history or self.history[-1] != VERSION:
                self.history.append(VERSION)
        if view.accepting and view.seconds_left < view.window_s * 0.4 \\
                and 0 < view.up.ask < 0.9:
            return Decision("Up", 0.9, VERSION)
        return None

    def get_state(self):
        return {{"{key}": self.ticks, "history": self.history}}

    def set_state(self, state):
        self.ticks = list(state.get("{key}", []))
        self.history = list(state.get("history", []))
'''


def strategy_source(version: str, *, schema: int = 1, extra: str = "", module: str = "") -> str:
    key = "seen_ticks" if schema == 2 else "ticks"
    return TEMPLATE.format(schema=schema, key=key, version=version, extra=extra, module=module)


BROKEN: dict[str, str] = {
    "syntax error": "def broken(:\n",
    "import error": "import no_such_module_noblink\n" + strategy_source("imp"),
    "raising __init__": strategy_source(
        "init", extra="        raise RuntimeError('no init for you')\n"),
    "evaluate raising": strategy_source("eval").replace(
        "        self.calls += 1\n", "        raise ValueError('bad evaluate')\n"),
    "migrate raising": strategy_source("mig", schema=3).replace(
        "def migrate(old, state):\n", "def migrate(old, state):\n    raise KeyError('nope')\n"),
    "get_state not serialisable": strategy_source("gs").replace(
        '"history": self.history}', '"history": self.history, "x": object()}'),
    "hanging import": "import time\ntime.sleep(3600)\n" + strategy_source("hang"),
}


def status(run_dir: Path) -> dict | None:
    try:
        return orjson.loads((run_dir / "status.json").read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


class Bot:
    """`noblink run` against the sim in ``run_dir``; stop() checks that nothing is left."""

    def __init__(self, tmp: Path, *, speed: float = 30, strategy: str | None = None,
                 args: tuple[str, ...] = ("--no-api",), explicit: bool = True) -> None:
        self.tmp = tmp
        self.run_dir = tmp / "run"
        self.strategy = tmp / "strategy.py"
        self.strategy.write_text(strategy or strategy_source("v0"))
        self.log = tmp / "supervisor.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor.cli", "run", "--speed", str(speed),
                 "--run-dir", str(self.run_dir),
                 *(["--strategy", str(self.strategy)] if explicit else []), *args],
                stdout=out, stderr=subprocess.STDOUT)
        self.run_id = ""

    # -- reading ----------------------------------------------------------------------------

    def status(self) -> dict:
        return status(self.run_dir) or {}

    def tail(self, n: int = 4000) -> str:
        text = self.log.read_text(errors="replace")[-n:]
        logs = self.run_dir / "logs"
        for name in ("strategy0.log", "strategy1.log", "strategy0.jsonl", "strategy1.jsonl",
                     "supervisor.jsonl"):
            if (logs / name).exists():
                text += f"\n--- {name}\n" + (logs / name).read_text(errors="replace")[-n // 2:]
        return text

    def active(self) -> dict | None:
        """Status when a strategy is active, its worker ACTIVE and no reload in flight."""
        s = self.status()
        st = s.get("strategy") or {}
        lane = st.get("active_lane")
        if not s.get("active_epoch") or lane is None or st.get("reload_in_progress") \
                or st.get("queued_reloads"):
            return None
        return s if st["lanes"][str(lane)]["state"] == "ACTIVE" else None

    def wait_active(self, timeout: float = 120) -> dict:
        s = wait_for(self.active, timeout, "an active strategy", self.tail)
        if not self.run_id:
            self.run_id = orjson.loads((self.run_dir / "run.json").read_bytes())["run_id"]
        return s

    def wait_ticks(self, n: int = 2, timeout: float = 60) -> dict:
        t0 = self.status().get("tick", 0)
        return wait_for(lambda: self.status().get("tick", 0) >= t0 + n and self.status(),
                        timeout, f"{n} more ticks", self.tail)

    def lane_of_active(self) -> dict:
        s = self.status()
        st = s["strategy"]
        return st["lanes"][str(st["active_lane"])]

    # -- commands ---------------------------------------------------------------------------

    def command(self, cmd: str, args: dict | None = None, timeout: float = 90) -> dict:
        cid = append_command(self.run_dir / "control.json", cmd, args or {})
        ack = wait_for_ack(self.run_dir / "status.json", cid, timeout)
        assert ack is not None, f"no ack for {cmd} {args}\n{self.tail()}"
        return ack

    def reload(self, args: dict | None = None, timeout: float = 90) -> tuple[dict, dict]:
        """(ack, reload record) of one reload through control.json."""
        ack = self.command("reload", args, timeout)
        rec = wait_for(lambda: next((r for r in reversed(self.status().get("reloads", []))
                                     if r.get("command_id") == ack["id"]), None), 30,
                       "the reload record", self.tail)
        return ack, rec

    def deploy(self, source: str, name: str, **args: Any) -> tuple[dict, dict]:
        path = self.tmp / f"{name}.py"
        path.write_text(source)
        return self.reload({"strategy": str(path), **args})

    # -- after the run ----------------------------------------------------------------------

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(30)
        return code

    def leftovers(self) -> list[Path]:
        if not self.run_id and (self.run_dir / "run.json").exists():
            self.run_id = orjson.loads((self.run_dir / "run.json").read_bytes())["run_id"]
        return list(SHM_DIR.glob(f"noblink-{self.run_id or 'none'}-*"))

    def kill_everything(self) -> None:
        """Test teardown: whatever happened, no process and no segment survive."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        deadline = time.monotonic() + 30
        while self._children_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        for f in self.leftovers():
            f.unlink(missing_ok=True)

    def _children_alive(self) -> list[int]:
        s = status(self.run_dir) or {}
        alive = []
        for w in (s.get("workers") or {}).values():
            pid = w.get("pid") or 0
            if pid:
                try:
                    os.kill(pid, 0)
                    alive.append(pid)
                except ProcessLookupError:
                    pass
        return alive

    def final_state(self) -> dict:
        """The strategy state saved at the clean stop (snapshot.json)."""
        doc = orjson.loads((self.run_dir / "snapshot.json").read_bytes())
        return orjson.loads(bytes.fromhex(doc["data"]))["strategy"]

    def _journal(self, query: str) -> list[dict]:
        con = sqlite3.connect(f"file:{self.run_dir / 'journal.sqlite'}?mode=ro", uri=True)
        try:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute(query)]
        finally:
            con.close()

    def journal_intents(self) -> list[dict]:
        return self._journal("SELECT * FROM intents ORDER BY id")

    def journal_orders(self) -> list[dict]:
        return self._journal("SELECT * FROM orders")


def ticks_of(state: dict) -> list[int]:
    return list(state.get("seen_ticks") or state.get("ticks") or [])


def gaps_and_duplicates(ticks: list[int]) -> tuple[list[tuple[int, int]], list[int]]:
    gaps = [(a, b) for a, b in itertools.pairwise(ticks) if b > a + 1]
    dups = [b for a, b in itertools.pairwise(ticks) if b <= a]
    return gaps, dups
