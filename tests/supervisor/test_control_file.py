"""control.json: commands run once, in order; bad input is acked, never raised, never sticky."""

from __future__ import annotations

import itertools
import logging
import os
import threading
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import InputError, OperatorError
from supervisor.control_file import (
    COMMANDS,
    INTERRUPTED,
    Command,
    CommandLedger,
    ControlReader,
    append_command,
    parse_command,
    wait_for_ack,
)


class Run:
    """A run dir with a control file, a ledger and a reader over them."""

    def __init__(self, d: Path, **reader_kw: object) -> None:
        self.dir = d
        d.mkdir(parents=True, exist_ok=True)
        self.control = d / "control.json"
        self.ledger = CommandLedger(d / "commands.json")
        self.reader = ControlReader(self.control, self.ledger, **reader_kw)  # type: ignore[arg-type]

    def write(self, doc: object, mode: int = 0o600) -> None:
        data = doc if isinstance(doc, bytes) else orjson.dumps(doc)
        tmp = self.control.with_name(".control.json.test.tmp")
        tmp.write_bytes(data)
        os.chmod(tmp, mode)
        os.replace(tmp, self.control)

    def write_cmds(self, *cmds: object, mode: int = 0o600) -> None:
        self.write({"commands": list(cmds)}, mode)

    def restart(self) -> Run:
        return Run(self.dir)


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return Run(tmp_path / "run")


def errors_in(ledger: CommandLedger) -> list[dict]:
    return [r for r in ledger.records() if r["result"] == "error"]


# --- valid commands -------------------------------------------------------------------------

VALID = [
    ("reload", {}),
    ("reload", {"strategy": "strategies/s.py"}),
    ("reload", {"params": {"edge": 0.02, "nested": {"a": [1, 2]}}}),
    ("reload", {"previous": True}),
    ("reload", {"previous": False, "to": "abcdef"}),
    ("reload", {"to": "0123456789abcdef" * 4}),
    ("reload", {"strategy": "s.py", "params": {}, "shadow": 0, "dry_run": True, "timeout": 2}),
    ("reload", {"shadow": 30, "timeout": 0.5, "dry_run": False}),
    ("pause", {}),
    ("pause", None),
    ("resume", {}),
    ("stop", None),
    ("kill", {}),
    ("kill", None),
    ("params", {"params": {}}),
    ("params", {"params": {"x": 1, "edge": 0.02, "nested": {"a": [1, 2]}}}),
]


@pytest.mark.parametrize(("name", "args"), VALID)
def test_every_command_kind_is_accepted(run: Run, name: str, args: dict | None) -> None:
    entry = {"id": "c1", "cmd": name} | ({} if args is None else {"args": args})
    run.write_cmds(entry)
    cmds, errors = run.reader.poll()
    assert errors == []
    assert cmds == [Command("c1", name, args or {})]
    rec = run.ledger.records()[-1]
    assert rec["id"] == "c1" and rec["cmd"] == name and rec["result"] is None
    run.ledger.done("c1", "ok")
    assert run.ledger.records()[-1]["result"] == "ok"
    assert run.ledger.records()[-1]["done_at"] is not None


def test_table_covers_the_contract() -> None:
    assert set(COMMANDS) == {"reload", "params", "pause", "resume", "kill", "stop"}
    assert set(COMMANDS["reload"].args) == {"strategy", "params", "previous", "to", "shadow",
                                            "dry_run", "timeout"}
    assert set(COMMANDS["params"].args) == {"params"}
    assert COMMANDS["kill"].args == {}
    required = {(name, k) for name, spec in COMMANDS.items()
                for k, a in spec.args.items() if a.required}
    assert required == {("params", "params")}
    assert all(a.doc for spec in COMMANDS.values() for a in spec.args.values())
    assert all(spec.doc for spec in COMMANDS.values())


