"""control.json: the operator's commands to a running supervisor, and their acks.

The operator (the ``noblink`` CLI, or a person with an editor) writes commands into
``<run dir>/control.json``::

    {"commands": [{"id": "3f2a9c...", "cmd": "reload", "args": {"strategy": "s.py"}},
                  {"id": "9c01e4...", "cmd": "pause"}]}

:data:`COMMANDS` is the whole grammar: a command name maps to its args (key -> types, check,
description, required); a new command is one more entry. Unknown commands, args and keys are
refused, and so is a command without one of its required args. docs/commands.md describes
every command, how it is acknowledged and the CLI around it.

The supervisor calls :meth:`ControlReader.poll` once per loop iteration. Each command runs at
most once, by id, in file order, also when the file is read again and across supervisor
restarts: the :class:`CommandLedger` (``<run dir>/commands.json``) records a command as received
*before* poll() hands it out, so a supervisor that dies mid-command does not run it again (it
acks it as interrupted instead). Every command and every refused input is acked in the ledger;
status.json embeds ``ledger.records()`` under ``commands``.

The file is a trust boundary. A symlink, a FIFO or other non-regular file, a file not owned by
the supervisor's user or writable by group/others, a file over 64 KiB and a file that is not a
JSON object with a ``commands`` list are refused as a whole: one error ack (id null) per file
version, never an exception. The reader dedupes by command id, not by file, so it never gets
stuck on a bad version: the next good version runs. A bad command with a usable id gets its own
error ack (and is never retried); its neighbours still run.

Writers use :func:`append_command`: an flock on ``.control.json.lock``, then temp file + rename
with mode 0600, so two CLIs never lose each other's command and a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import math
import os
import re
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from core.config import write_json_atomic
from core.errors import InputError, OperatorError

log = logging.getLogger("supervisor.control")

MAX_BYTES = 64 * 1024
MAX_DEPTH = 32               # containers nested in a command's args
MAX_SHADOW_TICKS = 1000
MAX_TIMEOUT_S = 3600.0
KILL_TIMEOUT_S = 30.0       # a kill not confirmed by the position worker by then: error ack
RESULTS = ("ok", "error", "rolled_back")
INTERRUPTED = "interrupted by a supervisor restart"
LEDGER_VERSION = 1
LEDGER_NAME = "commands.json"        # beside control.json, written by the supervisor only

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_SHA_PREFIX_RE = re.compile(r"[0-9a-f]{6,64}")
# File timestamps come from a coarse clock (a jiffy or so): a rewrite soon after our read can keep
# size, mtime and a recycled inode. Only a version older than this is trusted by its stat alone.
_RACY_NS = 1_000_000_000
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


# --- the command table ---------------------------------------------------------------------

Check = Callable[[Any], str | None]            # why a value is refused, or None


@dataclass(frozen=True)
class Arg:
    """One argument of a command: accepted JSON types, what it means, an optional check, and
    whether the command is refused without it."""

    types: tuple[type, ...]
    doc: str
    check: Check | None = None
    required: bool = False


@dataclass(frozen=True)
class CommandSpec:
    """A command: what it does, its args (optional unless ``required``), an optional check
    across args."""

    doc: str
    args: dict[str, Arg] = field(default_factory=dict)
    check: Check | None = None                  # across args, on the whole args dict


def _path(v: str) -> str | None:
    return None if v and "\x00" not in v else "must be a non-empty path without NUL bytes"


def _sha_prefix(v: str) -> str | None:
    return None if _SHA_PREFIX_RE.fullmatch(v) else "must be 6..64 lowercase hex digits"


def _shadow_ticks(v: int) -> str | None:
    # reloads run one at a time: an endless shadow run would block every later one
    return None if 0 <= v <= MAX_SHADOW_TICKS else f"must be >= 0 and <= {MAX_SHADOW_TICKS}"


def _timeout(v: float) -> str | None:
    ok = math.isfinite(v) and 0 < v <= MAX_TIMEOUT_S
    return None if ok else f"must be a finite number > 0 and <= {MAX_TIMEOUT_S:.0f}"


def _depth(v: object, limit: int) -> bool:
    """Whether ``v`` nests containers deeper than ``limit`` (iteratively: no recursion)."""
    stack = [(v, 0)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, dict | list):
            if d >= limit:
                return True
            stack.extend((y, d + 1) for y in (x.values() if isinstance(x, dict) else x))
    return False


def _one_target(args: dict[str, Any]) -> str | None:
    # strategy, previous and to each pick the version to load: two of them are ambiguous
    picked = [k for k in ("strategy", "previous", "to") if args.get(k, False) is not False]
    if len(picked) <= 1:
        return None
    return f"give at most one of strategy, previous, to (got {', '.join(picked)})"


COMMANDS: dict[str, CommandSpec] = {
    "reload": CommandSpec("load a strategy version beside the running one, then hand over", {
        "strategy": Arg((str,), "strategy file path", _path),
        "params": Arg((dict,), "strategy params (a JSON object)"),
        "previous": Arg((bool,), "go back to the previous version"),
        "to": Arg((str,), "go to the version whose sha256 starts with this hex", _sha_prefix),
        "shadow": Arg((int,), "shadow period before the hand-over (>= 0)", _shadow_ticks),
        "dry_run": Arg((bool,), "load and verify only, do not hand over"),
        "timeout": Arg((int, float), "seconds the new version has to get ready", _timeout),
    }, _one_target),
    "params": CommandSpec("reload the active strategy version with new params", {
        "params": Arg((dict,), "strategy params (a JSON object), verified like a reload",
                      required=True),
    }),
    "pause": CommandSpec("stop opening new positions"),
    "resume": CommandSpec("undo pause and kill"),
    "kill": CommandSpec("pause, and cancel every open order at the venue (acknowledged when "
                        "the position worker confirms)"),
    "stop": CommandSpec("stop the bot cleanly"),
}

_TYPE_NAMES = {str: "a string", dict: "an object", bool: "true or false", int: "an integer",
               float: "a number"}


def json_type(v: object) -> str:
    """How a JSON value's type reads in an error message."""
    for t, name in ((bool, "a boolean"), (int, "a number"), (float, "a number"),
                    (str, "a string"), (list, "an array"), (dict, "an object")):
        if isinstance(v, t):
            return name
    return "null" if v is None else type(v).__name__


