"""The command desk: turns control.json commands (and SIGHUP) into actions, and acks them.

The grammar and the exactly-once bookkeeping are in supervisor/control_file.py; this module
is what each command *does*:

- ``reload``: stage the file (a hashed, immutable copy in ``deploys/``) and queue a reload;
  acknowledged when the reload finishes: ``ok`` (the new worker is active; also a finished
  dry run), ``rolled_back`` (with the reason), or ``error`` (the request itself was bad:
  a missing file, no previous version).
- ``params``: a reload of the current version (the active one, or the one a queued reload is
  about to make active: its deployed copy, same sha256) with new params; acknowledged like a
  reload. The verification builds ``Strategy(params)``, so params the strategy refuses (its
  ``__init__`` raises) roll the reload back.
- ``pause``: the control block's pause flag (the position worker opens nothing while it is
  set); acknowledged at once.
- ``kill``: clears kill_done, sets pause and kill; the position worker then cancels every open
  order at the venue, journals it and sets kill_done. Acknowledged ``ok`` by :meth:`step` once
  kill_done is set, or ``error`` after ``kill_timeout_s`` (30 s) naming what is missing; the
  flags stay set either way.
- ``resume``: the operator's explicit all-clear: clears pause, kill and kill_done (a pending
  kill is then acknowledged as an error); acknowledged at once.
- ``stop``: acknowledged, then the supervisor shuts down in order.

:meth:`poll` runs new commands; :meth:`step` (the arbiter calls it every loop iteration)
acknowledges those that finish later (kill). Reloads are acknowledged by
:meth:`reload_done`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from core.errors import InputError, OperatorError
from position_worker.lifecycle import WorkerState
from state.control import ControlBlock, WorkerSlot
from state.run import RunPaths
from supervisor.control_file import (
    INTERRUPTED,
    KILL_TIMEOUT_S,
    LEDGER_NAME,
    Command,
    CommandLedger,
    ControlReader,
)
from supervisor.deploys import Deployment
from supervisor.lanes import Lanes
from supervisor.reload import Reload, ReloadRequest

log = logging.getLogger("supervisor.commands")


@dataclass(frozen=True)
class PendingKill:
    """A kill waiting for the position worker's kill_done."""

    command_id: str
    deadline: float                 # desk clock (monotonic s)