def test_two_commands_in_one_file_both_run_in_order(run: Run) -> None:
    run.write_cmds({"id": "a", "cmd": "pause"}, {"id": "b", "cmd": "reload",
                                                  "args": {"previous": True}})
    cmds, errors = run.reader.poll()
    assert [c.id for c in cmds] == ["a", "b"] and errors == []


def test_reading_again_returns_nothing(run: Run) -> None:
    run.write_cmds({"id": "a", "cmd": "pause"})
    assert len(run.reader.poll()[0]) == 1
    assert run.reader.poll() == ([], [])
    run.write_cmds({"id": "a", "cmd": "pause"}, {"id": "b", "cmd": "resume"})
    assert [c.id for c in run.reader.poll()[0]] == ["b"]     # the file grew: only the new one


def test_missing_file_is_not_an_error(run: Run) -> None:
    assert run.reader.poll() == ([], [])
    assert run.ledger.records() == []


def test_empty_file_means_no_commands(run: Run) -> None:
    run.write(b"")
    assert run.reader.poll() == ([], [])


def test_a_trusted_version_is_not_parsed_again(run: Run) -> None:
    now = [0]
    run.reader.wall_ns = lambda: now[0]
    run.write_cmds({"id": "a", "cmd": "pause"})
    st = run.control.stat()
    now[0] = max(st.st_mtime_ns, st.st_ctime_ns)           # just written: racy, re-read
    run.reader.poll()
    run.reader.poll()
    assert run.reader.parses == 2
    now[0] += 2_000_000_000                                 # old enough: the stat decides
    run.reader.poll()
    assert run.reader.parses == 3
    run.reader.poll()
    run.reader.poll()
    assert run.reader.parses == 3
    os.chmod(run.control, 0o400)                            # any change makes a new version
    assert run.reader.poll() == ([], [])
    assert run.reader.parses == 4


# --- restarts and the ledger ---------------------------------------------------------------

def test_restart_does_not_rerun_and_reports_interrupted(run: Run) -> None:
    run.write_cmds({"id": "a", "cmd": "pause"}, {"id": "b", "cmd": "stop"})
    assert len(run.reader.poll()[0]) == 2
    run.ledger.done("a", "ok")                  # the supervisor dies while running "b"
    again = run.restart()
    assert again.reader.poll() == ([], [])
    assert [r["id"] for r in again.ledger.interrupted()] == ["b"]
    again.ledger.done("b", "error", INTERRUPTED)
    assert again.ledger.interrupted() == []
    assert again.ledger.records()[-1] == again.restart().ledger.records()[-1]


def test_ledger_file_format(run: Run) -> None:
    run.write_cmds({"id": "a", "cmd": "pause"})
    run.reader.poll()
    run.ledger.done("a", "rolled_back", "new version was not ready")
    doc = orjson.loads((run.dir / "commands.json").read_bytes())
    assert doc["version"] == 1 and list(doc["seen"]) == ["a"]
    assert len(doc["seen"]["a"]) == 16
    (rec,) = doc["records"]
    assert set(rec) == {"id", "cmd", "result", "error", "received_at", "done_at"}
    assert rec["result"] == "rolled_back" and rec["error"] == "new version was not ready"


def test_done_refuses_an_unknown_result(run: Run) -> None:
    with pytest.raises(ValueError):
        run.ledger.done("a", "fine")


def test_records_are_capped_and_ids_remembered_longer(tmp_path: Path) -> None:
    ledger = CommandLedger(tmp_path / "commands.json", keep=5)
    reader = ControlReader(tmp_path / "control.json", ledger)
    append_command(tmp_path / "control.json", "stop", id="pending")
    reader.poll()                               # "pending" is received, never done
    for i in range(12):
        append_command(tmp_path / "control.json", "pause", id=f"p{i}")
        (cmd,), _ = reader.poll()
        ledger.done(cmd.id, "ok")
    recs = ledger.records()
    assert len(recs) == 5
    assert [r["id"] for r in recs] == ["pending", "p8", "p9", "p10", "p11"]
    # p0 aged out of the records but is still in control.json: it must not run again
    again = ControlReader(tmp_path / "control.json", CommandLedger(tmp_path / "commands.json",
                                                                  keep=5))
    assert again.poll() == ([], [])