def _short(s: str, n: int = 60) -> str:
    return repr(s if len(s) <= n else s[:n] + "...")


def type_ok(v: object, types: tuple[type, ...]) -> bool:
    """isinstance, except that a bool is not an int (JSON true is not 1)."""
    # bool is an int in Python, but true is not a shadow count nor a timeout
    return bool in types if isinstance(v, bool) else isinstance(v, types)


def _usable_id(raw: object) -> str | None:
    cid = raw.get("id") if isinstance(raw, dict) else None
    return cid if isinstance(cid, str) and ID_RE.fullmatch(cid) else None


def _digest(obj: object) -> str | None:
    """A short content hash (sorted keys); None for what orjson cannot encode (too deep)."""
    try:
        return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    except TypeError:
        return None


@dataclass(frozen=True)
class Command:
    """A validated command, as poll() hands it to the supervisor."""

    id: str
    cmd: str
    args: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "cmd": self.cmd, "args": self.args}

    def digest(self) -> str | None:
        """Content hash of (cmd, args): tells a re-sent command from a reused id."""
        return _digest({"cmd": self.cmd, "args": self.args})


def parse_command(raw: object) -> Command:
    """Validate one entry of ``commands`` against :data:`COMMANDS`; raise InputError why not."""
    if not isinstance(raw, dict):
        raise InputError(f"a command must be an object, not {json_type(raw)}")
    extra = [str(k) for k in raw if k not in ("id", "cmd", "args")]
    if extra:
        raise InputError(f"unknown key(s) {', '.join(map(_short, extra))} (allowed: id, cmd, args)")
    if "id" not in raw:
        raise InputError("missing id")
    cid = raw["id"]
    if not isinstance(cid, str):
        raise InputError(f"id must be a string, not {json_type(cid)}")
    if not ID_RE.fullmatch(cid):
        raise InputError(f"id {_short(cid)} must be 1..128 of A-Z a-z 0-9 . _ : - "
                         "(starting with a letter or digit)")
    name = raw.get("cmd")
    if not isinstance(name, str):
        raise InputError("missing cmd" if name is None else f"cmd must be a string, not "
                         f"{json_type(name)}")
    spec = COMMANDS.get(name)
    if spec is None:
        raise InputError(f"unknown command {_short(name)} (known: {', '.join(COMMANDS)})")
    args = raw.get("args", {})
    if not isinstance(args, dict):
        raise InputError(f"{name}: args must be an object, not {json_type(args)}")
    if _depth(args, MAX_DEPTH):
        # orjson reads deeper documents than it writes: such args could be parsed here and
        # then fail to serialise later, deep inside the supervisor
        raise InputError(f"{name}: args nest deeper than {MAX_DEPTH} levels")
    for key, value in args.items():
        arg = spec.args.get(key)
        if arg is None:
            raise InputError(f"{name}: unknown arg {_short(str(key))} "
                             f"(allowed: {', '.join(spec.args) or 'none'})")
        if not type_ok(value, arg.types):
            want = " or ".join(_TYPE_NAMES[t] for t in arg.types)
            raise InputError(f"{name}: {key} must be {want}, not {json_type(value)}")
        why = arg.check(value) if arg.check else None
        if why:
            raise InputError(f"{name}: {key} {why}")
    missing = [k for k, arg in spec.args.items() if arg.required and k not in args]
    if missing:
        raise InputError(f"{name}: missing required arg(s) {', '.join(missing)}")
    why = spec.check(args) if spec.check else None
    if why:
        raise InputError(f"{name}: {why}")
    return Command(cid, name, dict(args))


