"""hostile-input: bad control input, through control.json and through the HTTP API.

control.json (supervisor/control_file.py): a fixed corpus (junk bytes, an unknown command,
wrong types, a missing id, a file over 64 KiB, deep nesting, a symlink, a FIFO, a
group-writable file, an id reused for another command, ...) and ``HYPOTHESIS_CASES`` commands
drawn by hypothesis and kept only when the grammar refuses them (``parse_command``): a drawn
command that happens to be valid would run (a ``stop``!). Each must be acknowledged as an
error in status.json ``commands`` (by its id, or, for a file-level problem, a new id-less
record); a valid command written afterwards must still run.

HTTP (api_worker, the bot runs with ``--api 127.0.0.1:0``): a fixed corpus with the right
token (bad JSON, wrong types, unknown args and routes, a body over the limit, deep nesting)
that must get a 4xx, and tests/api_worker/fuzzing.py's raw-request fuzzer (never a valid
mutating request: ``live=True``), which fails on any 500.

Throughout, the strategy must keep trading and nothing may be lost.
"""

from __future__ import annotations

import os
import random
import urllib.error
import urllib.request
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api_worker.main import read_api_info
from chaos import checks
from chaos.checks import Findings
from chaos.row import Options, Row
from core.errors import InputError
from supervisor.control_file import MAX_BYTES, append_command, parse_command, wait_for_ack
from tests.api_worker.fuzzing import command_like, fuzz, json_values
from tests.supervisor.botctl import Bot

ACK_DEADLINE_S = 30.0
HYPOTHESIS_CASES = 40
FUZZ_REQUESTS = 60


def _deep(n: int) -> dict:
    d: dict = {}
    for _ in range(n):
        d = {"x": d}
    return d


def _doc(*entries: object) -> bytes:
    return orjson.dumps({"commands": list(entries)})


# (name, what to put at control.json, the id of the entry to be acked or None for a file
# error). Content is bytes (a regular file, 0600), or a special kind.
CORPUS: list[tuple[str, object, str | None]] = [
    ("junk bytes", b"\xff\xfe\x00garbage{", None),
    ("not an object", b"[1, 2, 3]", None),
    ("no commands list", b'{"cmds": []}', None),
    ("commands not a list", b'{"commands": {"id": "x"}}', None),
    ("unknown command", _doc({"id": "h-unknown", "cmd": "explode"}), "h-unknown"),
    ("wrong arg type", _doc({"id": "h-type", "cmd": "reload", "args": {"shadow": "five"}}),
     "h-type"),
    ("unknown arg", _doc({"id": "h-arg", "cmd": "pause", "args": {"now": True}}), "h-arg"),
    ("args not an object", _doc({"id": "h-args", "cmd": "reload", "args": [1]}), "h-args"),
    ("bool for int", _doc({"id": "h-bool", "cmd": "reload", "args": {"shadow": True}}),
     "h-bool"),
    ("bad timeout", _doc({"id": "h-inf", "cmd": "reload", "args": {"timeout": -1}}), "h-inf"),
    ("two targets", _doc({"id": "h-two", "cmd": "reload",
                          "args": {"previous": True, "to": "abcdef"}}), "h-two"),
    ("missing required", _doc({"id": "h-req", "cmd": "params"}), "h-req"),
    ("missing id", _doc({"cmd": "pause"}), None),
    ("id not a string", _doc({"id": 7, "cmd": "pause"}), None),
    ("bad id chars", _doc({"id": "../etc/passwd", "cmd": "pause"}), None),
    ("unknown key", _doc({"id": "h-key", "cmd": "resume", "sudo": True}), "h-key"),
    ("deep args", _doc({"id": "h-deep", "cmd": "reload", "args": {"params": _deep(40)}}),
     "h-deep"),
    ("deep JSON", b'{"commands": [' + b"[" * 5000 + b"]" * 5000 + b"]}", None),
    ("huge file", _doc({"id": "h-huge", "cmd": "resume", "args": {}},
                       {"pad": "x" * (MAX_BYTES + 10)}), None),
    ("NUL in a path", _doc({"id": "h-nul", "cmd": "reload",
                            "args": {"strategy": "a\u0000b"}}), "h-nul"),
    ("symlink", "symlink", None),
    ("FIFO", "fifo", None),
    ("group-writable", "mode666", None),
]


def _file_errors(bot: Bot) -> int:
    return sum(1 for r in bot.status().get("commands") or []
               if r.get("id") is None and r.get("result") == "error")


def _put(path: Path, content: object, tmp: Path) -> None:
    """Replace control.json by ``content`` (a new file version every time)."""
    new = path.with_name(".hostile.tmp")
    new.unlink(missing_ok=True)
    if content == "symlink":
        target = tmp / "elsewhere.json"
        target.write_bytes(_doc({"id": "h-sym", "cmd": "pause"}))
        os.chmod(target, 0o600)
        os.symlink(target, new)
    elif content == "fifo":
        os.mkfifo(new, 0o600)
    else:
        data = _doc({"id": "h-mode", "cmd": "pause"}) if content == "mode666" else content
        assert isinstance(data, bytes)
        fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if content == "mode666":
            os.chmod(new, 0o666)
    os.replace(new, path)


def _control_case(bot: Bot, name: str, content: object, cid: str | None) -> str | None:
    """Write one bad version; the problem if it was not acked as an error."""
    path = bot.run_dir / "control.json"
    before = _file_errors(bot)
    _put(path, content, bot.tmp)
    if cid is not None:
        ack = wait_for_ack(bot.run_dir / "status.json", cid, ACK_DEADLINE_S)
        if ack is None or ack.get("result") != "error":
            return f"control.json {name}: ack {ack}"
        return None
    if checks.poll(lambda: _file_errors(bot) > before, ACK_DEADLINE_S) is None:
        return f"control.json {name}: no error ack in {ACK_DEADLINE_S:.0f}s"
    return None