class CommandDesk:
    def __init__(self, paths: RunPaths, control: ControlBlock, lanes: Lanes,
                 request_stop: Callable[[], None], *,
                 clock: Callable[[], float] = time.monotonic,
                 kill_timeout_s: float = KILL_TIMEOUT_S) -> None:
        self.paths = paths
        self.control = control
        self.lanes = lanes
        self.request_stop = request_stop
        self.clock = clock
        self.kill_timeout_s = kill_timeout_s
        self.kills: list[PendingKill] = []
        self.ledger = CommandLedger(paths.run_dir / LEDGER_NAME)
        self.reader = ControlReader(paths.control_json, self.ledger)
        for rec in self.ledger.interrupted():
            self.ledger.done(rec["id"], "error", INTERRUPTED)

    # -- sources ----------------------------------------------------------------------------

    def poll(self) -> None:
        """Run every new command of control.json, in file order (each exactly once)."""
        commands, _errors = self.reader.poll()        # errors are acked and logged already
        for cmd in commands:
            self.run(cmd)

    def step(self) -> None:
        """Acknowledge commands that finish after :meth:`run` returned: each pending kill,
        ``ok`` once the position worker set kill_done, ``error`` at its deadline. Called by
        the arbiter every loop iteration; cheap when nothing is pending."""
        if not self.kills:
            return
        if self.control.killed and self.control.kill_confirmed:
            for k in self.kills:
                log.warning("command %s: kill confirmed by the position worker", k.command_id)
                self.ledger.done(k.command_id, "ok")
            self.kills = []
            return
        now = self.clock()
        late = [k for k in self.kills if now >= k.deadline]
        if not late:
            return
        why = self._kill_missing()
        for k in late:
            self.ledger.done(k.command_id, "error", why)
        self.kills = [k for k in self.kills if k not in late]

    def sighup(self) -> None:
        """systemd's ExecReload: reload the current strategy file (re-read from disk)."""
        cur = self.lanes.latest_deployment()
        if cur is None:
            log.warning("SIGHUP: no strategy deployed yet; ignored")
            return
        try:
            d = self.lanes.deploys.stage(Path(cur.source), cur.params)
        except InputError as e:
            log.error("SIGHUP: %s", e)
            return
        log.info("SIGHUP: reloading %s (%s)", d.source, d.short)
        self.lanes.request(ReloadRequest("sighup", d))

    def start_strategy(self, source: Path | None, params_json: str | None,
                       default: Path) -> None:
        """The first strategy of this run: a reload from nothing. Without an explicit
        ``--strategy`` it is the version that was active last in this run directory (an
        operator's reloads survive a restart), else ``default``."""
        params: dict | None = None
        if params_json is not None:
            try:
                params = orjson.loads(params_json)
            except orjson.JSONDecodeError as e:
                raise OperatorError(f"--params is not JSON: {e}") from e
            if not isinstance(params, dict):
                raise OperatorError("--params must be a JSON object")
        d = self._last_deployed() if source is None else None
        try:
            if d is None:
                d = self.lanes.deploys.stage(Path(source or default), params or {})
            elif params is not None:
                d = Deployment(d.source, d.sha256, d.path, params)
        except InputError as e:
            raise OperatorError(str(e)) from e
        self.lanes.current = None
        self.lanes.request(ReloadRequest("start", d))

    def _last_deployed(self) -> Deployment | None:
        history = self.lanes.deploys.history()
        if not history:
            return None
        try:
            d = self.lanes.deploys.by_sha(str(history[-1].get("sha256", "")),
                                          history[-1].get("params", {}))
        except InputError as e:
            log.warning("the last deployed version is not usable (%s): starting the default",
                        e)
            return None
        log.info("continuing with the last deployed version %s (%s)", d.short, d.source)
        return d

    # -- actions ----------------------------------------------------------------------------

    def run(self, cmd: Command) -> None:
        log.info("command %s: %s %s", cmd.id, cmd.cmd, cmd.args or "")
        try:
            if cmd.cmd == "reload":
                self._reload(cmd)
                return                              # acknowledged when it finishes
            if cmd.cmd == "params":
                self._params(cmd)
                return                              # acknowledged when the reload finishes
            if cmd.cmd == "kill":
                self._kill(cmd)
                return                              # acknowledged by step()
            if cmd.cmd == "pause":
                self.control.set_paused(True)
            elif cmd.cmd == "resume":
                self._resume(cmd)
            elif cmd.cmd == "stop":
                self.request_stop()
            else:                                   # the grammar admits nothing else
                raise InputError(f"no handler for {cmd.cmd!r}")
        except (InputError, OperatorError) as e:
            self.ledger.done(cmd.id, "error", str(e))
            return
        except Exception as e:     # a bug or an input nobody foresaw: refuse it, keep running
            log.exception("command %s (%s) failed", cmd.id, cmd.cmd)
            self.ledger.done(cmd.id, "error", f"{type(e).__name__}: {e}")
            return
        self.ledger.done(cmd.id, "ok")

    def _reload(self, cmd: Command) -> None:
        a = cmd.args
        cur = self.lanes.current
        params = a.get("params")
        if a.get("previous"):
            d = self.lanes.deploys.previous(cur.sha256 if cur else "")
            if params is not None:
                d = Deployment(d.source, d.sha256, d.path, dict(params))
        elif a.get("to"):
            d = self.lanes.deploys.by_sha(a["to"], params)
        else:
            source = a.get("strategy") or (cur.source if cur else None)
            if source is None:
                raise InputError("no strategy file given and none deployed")
            base = cur.params if cur is not None else {}
            d = self.lanes.deploys.stage(Path(source), dict(base if params is None else params))
        req = ReloadRequest("command", d, command_id=cmd.id, shadow=int(a.get("shadow", 0)),
                            dry_run=bool(a.get("dry_run", False)))
        timeout = a.get("timeout")
        if timeout is not None:
            req.verify_timeout_s = float(timeout)
        self.lanes.request(req)

    def _params(self, cmd: Command) -> None:
        # the version that is active or about to be (a queued reload's), as for SIGHUP
        cur = self.lanes.latest_deployment()
        if cur is None:
            raise InputError("no strategy is deployed: nothing to give params to")
        if not cur.path.exists():
            raise InputError(f"the active version's deployed copy {cur.path} is gone")
        d = Deployment(cur.source, cur.sha256, cur.path, dict(cmd.args["params"]))
        self.lanes.request(ReloadRequest("command", d, command_id=cmd.id))

    def _kill(self, cmd: Command) -> None:
        # kill_done first: a confirmation left from an earlier kill must not ack this one
        self.control.set_kill_confirmed(False)
        self.control.set_paused(True)
        self.control.set_killed(True)
        self.kills.append(PendingKill(cmd.id, self.clock() + self.kill_timeout_s))
        log.warning("command %s: kill switch set; waiting for the position worker to cancel "
                    "every open order", cmd.id)

    def _resume(self, cmd: Command) -> None:
        was_killed = self.control.killed
        self.control.set_killed(False)
        self.control.set_kill_confirmed(False)
        self.control.set_paused(False)
        if was_killed:
            log.warning("command %s: kill switch cleared by the operator", cmd.id)
        for k in self.kills:
            self.ledger.done(k.command_id, "error", f"resumed (command {cmd.id}) before the "
                             "position worker confirmed the kill")
        self.kills = []

    def _kill_missing(self) -> str:
        """Why a kill is not confirmed: what the position worker's slot shows."""
        head = (f"kill not confirmed within {self.kill_timeout_s:g}s: the position worker "
                "has not set kill_done (open orders may still rest at the venue; trading "
                "stays paused)")
        if not self.control.killed:
            return f"{head}; the kill flag was cleared meanwhile"
        w = self.control.worker(WorkerSlot.POSITION)
        if not w["pid"] or not w["alive"]:
            return f"{head}; no position worker is running"
        try:
            state = WorkerState(w["state"]).name
        except ValueError:
            state = str(w["state"])
        age = (time.monotonic_ns() - w["heartbeat_ns"]) / 1e9
        return (f"{head}; position worker pid {w['pid']} is {state}, last heartbeat "
                f"{age:.1f}s ago (its log says why)")

    def reload_done(self, r: Reload, rec: dict[str, Any]) -> None:
        """Acknowledge the command behind a finished reload."""
        if r.req.command_id is None:
            return
        if rec["result"] in ("ok", "dry_run", "reverted"):
            self.ledger.done(r.req.command_id, "ok")
        else:
            self.ledger.done(r.req.command_id, "rolled_back", rec.get("error"))

    def records(self) -> list[dict[str, Any]]:
        return self.ledger.records()