def test_corrupt_ledger_is_set_aside_and_old_commands_do_not_rerun(run: Run,
                                                                   caplog) -> None:
    run.write_cmds({"id": "a", "cmd": "stop"}, {"id": "b", "cmd": "pause"})
    run.reader.poll()
    (run.dir / "commands.json").write_bytes(b"\x00garbage")
    with caplog.at_level(logging.ERROR, "supervisor.control"):
        again = run.restart()
    assert "corrupt" in caplog.text
    assert len(list(run.dir.glob("commands.json.corrupt-*"))) == 1
    cmds, errors = again.reader.poll()
    assert cmds == [] and "were not run: a, b" in errors[0]
    run.write_cmds({"id": "a", "cmd": "stop"}, {"id": "b", "cmd": "pause"},
                   {"id": "c", "cmd": "resume"})
    assert [c.id for c in again.reader.poll()[0]] == ["c"]
    assert [c.id for c in again.restart().reader.poll()[0]] == []


def test_corrupt_ledger_baseline_waits_for_a_readable_file(run: Run) -> None:
    run.write_cmds({"id": "a", "cmd": "stop"})
    run.reader.poll()
    (run.dir / "commands.json").write_bytes(b"{}")
    run.write_cmds({"id": "a", "cmd": "stop"}, mode=0o666)
    again = run.restart()
    assert again.reader.poll()[0] == []         # refused as a whole: nothing is known yet
    os.chmod(run.control, 0o600)
    cmds, errors = again.reader.poll()
    assert cmds == [] and "were not run: a" in errors[0]


# --- bad input ------------------------------------------------------------------------------

FILE_LEVEL = {
    "malformed JSON": b'{"commands": [',
    "binary junk": bytes(range(256)) * 3,
    "top level array": b'[{"id": "a", "cmd": "pause"}]',
    "top level string": b'"pause"',
    "commands not a list": b'{"commands": {"id": "a", "cmd": "pause"}}',
    "no commands key": b'{"command": []}',
    "invalid utf-8": b'{"commands": [{"id": "\xff", "cmd": "pause"}]}',
}


@pytest.mark.parametrize("data", FILE_LEVEL.values(), ids=FILE_LEVEL.keys())
def test_bad_file_gives_one_error_with_null_id(run: Run, data: bytes, caplog) -> None:
    run.write(data)
    with caplog.at_level(logging.ERROR, "supervisor.control"):
        cmds, errors = run.reader.poll()
    assert cmds == [] and len(errors) == 1 and "control.json" in errors[0]
    assert errors[0] in caplog.text
    (rec,) = errors_in(run.ledger)
    assert rec["id"] is None and rec["error"] == errors[0]
    assert run.reader.poll() == ([], [])                    # not repeated per read
    assert len(errors_in(run.ledger)) == 1


