"""The command desk without a bot: kill (pending until the position worker confirms, or an
error at the deadline), resume clearing the kill switch, params turned into a reload."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from position_worker.lifecycle import WorkerState
from state.control import ControlBlock, WorkerSlot
from state.layout import WorkerRole
from state.run import RunPaths
from supervisor.commands import CommandDesk
from supervisor.control_file import Command
from supervisor.deploys import Deployment
from supervisor.reload import ReloadRequest


@dataclass
class FakeLanes:
    """What the desk asks of Lanes for these commands."""

    deployment: Deployment | None = None
    requests: list[ReloadRequest] = field(default_factory=list)

    def latest_deployment(self) -> Deployment | None:
        return self.deployment

    def request(self, req: ReloadRequest) -> None:
        self.requests.append(req)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Desk:
    desk: CommandDesk
    control: ControlBlock
    lanes: FakeLanes
    clock: Clock

    def send(self, cid: str, name: str, args: dict | None = None) -> None:
        cmd = Command(cid, name, args or {})
        self.desk.ledger.received(cmd)          # what ControlReader.poll does first
        self.desk.run(cmd)

    def ack(self, cid: str) -> dict:
        return next(r for r in self.desk.records() if r["id"] == cid)

    def flags(self) -> tuple[bool, bool, bool]:
        c = self.control
        return c.paused, c.killed, c.kill_confirmed


@pytest.fixture
def d(run_paths: RunPaths, control: ControlBlock) -> Desk:
    lanes, clock = FakeLanes(), Clock()
    desk = CommandDesk(run_paths, control, lanes, lambda: None,  # type: ignore[arg-type]
                       clock=clock, kill_timeout_s=30.0)
    return Desk(desk, control, lanes, clock)


def test_kill_sets_the_flags_and_is_acked_when_the_position_worker_confirms(d: Desk) -> None:
    d.control.set_kill_confirmed(True)          # left over from an earlier kill
    d.send("k1", "kill")
    assert d.flags() == (True, True, False)     # the stale confirmation is cleared first
    d.desk.step()
    assert d.ack("k1")["result"] is None        # pending
    d.clock.t += 29
    d.desk.step()
    assert d.ack("k1")["result"] is None
    d.control.set_kill_confirmed(True)          # the position worker: cancelled, journaled
    d.desk.step()
    assert d.ack("k1")["result"] == "ok" and d.ack("k1")["error"] is None
    assert d.desk.kills == []
    assert d.flags() == (True, True, True)      # it stays killed until an operator resumes


def test_two_kills_are_both_acked_by_one_confirmation(d: Desk) -> None:
    d.send("k1", "kill")
    d.clock.t += 5
    d.send("k2", "kill")
    d.control.set_kill_confirmed(True)
    d.desk.step()
    assert d.ack("k1")["result"] == d.ack("k2")["result"] == "ok"


def test_kill_not_confirmed_in_time_is_an_error_naming_what_is_missing(d: Desk) -> None:
    d.send("k1", "kill")
    d.clock.t += 30
    d.desk.step()
    rec = d.ack("k1")
    assert rec["result"] == "error"
    assert "kill_done" in rec["error"] and "30s" in rec["error"]
    assert "no position worker is running" in rec["error"]
    assert d.flags() == (True, True, False)     # still paused and killed: fail safe

    d.control.register(WorkerSlot.POSITION, WorkerRole.POSITION,
                       state=int(WorkerState.RECOVERING), now_ns=time.monotonic_ns())
    d.send("k2", "kill")
    d.clock.t += 31
    d.desk.step()
    err = d.ack("k2")["error"]
    assert "RECOVERING" in err and "last heartbeat" in err, err
    d.control.set_kill_confirmed(True)          # too late for k2: acked once, as error
    d.desk.step()
    assert d.ack("k2")["result"] == "error"


def test_resume_clears_the_kill_switch_and_fails_a_pending_kill(d: Desk) -> None:
    d.send("k1", "kill")
    d.send("r1", "resume")
    assert d.flags() == (False, False, False)
    assert d.ack("r1")["result"] == "ok"
    k = d.ack("k1")
    assert k["result"] == "error" and "resumed (command r1)" in k["error"]
    d.desk.step()                               # nothing pending any more
    assert d.desk.kills == []
    # after a confirmed kill, resume clears kill_done as well
    d.send("k2", "kill")
    d.control.set_kill_confirmed(True)
    d.desk.step()
    d.send("r2", "resume")
    assert d.flags() == (False, False, False)


def test_pause_and_resume_leave_no_kill_behind(d: Desk) -> None:
    d.send("p1", "pause")
    assert d.flags() == (True, False, False) and d.ack("p1")["result"] == "ok"
    d.send("r1", "resume")
    assert d.flags() == (False, False, False)


def test_params_reloads_the_current_version_with_the_new_params(d: Desk,
                                                                tmp_path: Path) -> None:
    copy = tmp_path / "deploys" / "abc.py"
    copy.parent.mkdir()
    copy.write_text("# the deployed copy\n")
    d.lanes.deployment = Deployment("/src/momentum.py", "ab" * 32, copy, {"edge": 0.01})
    d.send("p1", "params", {"params": {"x": 1}})
    (req,) = d.lanes.requests
    assert req.trigger == "command" and req.command_id == "p1"
    assert req.deployment == Deployment("/src/momentum.py", "ab" * 32, copy, {"x": 1})
    assert not req.dry_run and req.shadow == 0
    assert d.ack("p1")["result"] is None        # acked when the reload finishes

    @dataclass
    class R:
        req: ReloadRequest

    d.desk.reload_done(R(req), {"result": "rolled_back", "error": "ValueError: bad x"})
    assert d.ack("p1")["result"] == "rolled_back" and "bad x" in d.ack("p1")["error"]


def test_params_without_a_deployment_is_refused(d: Desk, tmp_path: Path) -> None:
    d.send("p1", "params", {"params": {}})
    assert d.ack("p1")["result"] == "error" and "no strategy is deployed" in d.ack("p1")["error"]
    d.lanes.deployment = Deployment("/src/s.py", "cd" * 32, tmp_path / "gone.py", {})
    d.send("p2", "params", {"params": {}})
    assert d.ack("p2")["result"] == "error" and "is gone" in d.ack("p2")["error"]
    assert d.lanes.requests == []
