"""Commands over HTTP: validated with control.json's own grammar, written with the CLI's own
writer, acknowledged through status.json.

:func:`command_args` checks a request body against :data:`supervisor.control_file.COMMANDS`
(via ``parse_command``, the authority) and names the offending field from the command's
``Arg`` specs, so a command or an arg added there is served here without a change.
:func:`send` runs ``append_command`` (it takes an flock) in a thread; :func:`wait_for_ack` is
the asynchronous twin of ``control_file.wait_for_ack``.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from api_worker.errors import ApiError
from api_worker.reader import JsonFile, matches
from core.errors import InputError, OperatorError
from supervisor.control_file import (
    COMMANDS,
    ID_RE,
    CommandSpec,
    IdReused,
    append_command,
    json_type,
    parse_command,
    type_ok,
)

ACK_TIMEOUT_S = 30.0            # pause, resume, stop (the CLI's default)
KILL_TIMEOUT_S = 45.0           # the supervisor gives the position worker 30 s to confirm
RELOAD_EXTRA_S = 60.0           # reload: (timeout or 30) + 60 (+ 20 per shadow tick), as the CLI
RECORD_WAIT_S = 5.0             # after a reload's ack, for its record to show up
RELOADS = frozenset({"reload", "params"})


def _field(spec: CommandSpec, args: dict[str, Any]) -> str:
    """The arg parse_command refused, from the spec; "args" for a check across args."""
    for key, value in args.items():
        arg = spec.args.get(key)
        if arg is None or not type_ok(value, arg.types) or (arg.check and arg.check(value)):
            return str(key)
    for key, arg in spec.args.items():
        if getattr(arg, "required", False) and key not in args:
            return key
    return "args"


def command_args(name: str, body: object) -> dict[str, Any]:
    """The validated args of command ``name`` from a request body; ApiError 400 otherwise."""
    spec = COMMANDS.get(name)
    if spec is None:
        raise ApiError(400, f"unknown command {name!r} (known: {', '.join(COMMANDS)})",
                       field="cmd")
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, not {json_type(body)}",
                       field="body")
    try:
        cmd = parse_command({"id": "api", "cmd": name, "args": body})
    except InputError as e:
        raise ApiError(400, str(e), field=_field(spec, body)) from None
    strategy = cmd.args.get("strategy")
    if isinstance(strategy, str) and not os.path.isabs(strategy):
        raise ApiError(400, f"{name}: strategy must be an absolute path (the supervisor does "
                       "not share your working directory)", field="strategy")
    return cmd.args


def params_command(body: object) -> tuple[str, dict[str, Any]]:
    """POST /api/params: the ``params`` command, or a reload with params where the grammar
    has no ``params`` command."""
    if "params" in COMMANDS:
        return "params", command_args("params", body)
    if not isinstance(body, dict) or set(body) != {"params"}:
        raise ApiError(400, 'the body must be {"params": {...}}', field="params")
    return "reload", command_args("reload", body)


def ack_timeout(name: str, args: dict[str, Any]) -> float:
    if name in RELOADS:
        shadow = args.get("shadow") or 0
        return float(args.get("timeout") or 30.0) + RELOAD_EXTRA_S + 20.0 * shadow
    return KILL_TIMEOUT_S if name == "kill" else ACK_TIMEOUT_S


async def send(control_json: Path, name: str, args: dict[str, Any],
               key: str | None = None) -> str:
    """Append the command to control.json (flock, tmp + rename) in a thread; its id.

    ``key`` (the request's Idempotency-Key) becomes the command id: a client that retries a
    request it got no answer to gets the first command's acknowledgement, and the command
    runs once. The same key for a different command is a 422."""
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(None, functools.partial(
            append_command, control_json, name, args, id=key, idempotent=key is not None))
    except IdReused:
        raise ApiError(422, f"Idempotency-Key {key!r} was already used for a different "
                       "command", field="Idempotency-Key") from None
    except InputError as e:
        raise ApiError(400, str(e), field="args") from None
    except OperatorError as e:
        raise ApiError(503, str(e)) from None


def idempotency_key(value: str | None) -> str | None:
    """The Idempotency-Key header, checked against the command-id grammar (400 otherwise)."""
    if value is None:
        return None
    if not ID_RE.fullmatch(value):       # control.json's id grammar
        raise ApiError(400, "Idempotency-Key must be 1-128 characters of A-Z a-z 0-9 . _ : - "
                       "starting with a letter or digit", field="Idempotency-Key")
    return value


def find_ack(doc: dict[str, Any] | None, cid: str) -> dict[str, Any] | None:
    """The newest acknowledgement of command ``cid`` in a status document (done or not)."""
    cmds = doc.get("commands") if isinstance(doc, dict) else None
    if not isinstance(cmds, list):
        return None
    return next((c for c in reversed(cmds) if isinstance(c, dict) and c.get("id") == cid),
                None)


def find_reload(doc: dict[str, Any] | None, rid: str) -> dict[str, Any] | None:
    """The newest reload record of status.json with this reload id or command id."""
    recs = doc.get("reloads") if isinstance(doc, dict) else None
    if not isinstance(recs, list):
        return None
    return next((r for r in reversed(recs) if isinstance(r, dict) and matches(r, rid)), None)


async def _poll(status: JsonFile, found: Callable[[dict[str, Any] | None], Any],
                timeout: float, poll_s: float,
                sleep: Callable[[float], Awaitable[None]]) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        hit = found(status.doc())
        if hit is not None:
            return hit
        left = deadline - loop.time()
        if left <= 0:
            return None
        await sleep(min(poll_s, left))


async def wait_for_ack(status: JsonFile, cid: str, timeout: float, poll_s: float = 0.05,
                       sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
                       ) -> dict[str, Any] | None:
    """Wait until status.json acks command ``cid`` with a result; the ack, or None."""
    def done(doc: dict[str, Any] | None) -> dict[str, Any] | None:
        ack = find_ack(doc, cid)
        return ack if ack is not None and ack.get("result") is not None else None
    return await _poll(status, done, timeout, poll_s, sleep)


async def wait_for_reload(status: JsonFile, cid: str, timeout: float = RECORD_WAIT_S,
                          poll_s: float = 0.05) -> dict[str, Any] | None:
    """The reload record of command ``cid``, once status.json holds it (or None)."""
    return await _poll(status, lambda doc: find_reload(doc, cid), timeout, poll_s,
                       asyncio.sleep)