def _hypothesis_commands(n: int, seed: int) -> list[dict]:
    """``n`` command-like entries that the grammar refuses (each with a fresh usable id)."""
    out: list[dict] = []
    entry = st.fixed_dictionaries({"cmd": st.one_of(
        st.sampled_from(["reload", "params", "pause", "resume", "kill", "stop"]),
        st.text(max_size=12), json_values)}, optional={"args": st.one_of(
            command_like, json_values), "extra": json_values})

    @settings(max_examples=n * 4, database=None, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(e=entry)
    def draw(e: dict) -> None:
        if len(out) >= n:
            return
        e = {"id": f"hyp-{seed}-{len(out)}", **e}
        try:
            parse_command(e)
        except InputError:
            out.append(e)

    draw()
    return out


SMALL = ("junk bytes", "unknown command", "wrong arg type", "missing id", "huge file",
         "deep args", "symlink", "FIFO")           # opts.small: the test's sample


def hostile_control(bot: Bot, opts: Options) -> Findings:
    f = Findings()
    corpus = [c for c in CORPUS if c[0] in SMALL] if opts.small else CORPUS
    for name, content, cid in corpus:
        why = _control_case(bot, name, content, cid)
        if why:
            f.problems.append(why)
    cases = _hypothesis_commands(HYPOTHESIS_CASES // 4 if opts.small else HYPOTHESIS_CASES,
                                 opts.seed)
    path = bot.run_dir / "control.json"
    _put(path, _doc(*cases), bot.tmp)
    for e in cases:
        ack = wait_for_ack(bot.run_dir / "status.json", e["id"], ACK_DEADLINE_S)
        if ack is None or ack.get("result") != "error":
            f.problems.append(f"control.json hypothesis {e!r:.120}: ack {ack}")
    # the file is still usable: a valid command runs
    ok = wait_for_ack(bot.run_dir / "status.json", append_command(path, "resume"),
                      ACK_DEADLINE_S)
    if ok is None or ok.get("result") != "ok":
        f.problems.append(f"a valid resume after the hostile input: ack {ok}")
    f.stats.update(control_cases=len(corpus), control_hypothesis=len(cases))
    return f


def _http(url: str, method: str, path: str, token: str | None, body: bytes | None
          ) -> int:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0                         # closed without an answer


HTTP_CORPUS: list[tuple[str, str, str, bool, bytes | None]] = [
    ("junk body", "POST", "/api/reload", True, b"\xff\xfe{"),
    ("not an object", "POST", "/api/reload", True, b"[1]"),
    ("wrong type", "POST", "/api/reload", True, b'{"shadow": "five"}'),
    ("unknown arg", "POST", "/api/pause", True, b'{"now": true}'),
    ("params missing", "POST", "/api/params", True, b"{}"),
    ("deep nesting", "POST", "/api/reload", True,
     orjson.dumps({"params": _deep(40)})),
    ("deep JSON", "POST", "/api/reload", True, b"[" * 5000 + b"]" * 5000),
    ("huge body", "POST", "/api/reload", True, b'{"params": {"x": "' + b"x" * (2 << 20)
     + b'"}}'),
    ("NaN", "POST", "/api/reload", True, b'{"timeout": NaN}'),
    ("no token", "POST", "/api/stop", False, b"{}"),
    ("unknown route", "POST", "/api/explode", True, b"{}"),
    ("wrong method", "DELETE", "/api/status", True, None),
    ("bad reload id", "GET", "/api/reloads/..%2f..", True, None),
]


def hostile_http(bot: Bot, opts: Options) -> Findings:
    f = Findings()
    info = checks.poll(lambda: read_api_info(bot.run_dir), 60.0)
    if info is None:
        f.problems.append("no API (api.json) within 60s")
        return f
    token = Path(info["token_file"]).read_text().strip()
    corpus = HTTP_CORPUS[::3] if opts.small else HTTP_CORPUS
    for name, method, path, auth, body in corpus:
        code = _http(info["url"], method, path, token if auth else None, body)
        if not 400 <= code < 500:
            f.problems.append(f"HTTP {name} ({method} {path}): {code or 'no answer'}, "
                              "not a 4xx")
    port = int(info["url"].rsplit(":", 1)[1].split("/")[0])
    try:
        seen = fuzz(port, token, FUZZ_REQUESTS // 4 if opts.small else FUZZ_REQUESTS,
                    live=True)
    except AssertionError as e:          # a 500, or an error that is not JSON
        f.problems.append(f"HTTP fuzz: {str(e)[:300]}")
        seen = []
    if _http(info["url"], "GET", "/api/status", token, None) != 200:
        f.problems.append("GET /api/status is not 200 after the hostile input")
    f.stats.update(http_cases=len(corpus), http_fuzzed=len(seen),
                   http_fuzz_4xx=sum(1 for s, _ in seen if s and 400 <= s < 500))
    return f


def hostile_input(bot: Bot, row: Row, admin: str, pids: set[int], opts: Options,
                  rng: random.Random) -> None:
    pids |= checks.worker_pids(bot)
    found = hostile_control(bot, opts)
    row.after_fault(bot, admin, "control.json corpus + hypothesis", pids,
                    extra=lambda: found)
    found_http = hostile_http(bot, opts)
    row.after_fault(bot, admin, "HTTP corpus + fuzz", pids, extra=lambda: found_http)
    if bot.status().get("paused"):
        row.findings.problems.append("the bot is paused after the hostile input")