# --- the ledger ----------------------------------------------------------------------------

class CommandLedger:
    """Exactly-once bookkeeping and the ack list, persisted (tmp + rename) at ``path``.

    File format (version 1)::

        {"version": 1,
         "records": [{"id": "3f2a..." | null, "cmd": "reload" | null,
                      "result": null | "ok" | "error" | "rolled_back", "error": str | null,
                      "received_at": epoch s | null, "done_at": epoch s | null}, ...],
         "seen": {"<id>": "<16 hex content digest, or empty if unknown>", ...}}

    ``records`` is the ack list, newest last, at most ``keep`` (pending records are pruned last);
    ``seen`` holds the last ``remember`` ids, oldest first, so that a command still in
    control.json is not re-run after its record aged out of ``records``.

    A corrupt ledger is moved aside (``commands.json.corrupt-<ts>``) and the ledger starts
    empty with ``recovered`` set: the reader then treats every id in the first version of
    control.json it can read (or none, if the file is missing) as seen, because re-running old
    commands (a stop, a reload) is worse than dropping one written in that instant. That loss
    is acked as an error so the operator sees it.
    """

    def __init__(self, path: Path, keep: int = 100, *, remember: int = 1000,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.keep = keep
        self.remember = max(remember, keep)
        self.clock = clock
        self.recovered = False
        self._records: list[dict[str, Any]] = []
        self._seen: dict[str, str] = {}
        self._load()

    def _load(self) -> None:
        try:
            doc = orjson.loads(self.path.read_bytes())
            if not isinstance(doc, dict) or doc.get("version") != LEDGER_VERSION:
                raise ValueError(f"not a version {LEDGER_VERSION} ledger")
            records, seen = doc.get("records"), doc.get("seen")
            if not (isinstance(records, list) and all(isinstance(r, dict) for r in records)
                    and isinstance(seen, dict)
                    and all(isinstance(v, str) for v in seen.values())):
                raise ValueError("bad records or seen")
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:     # orjson.JSONDecodeError is a ValueError
            self._set_aside(str(e))
            return
        self._records, self._seen = records[-self.keep:], seen

    def _set_aside(self, why: str) -> None:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        try:
            os.replace(self.path, aside)
        except OSError as e:
            aside = Path(f"(could not move it: {e})")
        self.recovered = True
        self.error(None, None, f"{self.path.name} was corrupt ({why}); moved to {aside.name}, "
                   "starting empty")

    def _save(self) -> None:
        doc = {"version": LEDGER_VERSION, "records": self._records, "seen": self._seen}
        try:
            write_json_atomic(self.path, doc)
        except OSError as e:
            # the bot goes on; only a restart could now repeat a command
            log.error("cannot write %s: %s", self.path, e)

    def _remember(self, cid: str, digest: str | None) -> None:
        self._seen.pop(cid, None)
        self._seen[cid] = digest or ""
        while len(self._seen) > self.remember:
            del self._seen[next(iter(self._seen))]

    def _append(self, rec: dict[str, Any]) -> None:
        self._records.append(rec)
        while len(self._records) > self.keep:
            # a pending record still waits for done(); drop the oldest finished one instead
            i = next((i for i, r in enumerate(self._records) if r["result"] is not None), 0)
            del self._records[i]

    def seen(self, cid: str) -> bool:
        """Was a command with this id received (or refused) before?"""
        return cid in self._seen

    def seen_digest(self, cid: str) -> str | None:
        """The content digest stored with a seen id ("" if unknown), None if not seen."""
        return self._seen.get(cid)

    def mark_seen(self, ids: dict[str, str | None]) -> None:
        """Remember ids (id -> digest) without a record: for the corrupt-ledger baseline."""
        for cid, digest in ids.items():
            self._remember(cid, digest)
        self._save()

    def received(self, cmd: Command) -> None:
        """Record (and persist) that ``cmd`` is about to run."""
        self._remember(cmd.id, cmd.digest())
        self._append({"id": cmd.id, "cmd": cmd.cmd, "result": None, "error": None,
                      "received_at": self.clock(), "done_at": None})
        self._save()

    def done(self, cid: str, result: str, error: str | None = None) -> None:
        """Ack the outcome of a received command: result is "ok", "error" or "rolled_back"."""
        if result not in RESULTS:
            raise ValueError(f"result must be one of {RESULTS}, not {result!r}")
        rec = next((r for r in reversed(self._records) if r["id"] == cid), None)
        if rec is None:                 # pruned (or never received): still ack it
            rec = {"id": cid, "cmd": None, "result": None, "error": None, "received_at": None}
            self._append(rec)
        rec.update(result=result, error=error, done_at=self.clock())
        self._save()

    def error(self, cid: str | None, cmd: str | None, message: str, *,
              digest: str | None = None) -> None:
        """Ack refused input (id None for a file-level problem) and log it."""
        log.error("%s", message)
        if cid is not None:
            self._remember(cid, digest)
        now = self.clock()
        self._append({"id": cid, "cmd": cmd, "result": "error", "error": message,
                      "received_at": now, "done_at": now})
        self._save()

    def records(self) -> list[dict[str, Any]]:
        """The ack list, newest last, at most ``keep`` (copies; for status.json)."""
        return [dict(r) for r in self._records]

    def interrupted(self) -> list[dict[str, Any]]:
        """Records received but never done: after a restart, ack them with INTERRUPTED."""
        return [dict(r) for r in self._records if r["result"] is None]


# --- reading -------------------------------------------------------------------------------

def _stat_key(st: os.stat_result) -> tuple[int, ...]:
    # ctime moves on chmod/chown too, so fixing a file's mode makes a new version
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode,
            st.st_uid)