BAD_COMMANDS = {
    "unknown cmd": ({"id": "x", "cmd": "explode"}, "x", "unknown command 'explode'"),
    "cmd not a string": ({"id": "x", "cmd": 7}, "x", "cmd must be a string"),
    "missing cmd": ({"id": "x"}, "x", "missing cmd"),
    "args not an object": ({"id": "x", "cmd": "pause", "args": []}, "x", "args must be"),
    "args null": ({"id": "x", "cmd": "pause", "args": None}, "x", "args must be"),
    "args on pause": ({"id": "x", "cmd": "pause", "args": {"now": True}}, "x", "unknown arg"),
    "unknown arg key": ({"id": "x", "cmd": "reload", "args": {"strat": "s.py"}}, "x",
                        "unknown arg 'strat'"),
    "strategy not str": ({"id": "x", "cmd": "reload", "args": {"strategy": 3}}, "x",
                         "strategy must be a string"),
    "strategy empty": ({"id": "x", "cmd": "reload", "args": {"strategy": ""}}, "x", "non-empty"),
    "params not object": ({"id": "x", "cmd": "reload", "args": {"params": "{}"}}, "x",
                          "params must be an object"),
    "previous not bool": ({"id": "x", "cmd": "reload", "args": {"previous": 1}}, "x",
                          "previous must be true or false"),
    "to not hex": ({"id": "x", "cmd": "reload", "args": {"to": "xyzxyz"}}, "x", "hex"),
    "to too short": ({"id": "x", "cmd": "reload", "args": {"to": "abc"}}, "x", "hex"),
    "to uppercase": ({"id": "x", "cmd": "reload", "args": {"to": "ABCDEF"}}, "x", "lowercase"),
    "shadow negative": ({"id": "x", "cmd": "reload", "args": {"shadow": -1}}, "x", ">= 0"),
    "shadow bool": ({"id": "x", "cmd": "reload", "args": {"shadow": True}}, "x", "integer"),
    "shadow float": ({"id": "x", "cmd": "reload", "args": {"shadow": 1.5}}, "x", "integer"),
    "dry_run string": ({"id": "x", "cmd": "reload", "args": {"dry_run": "yes"}}, "x",
                       "dry_run must be true or false"),
    "timeout zero": ({"id": "x", "cmd": "reload", "args": {"timeout": 0}}, "x", "> 0"),
    "timeout string": ({"id": "x", "cmd": "reload", "args": {"timeout": "5"}}, "x", "number"),
    "two targets": ({"id": "x", "cmd": "reload", "args": {"strategy": "s.py", "previous": True}},
                    "x", "at most one"),
    "extra key": ({"id": "x", "cmd": "pause", "arg": {}}, "x", "unknown key(s) 'arg'"),
    "args on kill": ({"id": "x", "cmd": "kill", "args": {"hard": True}}, "x",
                     "kill: unknown arg 'hard' (allowed: none)"),
    "kill args not an object": ({"id": "x", "cmd": "kill", "args": "now"}, "x",
                                "args must be"),
    "params without args": ({"id": "x", "cmd": "params"}, "x",
                            "params: missing required arg(s) params"),
    "params empty args": ({"id": "x", "cmd": "params", "args": {}}, "x",
                          "missing required arg(s) params"),
    "params not an object": ({"id": "x", "cmd": "params", "args": {"params": [1]}}, "x",
                             "params: params must be an object, not an array"),
    "params null": ({"id": "x", "cmd": "params", "args": {"params": None}}, "x",
                    "must be an object, not null"),
    "params as a string": ({"id": "x", "cmd": "params", "args": {"params": '{"x": 1}'}},
                           "x", "must be an object, not a string"),
    "params with a reload arg": ({"id": "x", "cmd": "params",
                                  "args": {"params": {}, "strategy": "s.py"}}, "x",
                                 "params: unknown arg 'strategy' (allowed: params)"),
    "missing id": ({"cmd": "pause"}, None, "missing id"),
    "empty id": ({"id": "", "cmd": "pause"}, None, "must be 1..128"),
    "id with spaces": ({"id": "a b", "cmd": "pause"}, None, "must be 1..128"),
    "non-string id": ({"id": 5, "cmd": "pause"}, None, "id must be a string"),
    "null id": ({"id": None, "cmd": "pause"}, None, "id must be a string"),
    "entry not an object": ("pause", None, "must be an object"),
}


@pytest.mark.parametrize(("entry", "ack_id", "reason"), BAD_COMMANDS.values(),
                         ids=BAD_COMMANDS.keys())
