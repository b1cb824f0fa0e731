"""core/logs.py: JSON lines, the per-role rotating file, and the redactor fed every secret shape."""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import re
import stat
import types
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from core import logs, proc
from core.logs import REDACTED, redact, register_secret, set_log_epoch, setup_logging

ROLE = "tester"


def _hex(seed: str, n: int) -> str:
    """n hex digits, deterministic, with at least one letter (as a real key has)."""
    out = ""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()
        i += 1
    return out[:n]


# Realistic fakes, one per shape (deterministic: no test depends on luck).
API_KEY = "3f9c2a7e-1b4d-4e8a-9c6f-0d2b7a5e1c84"                     # L2 API key: a uuid
SECRET = base64.urlsafe_b64encode(hashlib.sha256(b"l2-secret").digest()).decode()  # 44 chars
PASSPHRASE_HEX = _hex("passphrase", 64)
PASSPHRASE_TEXT = "s3cr3t-Passphrase.2024"
PRIVATE_KEY = "0x" + _hex("private key", 64)
SIGNATURE = "0x" + _hex("eip712", 130)
HMAC_SIG = base64.urlsafe_b64encode(hashlib.sha256(b"hmac").digest()).decode()
BEARER = "nbk_7fQ2xLp9Rz3Vw8Yt"
LITERAL = "opaque~token~Zq81!"                         # no known shape: registered literally
ADDRESS = "0x" + _hex("address", 40)
TOKEN_ID = "71321045679252212594626385532706912750332728571942532289631379312455583992563"
SLUG = "btc-updown-5m-1718000000"

SHAPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "uuid api key": (f"api creds for {API_KEY} loaded", (API_KEY,)),
    "base64url secret": (f"secret is {SECRET}", (SECRET,)),
    "64-hex passphrase": (f"derived {PASSPHRASE_HEX}", (PASSPHRASE_HEX,)),
    "passphrase after its key": (f"POLY_PASSPHRASE: {PASSPHRASE_TEXT} set",
                                 (PASSPHRASE_TEXT,)),
    "private key": (f"signer {PRIVATE_KEY} ready", (PRIVATE_KEY, PRIVATE_KEY[2:])),
    "eip712 signature": (f"signed order {SIGNATURE}", (SIGNATURE, SIGNATURE[2:])),
    "bearer token": (f"GET /status Authorization: Bearer {BEARER}", (BEARER,)),
    "bearer token in prose": (f"retrying with bearer {BEARER}", (BEARER,)),
    "POLY_* headers dict at DEBUG": (
        f"Request headers: {{'POLY_ADDRESS': '{ADDRESS}', 'POLY_SIGNATURE': '{HMAC_SIG}', "
        "'POLY_TIMESTAMP': '1718000000', 'POLY_API_KEY': 'fake-api-key-6b1d0c2e', "
        "'POLY_PASSPHRASE': 'fake-passphrase-93af11'}",
        (HMAC_SIG, "fake-api-key-6b1d0c2e", "fake-passphrase-93af11")),
    "hpack header tuples": (
        "Adding b'poly_api_key'=b'fake-api-key-6b1d0c2e' to the header table; "
        "[(b':method', b'GET'), (b'poly_passphrase', b'fake passphrase 93af11')]",
        ("fake-api-key-6b1d0c2e", "fake passphrase 93af11")),
    "JSON body with signature": (
        orjson.dumps({"order": {"maker": ADDRESS, "tokenId": TOKEN_ID, "signatureType": 1,
                                "signature": "sig-opaque-value-1"}, "owner": API_KEY,
                      "orderType": "GTC"}).decode(),
        ("sig-opaque-value-1", API_KEY)),
    "python dict with secrets": (
        "creds {'api_key': 'k-123456789', 'secret': 'not-a-b64-shape', "
        "'passphrase': 'pass phrase'}", ("k-123456789", "not-a-b64-shape", "pass phrase")),
    "key=value and env forms": (
        "env NOBLINK_CLOB_SECRET=abc123secret NOBLINK_PK=deadbeefcafe api_key=kv-key-001",
        ("abc123secret", "deadbeefcafe", "kv-key-001")),
    "registered literal": (f"token file holds {LITERAL}", (LITERAL,)),
}
# What must survive in the same messages
KEPT = {
    "POLY_* headers dict at DEBUG": (ADDRESS, "POLY_ADDRESS", "1718000000", "POLY_API_KEY"),
    "JSON body with signature": (ADDRESS, TOKEN_ID, '"signatureType":1', "GTC"),
    "private key": ("signer", "ready"),
}

