"""The CLI's queries and commands against a fake run dir (no bot): params get/set, kill,
positions from a journal with the real schema, logs (tail, interleave, follow, rotation)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from position_worker.journal import Journal
from supervisor.cli import main
from supervisor.control_file import Command, CommandLedger, ControlReader
from supervisor.ctl import LogFollower, logs_main, merge_logs, open_journal, tail_lines


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:                    # argparse: usage errors
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def rd(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    d.mkdir()
    return d


def write_status(rd: Path, **doc: Any) -> None:
    (rd / "status.json").write_bytes(orjson.dumps({"written_at": time.time(), **doc}))


# --- params get ------------------------------------------------------------------------------

STRATEGY = {"sha256": "7cd9" + "0" * 60, "strategy": "/src/momentum.py",
            "params": {"x": 1, "edge": 0.02, "assets": ["btc", "eth"]}}


def test_params_get(rd: Path, capsys) -> None:
    write_status(rd, strategy=STRATEGY)
    code, out, err = run(capsys, "params", "get", "--run-dir", str(rd))
    assert code == 0 and err == ""
    assert out.splitlines() == ["params of 7cd900000000 (/src/momentum.py):",
                                '  assets = ["btc","eth"]', "  edge = 0.02", "  x = 1"]
    code, out, _ = run(capsys, "params", "get", "--json", "--run-dir", str(rd))
    assert code == 0 and orjson.loads(out) == STRATEGY["params"]


def test_params_get_failures(rd: Path, capsys) -> None:
    code, _, err = run(capsys, "params", "get", "--run-dir", str(rd))
    assert code == 3 and "no status.json" in err
    write_status(rd, strategy={"params": None})
    code, _, err = run(capsys, "params", "get", "--run-dir", str(rd))
    assert code == 1 and "no strategy is active" in err
    (rd / "status.json").write_bytes(orjson.dumps({"written_at": time.time() - 600,
                                                   "strategy": {**STRATEGY, "params": {}}}))
    code, out, err = run(capsys, "params", "get", "--run-dir", str(rd))
    assert code == 0 and "(none)" in out and "600s old" in err
    code, _, err = run(capsys, "params", "--run-dir", str(rd))
    assert code == 2 and "get|set" in err
    code, _, _ = run(capsys, "params", "frob", "--run-dir", str(rd))
    assert code == 2


def test_params_set_refusals_without_waiting(rd: Path, capsys) -> None:
    code, _, err = run(capsys, "params", "set", '{"x": 1}', "--run-dir", str(rd))
    assert code == 3 and "no bot" in err                  # no run.json
    (rd / "run.json").write_text("{}")
    code, _, err = run(capsys, "params", "set", "{x: 1}", "--run-dir", str(rd))
    assert code == 2 and "not JSON" in err
    code, _, err = run(capsys, "params", "set", "[1, 2]", "--run-dir", str(rd))
    assert code == 2 and "params must be an object, not an array" in err
    assert not (rd / "control.json").exists()             # nothing was sent
    code, _, _ = run(capsys, "params", "set", "--run-dir", str(rd))
    assert code == 2                                      # JSON missing


# --- commands against a fake supervisor ------------------------------------------------------

class FakeSupervisor:
    """Reads control.json like the supervisor, answers each command with ``answer(cmd)`` ->
    (result, error, reload record or None), and writes status.json."""

    def __init__(self, rd: Path, answer: Callable[[Command], tuple[str, str | None,
                                                                     dict | None]]) -> None:
        (rd / "run.json").write_text("{}")
        self.rd = rd
        self.answer = answer
        self.seen: list[Command] = []
        self.ledger = CommandLedger(rd / "commands.json")
        self.reader = ControlReader(rd / "control.json", self.ledger)
        self.reloads: list[dict] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            cmds, _ = self.reader.poll()
            for c in cmds:
                self.seen.append(c)
                result, error, rec = self.answer(c)
                if rec is not None:
                    self.reloads.append({**rec, "command_id": c.id})
                self.ledger.done(c.id, result, error)
            write_status(self.rd, commands=self.ledger.records(), reloads=self.reloads)
            self._stop.wait(0.02)

    def close(self) -> None:
        self._stop.set()
        self._t.join(5)


@pytest.fixture
def fake_sup(rd: Path) -> Iterator[Callable[..., FakeSupervisor]]:
    made: list[FakeSupervisor] = []

    def make(answer: Callable[[Command], tuple[str, str | None, dict | None]]
             ) -> FakeSupervisor:
        s = FakeSupervisor(rd, answer)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


RELOAD_REC = {"id": "eebf21b0", "trigger": "command", "result": "ok", "error": None,
              "from_epoch": 1, "to_epoch": 2, "sha256": "7cd9" + "0" * 60, "params": {"x": 1},
              "handoff_ms": 4.2, "last_tick_old": 135, "first_tick_new": 136,
              "missed_ticks": 0, "duplicate_ticks": 0}


def test_params_set_waits_for_the_reload(rd: Path, capsys, fake_sup) -> None:
    sup = fake_sup(lambda c: ("ok", None, RELOAD_REC))
    code, out, err = run(capsys, "params", "set", '{"x": 1}', "--run-dir", str(rd))
    assert code == 0, err
    assert sup.seen[0].cmd == "params" and sup.seen[0].args == {"params": {"x": 1}}
    assert "epoch 1 -> 2" in out
    code, out, _ = run(capsys, "params", "set", '{"x": 1}', "--json", "--run-dir", str(rd))
    assert code == 0 and orjson.loads(out)["params"] == {"x": 1}


def test_params_set_rolled_back(rd: Path, capsys, fake_sup) -> None:
    fake_sup(lambda c: ("rolled_back", "ValueError: x must be positive",
                        {**RELOAD_REC, "result": "rolled_back"}))
    code, out, err = run(capsys, "params", "set", '{"x": -1}', "--run-dir", str(rd))
    assert code == 1 and out == ""
    assert "rolled_back: ValueError: x must be positive" in err


def test_kill_ok_and_error(rd: Path, capsys, fake_sup) -> None:
    answers = iter([("ok", None, None), ("error", "kill not confirmed within 30s: ...", None),
                    ("ok", None, None)])
    sup = fake_sup(lambda c: next(answers))
    code, out, err = run(capsys, "kill", "--run-dir", str(rd))
    assert code == 0 and out.startswith("kill: ok") and "noblink resume" in out, err
    code, out, err = run(capsys, "kill", "--run-dir", str(rd))
    assert code == 1 and out == "" and "kill not confirmed within 30s" in err
    code, out, _ = run(capsys, "kill", "--json", "--run-dir", str(rd))
    assert code == 0 and orjson.loads(out)["result"] == "ok"
    assert [c.cmd for c in sup.seen] == ["kill"] * 3 and sup.seen[0].args == {}


def test_kill_without_an_answer(rd: Path, capsys) -> None:
    code, _, err = run(capsys, "kill", "--run-dir", str(rd))
    assert code == 3 and "no bot" in err
    (rd / "run.json").write_text("{}")
    code, _, err = run(capsys, "kill", "--timeout", "0.2", "--run-dir", str(rd))
    assert code == 3 and "no acknowledgement" in err


# --- positions -------------------------------------------------------------------------------

def make_journal(rd: Path, n_settled: int = 3) -> Path:
    """A journal with the real schema: two open orders, ``n_settled`` settled ones (wins on
    even i), one rejected."""
    path = rd / "journal.sqlite"
    Journal(path).close()                       # creates the schema, as the worker does
    con = sqlite3.connect(path)
    t0 = 1_700_000_100

    def order(ck: str, slot: int, ws: int, state: str, **kw: Any) -> None:
        row = {"client_key": ck, "idem_key": f"{slot}:{ws}", "slot": slot, "window_start": ws,
               "end_ts": ws + 300, "slug": f"btc-updown-5m-{ws}", "condition_id": "0xc",
               "outcome": 0, "token": f"tok{ck}", "stake": 5.0, "max_price": 0.6, "epoch": 1,
               "state": state, "order_id": f"0x{ck}", "created_ns": ws * 10**9, **kw}
        con.execute(f"INSERT INTO orders({','.join(row)}) VALUES({','.join('?' * len(row))})",
                    list(row.values()))

    order("open1", 0, t0 + 900, "FILLED", shares=10.0, cost=5.0, fees=0.175)
    order("open2", 1, t0 + 900, "ACKED", outcome=1)
    order("rej", 2, t0, "REJECTED", error="no liquidity")
    for i in range(n_settled):
        win = i % 2 == 0
        payout, pnl = (10.0, 10.0 - 5.0 - 0.175) if win else (0.0, -5.175)
        ws = t0 + 300 * i
        order(f"s{i}", 3, ws, "SETTLED", shares=10.0, cost=5.0, fees=0.175, payout=payout,
              pnl=pnl, settled_ns=(ws + 400) * 10**9, settled_ts=float(ws + 400))
        con.execute("INSERT INTO settlements VALUES(?,?,?,?,?,?,?,?,?,?)",
                    (f"s{i}", f"btc-updown-5m-{ws}", "up" if win else "down", payout, 5.0,
                     0.175, pnl, int(win), (ws + 400) * 10**9, float(ws + 400)))
    con.commit()
    con.close()
    return path


def test_positions(rd: Path, capsys) -> None:
    path = make_journal(rd)
    before = path.read_bytes()
    code, out, err = run(capsys, "positions", "--json", "--limit", "2", "--run-dir", str(rd))
    assert code == 0, err
    doc = orjson.loads(out)
    assert [p["client_key"] for p in doc["open"]] == ["open1", "open2"]
    assert [p["outcome"] for p in doc["open"]] == ["Up", "Down"]
    assert doc["open"][0]["avg_price"] == pytest.approx(0.5)
    assert [p["client_key"] for p in doc["settled"]] == ["s2", "s1"]     # newest first
    assert doc["settled"][0]["winner"] == "up" and doc["settled"][0]["pnl"] > 0
    t = doc["totals"]
    assert (t["open"], t["settled"], t["wins"], t["losses"]) == (2, 3, 2, 1)
    assert t["pnl"] == pytest.approx(2 * 4.825 - 5.175)
    assert t["exposure"] == pytest.approx(5.0 + 5.0)
    code, out, _ = run(capsys, "positions", "--run-dir", str(rd))
    assert code == 0
    assert "open (2, exposure 10.00)" in out and "settled (newest 3 of 3)" in out
    assert "rej" not in out and "+4.83" in out and "-5.17" in out
    assert "all settled: 3  wins 2  losses 1  pnl +4.47" in out
    assert path.read_bytes() == before          # read-only


def test_positions_opens_the_journal_read_only_beside_a_writer(rd: Path, capsys) -> None:
    path = make_journal(rd, n_settled=0)
    writer = Journal(path)                      # the worker holds it open (WAL)
    try:
        con = open_journal(path)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            con.execute("DELETE FROM orders")
        con.close()
        code, out, _ = run(capsys, "positions", "--run-dir", str(rd))
        assert code == 0 and "settled (newest 0 of 0):\n  (none)" in out
    finally:
        writer.close()


def test_positions_failures(rd: Path, capsys) -> None:
    code, _, err = run(capsys, "positions", "--run-dir", str(rd))
    assert code == 3 and "no journal" in err
    assert not (rd / "journal.sqlite").exists()           # mode=ro never creates one
    (rd / "journal.sqlite").write_bytes(b"not a database at all" * 100)
    code, _, err = run(capsys, "positions", "--run-dir", str(rd))
    assert code == 1 and "cannot read" in err
    code, _, _ = run(capsys, "positions", "--limit", "0", "--run-dir", str(rd))
    assert code == 2


# --- logs ------------------------------------------------------------------------------------

def write_logs(rd: Path) -> Path:
    logs = rd / "logs"
    logs.mkdir()
    (logs / "position.jsonl").write_text(
        "2025-01-02 03:04:05,100 I MainProcess[11] position_worker: started\n"
        "2025-01-02 03:04:07,000 E MainProcess[11] position_worker: boom\n"
        "Traceback (most recent call last):\n"
        "ValueError: x\n")
    (logs / "feed.jsonl").write_text(
        "2025-01-02 03:04:05,000 I MainProcess[12] feed_worker: connected\n"
        "2025-01-02 03:04:06,000 I MainProcess[12] feed_worker: tick 1\n"
        "2025-01-02 03:04:08,000 I MainProcess[12] feed_worker: tick 2\n")
    return logs


def test_logs_one_and_all(rd: Path, capsys) -> None:
    write_logs(rd)
    code, out, _ = run(capsys, "logs", "position", "-n", "2", "--run-dir", str(rd))
    assert code == 0 and out == "Traceback (most recent call last):\nValueError: x\n"
    code, out, _ = run(capsys, "logs", "feed.jsonl", "--run-dir", str(rd))
    assert code == 0 and len(out.splitlines()) == 3
    # all of them: by timestamp (a traceback stays with its record), the newest 5 overall
    code, out, _ = run(capsys, "logs", "-n", "5", "--run-dir", str(rd))
    assert code == 0
    assert out.splitlines() == [
        "feed     | 2025-01-02 03:04:06,000 I MainProcess[12] feed_worker: tick 1",
        "position | 2025-01-02 03:04:07,000 E MainProcess[11] position_worker: boom",
        "position | Traceback (most recent call last):",
        "position | ValueError: x",
        "feed     | 2025-01-02 03:04:08,000 I MainProcess[12] feed_worker: tick 2"]
    code, out, _ = run(capsys, "logs", "-n", "0", "--run-dir", str(rd))
    assert code == 0 and out == ""


def test_logs_failures(rd: Path, capsys) -> None:
    code, _, err = run(capsys, "logs", "--run-dir", str(rd))
    assert code == 3 and "no logs" in err
    write_logs(rd)
    code, _, err = run(capsys, "logs", "strategy7", "--run-dir", str(rd))
    assert code == 1 and "have: feed, position" in err
    for bad in ("../etc/passwd", ".hidden", "a/b"):
        code, _, err = run(capsys, "logs", bad, "--run-dir", str(rd))
        assert code == 2 and "bad log name" in err, bad
    code, _, _ = run(capsys, "logs", "-n", "-1", "--run-dir", str(rd))
    assert code == 2


def test_tail_lines_reads_backwards_and_leaves_a_partial_line(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    p.write_bytes(b"".join(b"line %d\n" % i for i in range(5000)) + b"partial")
    lines, offset = tail_lines(p, 3, block=100)
    assert lines == ["line 4997", "line 4998", "line 4999"]
    assert offset == p.stat().st_size - len(b"partial")
    assert tail_lines(p, 0) == ([], offset)
    e = tmp_path / "empty.jsonl"
    e.write_bytes(b"")
    assert tail_lines(e, 10) == ([], 0)


def test_follower_appends_partial_lines_rotation_truncation_and_new_files(
        tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    pos = logs / "position.jsonl"
    pos.write_bytes(b"old 1\nold 2\n")
    f = LogFollower(logs, None, {"position": pos.stat().st_size})
    try:
        assert f.poll() == []
        with open(pos, "ab") as w:
            w.write(b"new 1\nnew ")
        assert f.poll() == [("position", "new 1")]          # the partial line waits
        with open(pos, "ab") as w:
            w.write(b"2\n")
        assert f.poll() == [("position", "new 2")]
        # rotation: renamed away with a last line written to the old file, a new file
        with open(pos, "ab") as w:
            w.write(b"last of old\n")
        os.rename(pos, logs / "position.jsonl.1")
        assert f.poll() == [("position", "last of old")]     # no new file yet: keep reading
        pos.write_bytes(b"first of new\n")
        assert f.poll() == [("position", "first of new")]
        # truncated in place (copytruncate), seen while it is shorter than what was read
        with open(pos, "r+b") as w:
            w.truncate(0)
        with open(pos, "ab") as w:
            w.write(b"cut\n")
        assert f.poll() == [("position", "cut")]
        # a log that appears later is followed from its start
        (logs / "strategy1.jsonl").write_bytes(b"hello from lane 1\n")
        assert f.poll() == [("strategy1", "hello from lane 1")]
    finally:
        f.close()


def test_logs_follow_until_ctrl_c(rd: Path, capsys) -> None:
    logs = write_logs(rd)
    steps = iter([
        lambda: (logs / "feed.jsonl").open("a").write("2025-01-02 03:04:09,000 I x: tick 3\n"),
        lambda: os.rename(logs / "position.jsonl", logs / "position.jsonl.1"),
        lambda: (logs / "position.jsonl").write_text("2025-01-02 03:04:10,000 I x: reborn\n"),
    ])

    def sleep(_s: float) -> None:
        step = next(steps, None)
        if step is None:
            raise KeyboardInterrupt
        step()

    code = logs_main(["-n", "1", "--follow", "--run-dir", str(rd)], sleep=sleep, poll_s=0)
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines() == ["feed     | 2025-01-02 03:04:08,000 I MainProcess[12] "
                                "feed_worker: tick 2",
                                "feed     | 2025-01-02 03:04:09,000 I x: tick 3",
                                "position | 2025-01-02 03:04:10,000 I x: reborn"]


def test_merge_by_timestamp_also_for_json_lines() -> None:
    tails = {"feed": ['{"ts": "2025-01-02T03:04:06.000Z", "level": "INFO", "msg": "b"}',
                      '{"ts": "2025-01-02T03:04:08.000Z", "level": "INFO", "msg": "d"}'],
             "position": ["2025-01-02 03:04:05,000 I p: a",
                          "2025-01-02 03:04:07,000 E p: c", "Traceback: c's"],
             "sim": ["no timestamp 1", "no timestamp 2"]}
    merged = merge_logs(tails, 100)
    order = [(n, ln.rsplit(" ", 1)[-1].strip('"}')) for n, ln in merged if n != "sim"]
    assert order == [("position", "a"), ("feed", "b"), ("position", "c"),
                     ("position", "c's"), ("feed", "d")], order
    assert [ln for n, ln in merged if n == "sim"] == ["no timestamp 1", "no timestamp 2"]
    assert len(merge_logs(tails, 2)) == 2 and merge_logs(tails, 0) == []