def test_bad_command_is_acked_and_its_neighbours_run(run: Run, entry: object,
                                                      ack_id: str | None, reason: str) -> None:
    run.write_cmds({"id": "before", "cmd": "pause"}, entry, {"id": "after", "cmd": "resume"})
    cmds, errors = run.reader.poll()
    assert [c.id for c in cmds] == ["before", "after"]
    assert len(errors) == 1 and reason in errors[0] and "commands[1]" in errors[0]
    (rec,) = errors_in(run.ledger)
    assert rec["id"] == ack_id and rec["error"] == errors[0]
    # the same bad entry in later versions of the file is not reported again
    assert run.reader.poll() == ([], [])
    run.write_cmds({"id": "before", "cmd": "pause"}, entry, {"id": "after", "cmd": "resume"},
                   {"id": "later", "cmd": "stop"})
    assert run.reader.poll() == ([Command("later", "stop")], [])
    assert len(errors_in(run.ledger)) == 1


def test_parse_command_raises_input_error() -> None:
    with pytest.raises(InputError, match="unknown command"):
        parse_command({"id": "a", "cmd": "nope"})
    assert parse_command({"id": "a", "cmd": "stop"}) == Command("a", "stop", {})


def test_reused_id_with_other_content_is_refused_once(run: Run) -> None:
    run.write_cmds({"id": "1", "cmd": "pause"})
    run.reader.poll()
    run.write_cmds({"id": "1", "cmd": "pause"}, {"id": "1", "cmd": "resume"})
    cmds, errors = run.reader.poll()
    assert cmds == [] and "already used by a different command" in errors[0]
    run.write_cmds({"id": "1", "cmd": "resume"}, {"id": "2", "cmd": "stop"})
    assert run.reader.poll() == ([Command("2", "stop")], [])


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    run = Run(tmp_path / "run", max_bytes=1024)
    run.write_cmds(*({"id": f"c{i}", "cmd": "pause"} for i in range(100)))
    assert run.control.stat().st_size > 1024
    cmds, errors = run.reader.poll()
    assert cmds == [] and "over the 1024-byte limit" in errors[0]


def test_default_size_limit_is_64k(run: Run) -> None:
    run.write({"commands": [{"id": "a", "cmd": "pause"}], "pad": "x" * 65536})
    cmds, errors = run.reader.poll()
    assert cmds == [] and "65536-byte limit" in errors[0]