NOT_SECRETS = [
    f"maker {ADDRESS} funder {ADDRESS.upper().replace('0X', '0x')}",
    f"market {SLUG} up token {TOKEN_ID} down token {TOKEN_ID[::-1]}",
    "will-bitcoin-reach-100000-dollars-by-dec-31",                   # a 43-char slug
    "order 1a2b3c4d5e6f7a8b GOOD: filled 10 @ 0.52 (bid 0.51 ask 0.53) pnl -1.25",
    "signature_type=1 token_id=7132104567925221259462638553270691 keys=3 passes=2",
    "executor not ready: connection refused (retrying in 0.5s)",
    "window 1718000000..1718000300 price 67012.5 mid 0.495",
    f"child strategy0: -m strategy_worker --sha256 {_hex('deploy', 64)} --notify-pid 42",
]


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def isolated_logging() -> Iterator[None]:
    """Each test gets a bare root logger; the handlers and levels of before come back."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    chatty = {n: logging.getLogger(n).level for n in logs.CHATTY_LOGGERS}
    ctx = (logs._CTX.role, logs._CTX.epoch)
    for h in saved:
        root.removeHandler(h)
    register_secret(LITERAL)
    yield
    for h in root.handlers[:]:
        root.removeHandler(h)
        h.close()
    for h in saved:
        root.addHandler(h)
    root.setLevel(level)
    for n, lvl in chatty.items():
        logging.getLogger(n).setLevel(lvl)
    logs._CTX.role, logs._CTX.epoch = ctx


def _setup(tmp_path: Path, stream: io.StringIO | None = None, **kw) -> tuple[io.StringIO, Path]:
    stream = stream if stream is not None else io.StringIO()
    path = setup_logging(ROLE, level="DEBUG", run_dir=tmp_path / "run", stream=stream, **kw)
    assert path == tmp_path / "run" / "logs" / f"{ROLE}.jsonl"
    return stream, path


def _lines(text: str) -> list[dict]:
    return [orjson.loads(line) for line in text.splitlines() if line]


def _log_three_ways(text: str) -> None:
    log = logging.getLogger("tests.secrets")
    log.info(text)
    log.warning("args: %s and %r", text, {"v": text})
    try:
        raise RuntimeError(f"request failed: {text}")
    except RuntimeError:
        log.exception("with exception")


# -- redaction ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", list(SHAPES))
def test_each_secret_shape_is_redacted_in_stream_and_file(tmp_path: Path, shape: str) -> None:
    text, secrets = SHAPES[shape]
    stream, path = _setup(tmp_path)
    _log_three_ways(text)
    for where, out in (("stream", stream.getvalue()), ("file", path.read_text())):
        for secret in secrets:
            assert secret not in out, f"{shape}: {secret[:10]}... leaked into the {where}"
        msg_line, args_line, exc_line = _lines(out)
        assert REDACTED in msg_line["msg"] and REDACTED in args_line["msg"]
        assert "Traceback" in exc_line["exc"] and REDACTED in exc_line["exc"]
        for kept in KEPT.get(shape, ()):
            assert kept in msg_line["msg"], f"{shape}: {kept!r} was masked"


@pytest.mark.parametrize("text", NOT_SECRETS)
def test_public_values_are_not_redacted(tmp_path: Path, text: str) -> None:
    stream, path = _setup(tmp_path)
    logging.getLogger("tests.public").info("%s", text)
    assert redact(text) == text
    assert _lines(stream.getvalue())[0]["msg"] == text
    assert _lines(path.read_text())[0]["msg"] == text


def test_redaction_masks_whole_values_and_is_idempotent() -> None:
    out = redact(f"key {API_KEY} pk {PRIVATE_KEY}")
    assert out == f"key {REDACTED} pk {REDACTED}"          # nothing of a secret is kept
    assert redact(out) == out
    assert redact(f"Authorization: Bearer {BEARER}") == f"Authorization: {REDACTED}"
    assert redact(f"secret={REDACTED}") == f"secret={REDACTED}"


def test_register_secret_ignores_short_and_empty_values() -> None:
    assert register_secret("") is False and register_secret(None) is False
    assert register_secret("abc") is False
    assert redact("abc and 0.52") == "abc and 0.52"
    longer = "my-literal-" + LITERAL
    assert register_secret(longer) is True
    assert redact(f"x {longer} y") == f"x {REDACTED} y"   # the longer one masked whole


def test_arguments_that_do_not_format_are_masked_not_leaked(tmp_path: Path) -> None:
    stream, path = _setup(tmp_path)
    logging.getLogger("tests.bad").info("two %s %s", PRIVATE_KEY)   # one argument short
    for out in (stream.getvalue(), path.read_text()):
        assert PRIVATE_KEY not in out and PRIVATE_KEY[2:] not in out
        assert "did not format" in _lines(out)[0]["msg"]


def test_a_record_is_redacted_for_every_later_handler(tmp_path: Path) -> None:
    _setup(tmp_path)
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logging.getLogger().addHandler(Keep())
    logging.getLogger("tests.later").info("pk %s", PRIVATE_KEY)
    assert seen and PRIVATE_KEY not in seen[0].getMessage()


def test_credentials_register_their_secrets() -> None:
    from position_worker.credentials import Credentials

    pp = "cred-passphrase-" + _hex("cp", 6)
    Credentials(private_key=PRIVATE_KEY, api_key="cred-key-9f8e7d", api_secret="cred-secret-x1",
                api_passphrase=pp)
    assert redact(f"got cred-key-9f8e7d cred-secret-x1 {pp}") == \
        f"got {REDACTED} {REDACTED} {REDACTED}"


# -- format ---------------------------------------------------------------------------------

def test_json_lines_carry_ts_level_role_pid_epoch_logger_msg(tmp_path: Path) -> None:
    stream, path = _setup(tmp_path)
    log = logging.getLogger("tests.fields")
    log.info("before the epoch: %d", 1)
    set_log_epoch(7)
    log.debug("debug line")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.error("boom", exc_info=True)
    for out in (stream.getvalue(), path.read_text()):
        first, second, third = _lines(out)
        assert "epoch" not in first and first["msg"] == "before the epoch: 1"
        for line in (first, second, third):
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
            assert line["role"] == ROLE and line["pid"] == os.getpid()
            assert line["logger"] == "tests.fields"
        assert [second["level"], second["epoch"], second["msg"]] == ["DEBUG", 7, "debug line"]
        assert third["level"] == "ERROR" and third["epoch"] == 7
        assert "ZeroDivisionError" in third["exc"]
        assert list(third) == ["ts", "level", "role", "pid", "epoch", "logger", "msg", "exc"]


def test_a_terminal_gets_human_lines(tmp_path: Path) -> None:
    tty = FakeTTY()
    _, path = _setup(tmp_path, stream=tty)
    logging.getLogger("tests.human").warning("careful with %s", PRIVATE_KEY)
    line = tty.getvalue().strip()
    assert not line.startswith("{")
    assert re.search(rf" W \w+\[{os.getpid()}\] tests\.human: careful with \[REDACTED\]$", line)
    assert _lines(path.read_text())[0]["msg"] == f"careful with {REDACTED}"   # file: JSON


def test_unicode_and_lone_surrogates_still_give_json(tmp_path: Path) -> None:
    stream, _ = _setup(tmp_path)
    logging.getLogger("tests.uni").info("ünïcode → %s", "bad \udcff byte")
    line = _lines(stream.getvalue())[0]
    assert line["msg"].startswith("ünïcode → bad ")


# -- set-up and the file --------------------------------------------------------------------

def test_file_is_private_and_rotates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOBLINK_LOG_MAX_BYTES", "2000")
    monkeypatch.setenv("NOBLINK_LOG_BACKUPS", "2")
    old = os.umask(0o022)                   # a permissive umask must not widen the files
    try:
        _, path = _setup(tmp_path)
        log = logging.getLogger("tests.rotate")
        for i in range(120):
            log.info("line %03d %s", i, "x" * 40)
    finally:
        os.umask(old)
    logs_dir = path.parent
    assert stat.S_IMODE(os.stat(logs_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(logs_dir.parent).st_mode) == 0o700
    names = sorted(p.name for p in logs_dir.iterdir())
    assert names == [f"{ROLE}.jsonl", f"{ROLE}.jsonl.1", f"{ROLE}.jsonl.2"]
    for p in logs_dir.iterdir():
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, p
        assert 0 < p.stat().st_size <= 2000
        assert all(line["role"] == ROLE for line in _lines(p.read_text()))
    assert _lines(path.read_text())[-1]["msg"].startswith("line 119 ")


def test_a_moved_or_deleted_file_is_reopened(tmp_path: Path) -> None:
    _, path = _setup(tmp_path)
    log = logging.getLogger("tests.moved")
    log.info("one")
    path.rename(path.with_name("rotated-elsewhere"))
    log.info("two")
    path.unlink()
    log.info("three")
    assert [x["msg"] for x in _lines(path.read_text())] == ["three"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_setup_twice_replaces_the_handlers(tmp_path: Path) -> None:
    first = io.StringIO()
    assert setup_logging("supervisor", stream=first) is None
    second, path = _setup(tmp_path)
    assert len(logging.getLogger().handlers) == 2
    logging.getLogger("tests.twice").info("hello")
    assert first.getvalue() == ""
    assert _lines(second.getvalue())[0]["msg"] == "hello"
    assert _lines(path.read_text())[0]["role"] == ROLE


@pytest.mark.parametrize("unsafe", ["group-writable", "symlinked logs"])
def test_an_unsafe_run_dir_gets_no_file(tmp_path: Path, unsafe: str) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    if unsafe == "group-writable":
        os.chmod(run_dir, 0o770)
    else:
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        (run_dir / "logs").symlink_to(tmp_path / "elsewhere")
    stream = io.StringIO()
    assert setup_logging(ROLE, run_dir=run_dir, stream=stream) is None
    assert "no log file" in _lines(stream.getvalue())[0]["msg"]
    logging.getLogger("tests.unsafe").info("nowhere but the stream")
    assert not (run_dir / "logs" / f"{ROLE}.jsonl").exists()
    assert not (tmp_path / "elsewhere" / f"{ROLE}.jsonl").exists()


def test_http2_loggers_stay_at_warning_even_at_debug(tmp_path: Path) -> None:
    _setup(tmp_path)
    assert logging.getLogger().level == logging.DEBUG
    for name in logs.CHATTY_LOGGERS:
        assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING
        assert not logging.getLogger(name + ".sub").isEnabledFor(logging.DEBUG)


def test_level_comes_from_the_environment_and_a_bad_one_falls_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOBLINK_LOG", "warning")
    setup_logging(ROLE, stream=io.StringIO())
    assert logging.getLogger().level == logging.WARNING
    stream = io.StringIO()
    setup_logging(ROLE, level="chatty", stream=stream)
    assert logging.getLogger().level == logging.INFO
    assert "unknown log level" in stream.getvalue()


def test_old_entry_point_still_takes_the_level_first(tmp_path: Path) -> None:
    assert proc.LOG_FORMAT == logs.LOG_FORMAT
    proc.setup_logging("DEBUG")
    assert logging.getLogger().level == logging.DEBUG
    path = proc.setup_logging("INFO", role="strategy1", run_dir=tmp_path / "r", epoch=3)
    assert path == tmp_path / "r" / "logs" / "strategy1.jsonl"
    logging.getLogger("x").info("hi")
    assert _lines(path.read_text())[0]["epoch"] == 3


def test_default_role_is_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name="feed_worker.__main__")  # type: ignore[assignment]
    monkeypatch.setitem(__import__("sys").modules, "__main__", main)
    assert logs.default_role() == "feed"
    main.__spec__ = types.SimpleNamespace(name="supervisor.cli")  # type: ignore[assignment]
    assert logs.default_role() == "supervisor"
    with pytest.raises(ValueError):
        setup_logging("../evil", stream=io.StringIO())
