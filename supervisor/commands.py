"""The command desk: turns control.json commands (and SIGHUP) into actions, and acks them.

The grammar and the exactly-once bookkeeping are in supervisor/control_file.py; this module
is what each command *does*:

- ``reload``: stage the file (a hashed, immutable copy in ``deploys/``) and queue a reload;
  acknowledged when the reload finishes: ``ok`` (the new worker is active; also a finished
  dry run), ``rolled_back`` (with the reason), or ``error`` (the request itself was bad:
  a missing file, no previous version).
- ``pause`` / ``resume``: the control block's pause flag (the position worker opens nothing
  while it is set); acknowledged at once.
- ``stop``: acknowledged, then the supervisor shuts down in order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from core.errors import InputError, OperatorError
from state.control import ControlBlock
from state.run import RunPaths
from supervisor.control_file import INTERRUPTED, Command, CommandLedger, ControlReader
from supervisor.deploys import Deployment
from supervisor.lanes import Lanes
from supervisor.reload import Reload, ReloadRequest

log = logging.getLogger("supervisor.commands")


class CommandDesk:
    def __init__(self, paths: RunPaths, control: ControlBlock, lanes: Lanes,
                 request_stop: Callable[[], None]) -> None:
        self.paths = paths
        self.control = control
        self.lanes = lanes
        self.request_stop = request_stop
        self.ledger = CommandLedger(paths.run_dir / "commands.json")
        self.reader = ControlReader(paths.control_json, self.ledger)
        for rec in self.ledger.interrupted():
            self.ledger.done(rec["id"], "error", INTERRUPTED)

    # -- sources ----------------------------------------------------------------------------

    def poll(self) -> None:
        """Run every new command of control.json, in file order (each exactly once)."""
        commands, _errors = self.reader.poll()        # errors are acked and logged already
        for cmd in commands:
            self.run(cmd)

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

    def start_strategy(self, source: Path, params_json: str) -> None:
        """The first strategy of this run: a reload from nothing."""
        try:
            params = orjson.loads(params_json)
        except orjson.JSONDecodeError as e:
            raise OperatorError(f"--params is not JSON: {e}") from e
        if not isinstance(params, dict):
            raise OperatorError("--params must be a JSON object")
        try:
            d = self.lanes.deploys.stage(Path(source), params)
        except InputError as e:
            raise OperatorError(str(e)) from e
        self.lanes.current = None
        self.lanes.request(ReloadRequest("start", d))

    # -- actions ----------------------------------------------------------------------------

    def run(self, cmd: Command) -> None:
        log.info("command %s: %s %s", cmd.id, cmd.cmd, cmd.args or "")
        try:
            if cmd.cmd == "reload":
                self._reload(cmd)
                return                              # acknowledged when it finishes
            if cmd.cmd == "pause":
                self.control.set_paused(True)
            elif cmd.cmd == "resume":
                self.control.set_paused(False)
            elif cmd.cmd == "stop":
                self.request_stop()
            else:                                   # the grammar admits nothing else
                raise InputError(f"no handler for {cmd.cmd!r}")
        except (InputError, OperatorError) as e:
            self.ledger.done(cmd.id, "error", str(e))
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