def test_symlink_is_not_followed(run: Run, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_bytes(orjson.dumps({"commands": [{"id": "a", "cmd": "stop"}]}))
    target.chmod(0o600)
    run.control.symlink_to(target)
    cmds, errors = run.reader.poll()
    assert cmds == [] and "symlink" in errors[0]
    assert run.reader.poll() == ([], [])


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_group_or_other_writable_is_refused(run: Run, mode: int) -> None:
    run.write_cmds({"id": "a", "cmd": "stop"}, mode=mode)
    cmds, errors = run.reader.poll()
    assert cmds == [] and "writable by group or others" in errors[0]
    os.chmod(run.control, 0o600)                # fixing the mode is a new version: it runs
    assert run.reader.poll() == ([Command("a", "stop")], [])


def test_other_owner_is_refused(run: Run) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to chown")
    run.write_cmds({"id": "a", "cmd": "stop"})
    os.chown(run.control, 65534, 65534)
    cmds, errors = run.reader.poll()
    assert cmds == [] and "owned by uid 65534" in errors[0]


def test_reader_uid_is_configurable(tmp_path: Path) -> None:
    run = Run(tmp_path / "run", uid=os.getuid() + 1)
    run.write_cmds({"id": "a", "cmd": "stop"})
    assert "owned by uid" in run.reader.poll()[1][0]


def test_fifo_does_not_block(run: Run) -> None:
    os.mkfifo(run.control, 0o600)
    out: list = []
    t = threading.Thread(target=lambda: out.append(run.reader.poll()), daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "poll() blocked on a FIFO"
    cmds, errors = out[0]
    assert cmds == [] and "not a regular file" in errors[0]


def test_directory_is_refused(run: Run) -> None:
    run.control.mkdir()
    cmds, errors = run.reader.poll()
    assert cmds == [] and "not a regular file" in errors[0]


def test_valid_command_after_junk_runs(run: Run) -> None:
    run.write(b"\x89PNG\r\n\x1a\n junk")
    assert len(run.reader.poll()[1]) == 1
    run.write(b'{"commands": [')
    assert len(run.reader.poll()[1]) == 1       # another bad version: its own entry
    run.write_cmds({"id": "a", "cmd": "stop"})
    assert run.reader.poll() == ([Command("a", "stop")], [])
    assert len(errors_in(run.ledger)) == 2


# --- fuzz -----------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20)
arg_keys = st.sampled_from([*sorted({k for s in COMMANDS.values() for k in s.args}), "x"])
arg_values = (st.booleans() | st.integers(-2, 9) | st.floats(-1, 10) | st.just("s.py")
              | st.text("0123456789abcdef", min_size=5, max_size=9)
              | st.dictionaries(st.text(max_size=3), json_values, max_size=2) | json_values)
near_commands = st.fixed_dictionaries(   # often valid, so that the yield side is exercised
    {"id": st.sampled_from(["a", "b", "c-1"]) | st.text(max_size=5) | st.integers(-9, 9)
     | st.none(),
     "cmd": st.sampled_from([*COMMANDS, "nope"])},
    optional={"args": st.dictionaries(arg_keys, arg_values, max_size=2)})
documents = (json_values
             | st.fixed_dictionaries({"commands": st.lists(near_commands | json_values,
                                                           max_size=5)}))


_fuzz_n = itertools.count()


def fuzz_poll(base: Path, data: bytes) -> None:
    """A fresh run dir per example (tmp_path is shared by all examples of one test)."""
    run = Run(base / str(next(_fuzz_n)))
    run.write(data)
    cmds, errors = run.reader.poll()
    for c in cmds:
        assert parse_command(c.to_json()) == c
    assert all(isinstance(e, str) for e in errors)
    assert run.reader.poll()[0] == []


@FUZZ
@given(data=st.binary(max_size=300))
def test_fuzz_bytes_never_raise(tmp_path: Path, data: bytes) -> None:
    fuzz_poll(tmp_path, data)


@FUZZ
@given(doc=documents)
def test_fuzz_json_never_raises_nor_yields_invalid_commands(tmp_path: Path, doc: object) -> None:
    fuzz_poll(tmp_path, orjson.dumps(doc))


# --- the writer -----------------------------------------------------------------------------

def test_append_command_writes_a_file_the_reader_trusts(run: Run) -> None:
    cid = append_command(run.control, "reload", {"strategy": "s.py", "shadow": 3})
    assert len(cid) == 32
    assert run.control.stat().st_mode & 0o777 == 0o600
    assert (run.dir / ".control.json.lock").stat().st_mode & 0o777 == 0o600
    assert run.reader.poll() == ([Command(cid, "reload", {"strategy": "s.py", "shadow": 3})], [])
    assert [p.name for p in run.dir.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize(("cmd", "args", "match"), [
    ("explode", None, "unknown command"),
    ("pause", {"x": 1}, "unknown arg"),
    ("reload", {"timeout": -1}, "> 0"),
    ("reload", {"params": {1: 2}}, "not JSON"),
    ("reload", {"params": {"big": 10**30}}, "not JSON"),
    ("params", None, "missing required arg"),
    ("params", {"params": {"big": 10**30}}, "not JSON"),
    ("kill", {"x": 1}, "unknown arg"),
])
def test_append_command_validates(run: Run, cmd: str, args: dict | None, match: str) -> None:
    with pytest.raises(InputError, match=match):
        append_command(run.control, cmd, args)
    assert not run.control.exists()


def test_append_command_refuses_a_duplicate_or_bad_id(run: Run) -> None:
    append_command(run.control, "pause", id="p1")
    with pytest.raises(InputError, match="already in"):
        append_command(run.control, "resume", id="p1")
    with pytest.raises(InputError, match=r"must be 1\.\.128"):
        append_command(run.control, "resume", id="")


def test_append_command_keeps_the_last_n_it_has_read(run: Run) -> None:
    ids = []
    for _ in range(5):
        ids.append(append_command(run.control, "pause", keep=3))
        run.reader.poll()                       # the supervisor reads each one
    doc = orjson.loads(run.control.read_bytes())
    assert [c["id"] for c in doc["commands"]] == ids[-3:]


def test_append_command_idempotent_is_a_retry_or_a_conflict(run: Run) -> None:
    assert append_command(run.control, "pause", id="k1", idempotent=True) == "k1"
    assert append_command(run.control, "pause", id="k1", idempotent=True) == "k1"
    assert [c["id"] for c in orjson.loads(run.control.read_bytes())["commands"]] == ["k1"]
    with pytest.raises(InputError, match="already used for a different command"):
        append_command(run.control, "resume", id="k1", idempotent=True)
    with pytest.raises(InputError, match="already in"):
        append_command(run.control, "pause", id="k1")            # without: a duplicate
    # read by the supervisor, then trimmed out of the file: the ledger still knows it
    run.reader.poll()
    for _ in range(3):
        append_command(run.control, "resume", keep=2)
        run.reader.poll()
    assert "k1" not in run.control.read_text()
    assert append_command(run.control, "pause", id="k1", idempotent=True) == "k1"
    assert "k1" not in run.control.read_text()                  # not written again
    with pytest.raises(InputError, match="different command"):
        append_command(run.control, "stop", id="k1", idempotent=True)


def test_append_command_never_drops_an_unread_command(run: Run) -> None:
    """A full file of commands the supervisor has not read (it is down, say) is refused, not
    trimmed: the oldest of them could be a stop or a kill."""
    first = append_command(run.control, "stop", keep=3)
    run.reader.poll()                                   # read: may go
    unread = [append_command(run.control, "pause", keep=3) for _ in range(2)]
    third = append_command(run.control, "resume", keep=3)   # drops the read stop
    doc = orjson.loads(run.control.read_bytes())
    assert [c["id"] for c in doc["commands"]] == [*unread, third] and first not in str(doc)
    with pytest.raises(OperatorError, match="3 commands the supervisor has not read"):
        append_command(run.control, "kill", keep=3)
    assert [c["id"] for c in orjson.loads(run.control.read_bytes())["commands"]] == [
        *unread, third]                                 # unchanged
    run.reader.poll()
    append_command(run.control, "kill", keep=3)         # read now: room again


def test_append_command_stays_under_the_size_limit(run: Run) -> None:
    for i in range(5):
        append_command(run.control, "reload", {"params": {"pad": "x" * 300}}, id=f"r{i}",
                       max_bytes=1024)
        run.reader.poll()
    assert run.control.stat().st_size <= 1024
    assert orjson.loads(run.control.read_bytes())["commands"][-1]["id"] == "r4"
    with pytest.raises(InputError, match="over the 1024-byte limit"):
        append_command(run.control, "reload", {"params": {"pad": "x" * 2000}}, max_bytes=1024)


@pytest.mark.parametrize("mode", [0o600, 0o666])
def test_append_command_replaces_junk_and_untrusted_files(run: Run, mode: int) -> None:
    if mode == 0o600:
        run.write(b"\x00\x01junk")
    else:               # another user's commands must not be laundered into a trusted file
        run.write_cmds({"id": "evil", "cmd": "stop"}, mode=mode)
    cid = append_command(run.control, "pause")
    doc = orjson.loads(run.control.read_bytes())
    assert [c["id"] for c in doc["commands"]] == [cid]


def test_append_command_replaces_a_symlink_not_its_target(run: Run, tmp_path: Path) -> None:
    target = tmp_path / "target.json"
    target.write_bytes(b"keep me")
    run.control.symlink_to(target)
    append_command(run.control, "pause")
    assert not run.control.is_symlink() and target.read_bytes() == b"keep me"


def test_concurrent_appends_lose_nothing(run: Run) -> None:
    written: dict[int, list[str]] = {0: [], 1: []}
    barrier = threading.Barrier(2)

    def writer(n: int) -> None:
        barrier.wait()
        for _ in range(50):
            written[n].append(append_command(run.control, "pause", keep=200))

    threads = [threading.Thread(target=writer, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cmds, errors = run.reader.poll()
    got = [c.id for c in cmds]
    assert errors == [] and len(got) == 100
    for n in (0, 1):                            # each writer's commands, in its own order
        assert [i for i in got if i in set(written[n])] == written[n]


# --- waiting for the ack --------------------------------------------------------------------

class FakeTime:
    def __init__(self, on_sleep: list | None = None) -> None:
        self.t = 100.0
        self.sleeps = 0
        self.on_sleep = on_sleep or []

    def clock(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s
        if self.sleeps < len(self.on_sleep):
            self.on_sleep[self.sleeps]()
        self.sleeps += 1


def test_wait_for_ack_returns_the_record(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    rec = {"id": "a", "cmd": "pause", "result": "ok", "error": None}
    steps = [
        lambda: None,                                               # still missing
        lambda: status.write_bytes(b'{"commands": [{"id": "a", "res'),  # half-written
        lambda: status.write_bytes(orjson.dumps({"commands": [{**rec, "result": None}]})),
        lambda: status.write_bytes(orjson.dumps({"commands": [{"id": "b", "result": "ok"},
                                                              rec]})),
    ]
    ft = FakeTime(steps)
    assert wait_for_ack(status, "a", 10, clock=ft.clock, sleep=ft.sleep) == rec
    assert ft.sleeps == 4


def test_wait_for_ack_times_out(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    status.write_bytes(orjson.dumps({"commands": [{"id": "a", "result": None}]}))
    ft = FakeTime()
    assert wait_for_ack(status, "a", 1.0, poll_s=0.1, clock=ft.clock, sleep=ft.sleep) is None
    assert 9 <= ft.sleeps <= 11 and ft.t == pytest.approx(101.0)


def test_end_to_end_ack_through_status(run: Run) -> None:
    cid = append_command(run.control, "stop")
    (cmd,), _ = run.reader.poll()
    run.ledger.done(cmd.id, "ok")
    status = run.dir / "status.json"
    status.write_bytes(orjson.dumps({"commands": run.ledger.records()}))
    ft = FakeTime()
    assert wait_for_ack(status, cid, 1, clock=ft.clock, sleep=ft.sleep)["result"] == "ok"


def _nested(depth: int) -> list:
    v: list = [1]
    for _ in range(depth):
        v = [v]
    return v


@pytest.mark.parametrize("args, why", [
    ({"params": {"a": _nested(40)}}, "deeper than"),
    ({"shadow": 1001}, "shadow must be >= 0 and <= 1000"),
    ({"timeout": 1e300}, "timeout must be a finite number > 0 and <= 3600"),
])
def test_reload_args_are_bounded(args: dict, why: str) -> None:
    with pytest.raises(InputError, match=why):
        parse_command({"id": "b1", "cmd": "reload", "args": args})


def test_a_fifo_or_a_device_is_no_strategy_file(tmp_path: Path) -> None:
    from supervisor.deploys import DeployStore

    fifo = tmp_path / "fifo.py"
    os.mkfifo(fifo)
    store = DeployStore(tmp_path)
    with pytest.raises(InputError, match="not a regular file"):
        store.stage(fifo, {})                       # must not block
    with pytest.raises(InputError, match="not a regular file"):
        store.stage(Path("/dev/zero"), {})
    big = tmp_path / "big.py"
    big.write_bytes(b"#" * (2 << 20))
    with pytest.raises(InputError, match="over the"):
        store.stage(big, {})