def _check(st: os.stat_result, uid: int, max_bytes: int) -> str | None:
    if not stat.S_ISREG(st.st_mode):
        return f"is not a regular file (mode {stat.filemode(st.st_mode)})"
    if st.st_uid != uid:
        return f"is owned by uid {st.st_uid}, not {uid}"
    if st.st_mode & 0o022:
        return f"is writable by group or others (mode {st.st_mode & 0o777:o}; chmod go-w)"
    if st.st_size > max_bytes:
        return f"is {st.st_size} bytes, over the {max_bytes}-byte limit"
    return None


def _read_upto(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left > 0:
        b = os.read(fd, left)
        if not b:
            break
        chunks.append(b)
        left -= len(b)
    return b"".join(chunks)


def _read_checked(path: Path, uid: int, max_bytes: int, unchanged: tuple | None = None
                  ) -> tuple[os.stat_result | None, bytes | None, str | None]:
    """Open without following a symlink or blocking on a FIFO, check, read.

    Returns (stat, data, problem); data is None if there is a problem or the stat key equals
    ``unchanged``. Raises FileNotFoundError if there is no file.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise
        try:
            st = os.lstat(path)
        except OSError:
            st = None
        if e.errno == errno.ELOOP:
            return st, None, "is a symlink (not followed)"
        return st, None, f"cannot be opened ({e.strerror})"
    try:
        st = os.fstat(fd)
        if unchanged is not None and _stat_key(st) == unchanged:
            return st, None, None
        problem = _check(st, uid, max_bytes)
        if problem:
            return st, None, problem
        data = _read_upto(fd, max_bytes + 1)  # the file may grow after fstat
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        return st, None, f"is over the {max_bytes}-byte limit"
    return st, data, None


def _parse_file(data: bytes) -> tuple[list, str | None]:
    if not data.strip():
        return [], None                     # an emptied file simply holds no commands
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        return [], f"is not valid JSON ({e})"
    if not isinstance(doc, dict):
        return [], f"must hold a JSON object, not {json_type(doc)}"
    if "commands" not in doc:
        return [], "has no 'commands' list"
    if not isinstance(doc["commands"], list):
        return [], f"'commands' must be a list, not {json_type(doc['commands'])}"
    return doc["commands"], None


class ControlReader:
    """Polls control.json; hands out each new command once, acks refused input in ``ledger``.

    ``uid`` is the owner a trusted file must have (default: ours). ``wall_ns`` is injectable so
    tests can age a file version past the racy window.
    """

    def __init__(self, path: Path, ledger: CommandLedger, *, uid: int | None = None,
                 max_bytes: int = MAX_BYTES, wall_ns: Callable[[], int] = time.time_ns) -> None:
        self.path = Path(path)
        self.ledger = ledger
        self.uid = os.getuid() if uid is None else uid
        self.max_bytes = max_bytes
        self.wall_ns = wall_ns
        self.parses = 0                     # how often the content was parsed (stats, tests)
        self._key: tuple | None = None      # stat key of the version last looked at
        self._trusted = False               # that key is old enough to stand for the content
        self._error_key: tuple | None = None  # the version last refused as a whole
        self._reported: dict[str, None] = {}  # refused entries without an id: report once

    def poll(self) -> tuple[list[Command], list[str]]:
        """New commands in file order (already recorded as received), and new error messages
        (already acked and logged). Never raises on bad input, never blocks."""
        started = self.wall_ns()
        try:
            st, data, problem = _read_checked(self.path, self.uid, self.max_bytes,
                                              self._key if self._trusted else None)
        except FileNotFoundError:
            self._key = None                # a missing file is simply no commands
            self.ledger.recovered = False   # ... and no old ones to protect
            return [], []
        if data is None and problem is None:
            return [], []                   # the same trusted version as last time
        key = _stat_key(st) if st is not None else (problem,)
        self._key = key
        self._trusted = st is not None and started - max(st.st_mtime_ns, st.st_ctime_ns) \
            >= _RACY_NS
        if problem is None:
            self.parses += 1
            entries, problem = _parse_file(data or b"")
        if problem is not None:
            return [], self._file_error(key, problem)
        # a reset ledger protects the ids of the first version it can read (see CommandLedger)
        baseline, self.ledger.recovered = self.ledger.recovered, False
        return self._take(entries, key, baseline)

    def _file_error(self, key: tuple, problem: str) -> list[str]:
        if key == self._error_key:
            return []
        self._error_key = key
        msg = f"{self.path.name} {problem}; ignored this version of the file"
        self.ledger.error(None, None, msg)
        return [msg]

    def _once(self, key: str) -> bool:
        if key in self._reported:
            return False
        self._reported[key] = None
        while len(self._reported) > 1000:
            del self._reported[next(iter(self._reported))]
        return True

    def _take(self, entries: list, key: tuple, baseline: bool
              ) -> tuple[list[Command], list[str]]:
        out: list[Command] = []
        errors: list[str] = []
        skipped: dict[str, str | None] = {}
        for i, raw in enumerate(entries):
            cid = _usable_id(raw)
            where = f"{self.path.name} commands[{i}]" + (f" (id {cid})" if cid else "")
            try:
                cmd: Command | None = parse_command(raw)
                digest = cmd.digest()
                why = ""
            except InputError as e:
                cmd, why = None, str(e)
                digest = _digest({k: v for k, v in raw.items() if k != "id"}
                                 if isinstance(raw, dict) else raw)
            if cid is not None and (self.ledger.seen(cid) or cid in skipped):
                old = skipped[cid] if cid in skipped else self.ledger.seen_digest(cid)
                if old and digest and old != digest and self._once(f"reuse:{cid}:{digest}"):
                    msg = f"{where}: this id was already used by a different command; " \
                        "ignored (use a fresh id)"
                    self.ledger.error(None, None, msg)
                    errors.append(msg)
                continue                    # the normal case: already run (or refused)
            if baseline and cid is not None:
                skipped[cid] = digest
                continue
            if cmd is not None:
                self.ledger.received(cmd)   # persisted before the caller can run it
                out.append(cmd)
                continue
            msg = f"{where}: {why}"
            if cid is not None:
                name = raw.get("cmd")
                self.ledger.error(cid, name if isinstance(name, str) and len(name) <= 64
                                  else None, msg, digest=digest)
                errors.append(msg)
            elif self._once(f"noid:{_digest(raw) or f'{key}:{i}'}"):
                self.ledger.error(None, None, msg)
                errors.append(msg)
        if skipped:
            self.ledger.mark_seen(skipped)
            ids = ", ".join(list(skipped)[:10]) + (", ..." if len(skipped) > 10 else "")
            msg = f"after the ledger was reset, {len(skipped)} command(s) already in " \
                f"{self.path.name} were not run: {ids}"
            self.ledger.error(None, None, msg)
            errors.append(msg)
        return out, errors


# --- writing (the CLI side) ----------------------------------------------------------------

@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)                        # closing releases the lock


def _encode(entries: list) -> bytes:
    return orjson.dumps({"commands": entries}, option=orjson.OPT_INDENT_2)


def _replace(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)    # the reader refuses group/other-writable files
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class IdReused(InputError):
    """An id (an HTTP Idempotency-Key) already used for another command or other args."""


def append_command(path: Path, cmd: str, args: dict | None = None, *, id: str | None = None,
                   keep: int = 50, max_bytes: int = MAX_BYTES, idempotent: bool = False) -> str:
    """Append one command to control.json and return its id (default: a fresh uuid4 hex).

    Validates with :data:`COMMANDS` (InputError says why). Under an flock on
    ``.control.json.lock`` it keeps at most ``keep`` commands within ``max_bytes``, making
    room by dropping the oldest ones the supervisor has read (OperatorError when only unread
    ones are left), and replaces the file atomically with mode 0600. A file the supervisor would
    refuse (junk, a symlink, wrong owner or mode) is replaced, its content dropped: a writer
    must not launder another user's commands into a trusted file. OSError -> OperatorError.

    ``idempotent``: an ``id`` already used (in the file, or read by the supervisor) for the
    same command and args is a retry: nothing is written and the id is returned, so the
    caller waits for the one acknowledgement. The same id with other content is an
    InputError. (Otherwise any id already in the file is an InputError.)
    """
    if keep < 1:
        raise ValueError("keep must be >= 1")
    command = parse_command({"id": uuid.uuid4().hex if id is None else id, "cmd": cmd,
                             "args": {} if args is None else args})
    try:
        orjson.dumps(command.to_json())
    except TypeError as e:
        raise InputError(f"{cmd}: args are not JSON ({e})") from e
    path = Path(path)
    try:
        with _locked(path.with_name(f".{path.name}.lock")):
            try:
                _, data, _problem = _read_checked(path, os.getuid(), max_bytes)
            except FileNotFoundError:
                data = None
            entries = _parse_file(data)[0] if data is not None else []
            before = [e for e in entries if _usable_id(e) == command.id]
            if before and not idempotent:
                raise InputError(f"id {command.id!r} is already in {path.name}")
            if idempotent:
                used = _used_digest(before, path.with_name(LEDGER_NAME), command.id)
                if used is not None:
                    if used != command.digest():
                        raise IdReused(f"id {command.id!r} was already used for a "
                                       "different command")
                    return command.id               # a retry: the first one stands
            new = command.to_json()
            if len(_encode([new])) > max_bytes:
                raise InputError(f"{cmd}: the command is {len(_encode([new]))} bytes, over "
                                 f"the {max_bytes}-byte limit of {path.name}")
            # Make room by dropping the oldest commands the supervisor has already read (its
            # ledger's "seen" ids), never one it has not: that would lose a stop or a kill.
            seen = _seen_ids(path.with_name(LEDGER_NAME))
            entries = [*entries, new]
            out = _encode(entries)
            while len(entries) > keep or len(out) > max_bytes:
                old = next((i for i, e in enumerate(entries[:-1]) if _usable_id(e) in seen
                            or _usable_id(e) is None), None)
                if old is None:
                    raise OperatorError(
                        f"{path.name} holds {len(entries) - 1} commands the supervisor has not "
                        f"read yet (is it running?); not dropping any of them to make room")
                del entries[old]
                out = _encode(entries)
            _replace(path, out)
    except OSError as e:
        raise OperatorError(f"cannot write {path}: {e}") from e
    return command.id


def _used_digest(entries: list[dict], ledger_path: Path, cid: str) -> str | None:
    """The content digest of the command that already used ``cid`` (in control.json, or in
    the supervisor's ledger once it left the file); "" when used but unknown; None if unused."""
    for e in entries:
        try:
            return parse_command(e).digest() or ""
        except InputError:
            return ""
    try:
        seen = orjson.loads(ledger_path.read_bytes()).get("seen")
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return None
    return seen.get(cid) if isinstance(seen, dict) and isinstance(seen.get(cid), str) else None


def _seen_ids(ledger_path: Path) -> set[str]:
    """The ids the supervisor has read (its ledger's ``seen``); empty when unreadable, so
    that nothing unread is ever dropped."""
    try:
        doc = orjson.loads(ledger_path.read_bytes())
        seen = doc.get("seen") if isinstance(doc, dict) else None
    except (OSError, orjson.JSONDecodeError):
        return set()
    return set(seen) if isinstance(seen, dict) else set()


def _acks(status_path: Path) -> list[dict]:
    try:
        doc = orjson.loads(status_path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return []                           # missing or half-written: try again later
    cmds = doc.get("commands") if isinstance(doc, dict) else None
    return [c for c in cmds if isinstance(c, dict)] if isinstance(cmds, list) else []


def wait_for_ack(status_path: Path, id: str, timeout: float, poll_s: float = 0.05,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> dict | None:
    """Wait until status.json acks command ``id`` with a result; the record, or None on
    timeout."""
    deadline = clock() + timeout
    while True:
        for rec in reversed(_acks(Path(status_path))):
            if rec.get("id") == id and rec.get("result") is not None:
                return rec
        left = deadline - clock()
        if left <= 0:
            return None
        sleep(min(poll_s, left))
