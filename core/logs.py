"""One logging set-up for every process: JSON lines, per-role rotating files, no secrets.

``setup_logging(role, run_dir=...)`` replaces the root logger's handlers (``force=True``):

* a stream handler (stderr): today's human ``LOG_FORMAT`` on a terminal, JSON lines otherwise
  (a child's stderr is redirected to ``<run dir>/logs/<name>.log`` by the supervisor);
* with a run dir, ``<run dir>/logs/<role>.jsonl``: JSON lines, mode 0600, rotated at
  ``NOBLINK_LOG_MAX_BYTES`` (10 MiB) into ``<role>.jsonl.1`` .. ``.N``
  (``NOBLINK_LOG_BACKUPS``, 5). It reopens the file when it was moved or deleted, as
  ``WatchedFileHandler`` does, so an external logrotate or a second writer cannot strand it;
* a :class:`Redactor` on every handler.

One JSON object per line, keys in this order::

    {"ts": "2024-05-01T12:00:00.123Z", "level": "INFO", "role": "feed", "pid": 4242,
     "epoch": 7, "logger": "feed_worker", "msg": "...", "exc": "Traceback ..."}

``epoch`` appears once known (``set_log_epoch``); ``exc`` only with an exception, ``stack``
only with ``stack_info``.

Redaction rewrites a record's ``msg % args`` into its final text and masks, in this order:
registered literals (:func:`register_secret`: the credentials loader and the API token), the
value after a secret-named key (``"secret": "..."``, ``'api_key': '...'``, ``POLY_PASSPHRASE:
...``, ``api_key=...``, ``(b'poly_signature', b'...')``), ``Bearer`` tokens, UUIDs (L2 API
keys), ``0x`` + 64 or more hex (private keys, EIP-712 signatures), bare runs of 64 or more hex
with a letter (passphrases; a 77-digit token id has no letter; one right after ``sha256`` or
``digest`` is a digest and stays), and 43/44-character base64url words with both cases (L2
secrets, HMAC signatures). Exception and stack text is masked the same way. A 0x + 40 hex
address, a slug, a token id and prices pass. Everything masked becomes ``[REDACTED]``: nothing
of a secret is kept. Other 64-hex values (an unnamed digest, a tx hash, 0x order ids) are
masked too: log a prefix, or name it ``sha256``.

The HTTP/2 libraries stay at WARNING whatever the level: hpack logs every encoded header
block, and Huffman-coded bytes are a secret no pattern can see.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import re
import stat
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

LOG_FORMAT = "%(asctime)s %(levelname).1s %(processName)s[%(process)d] %(name)s: %(message)s"
REDACTED = "[REDACTED]"
DEFAULT_MAX_BYTES = 10 << 20
DEFAULT_BACKUPS = 5
MIN_SECRET_LEN = 8          # shorter literals would mask ordinary words
# Loggers that print request headers (API key, passphrase, signature) at DEBUG: hpack/h2 log
# every encoded header of an HTTP/2 request. Never below WARNING, whatever the level says.
CHATTY_LOGGERS = ("hpack", "h2", "httpcore", "httpx")

_ROLE_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


# -- redaction ------------------------------------------------------------------------------

# Names whose value is a secret, with the prefixes the code and the venue use
# (POLY_API_KEY, NOBLINK_CLOB_SECRET, NOBLINK_PK, x-api-key). Not POLY_ADDRESS (public), not
# signature_type / token_id (the key must end where the name ends), not a bare "token".
_KEY = (r"(?:(?:poly|noblink(?:[_-]clob)?|clob|x)[_-])?"
        r"(?:api[_-]?(?:key|secret|passphrase|token)|(?:client[_-]?)?secret|passphrase"
        r"|password|passwd|signature|private[_-]?key|priv[_-]?key|pk"
        r"|(?:access|auth|refresh|bearer|id)[_-]?token|(?:proxy[_-])?authorization"
        r"|(?:set[_-])?cookie)")
# "secret": "...", 'api_key': '...', b'poly_signature', b'...', 'pk' => '...'
_KV_QUOTED = re.compile(
    r"(?<![\w-])b?(?P<kq>[\"'])" + _KEY + r"(?P=kq)\s*(?:=>|[:=,])\s*b?(?P<vq>[\"'])"
    r"(?P<val>(?:\\.|(?!(?P=vq))[^\\])*)(?P=vq)", re.IGNORECASE)
# api_key=..., POLY_PASSPHRASE: ..., Authorization: Bearer ...
_KV_PLAIN = re.compile(
    r"(?<![\w-])" + _KEY + r"(?![\w-])\s*[:=]\s*(?!\[REDACTED\])"
    r"(?P<val>\"[^\"]*\"|'[^']*'"
    r"|(?:(?:bearer|basic|token)\s+(?!\[REDACTED\]))?[^\s,;&'\"}\])>]+)",
    re.IGNORECASE)
_BEARER = re.compile(r"(?P<scheme>\bbearer\s+)(?!\[REDACTED\])[A-Za-z0-9._~+/=-]{8,}",
                     re.IGNORECASE)
_UUID = re.compile(r"(?<![\w-])[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}"
                   r"-[0-9a-fA-F]{12}(?![\w-])")
_HEX0X = re.compile(r"(?<!\w)0[xX][0-9a-fA-F]{64,}(?!\w)")
_HEX = re.compile(r"(?<!\w)[0-9a-fA-F]{64,}(?!\w)")
_B64URL = re.compile(r"(?<![\w-])[A-Za-z0-9_-]{43}(?:=|[A-Za-z0-9_-])?(?![\w=-])")
_HAS_AF = re.compile(r"[a-fA-F]")
# A digest named as one stays readable (the deployed strategy's sha256 in the supervisor log)
_DIGEST_NAME = re.compile(r"(?:sha256|digest)[\"']?(?:\s*[:=]\s*|\s+)[\"']?$", re.IGNORECASE)
_HAS_UPPER = re.compile(r"[A-Z]")
_HAS_LOWER = re.compile(r"[a-z]")
# Cheap gate: a text with neither a long word nor a secret-ish name has nothing to mask
# (literals are checked separately). Substring tests beat one case-insensitive regex 4x.
_LONG_WORD = re.compile(r"[A-Za-z0-9_-]{32}")
_NAME_PARTS = ("key", "secret", "pass", "sign", "token", "bearer", "auth", "pk", "cookie",
               "priv")


def _candidate(text: str) -> bool:
    low = text.lower()
    return any(p in low for p in _NAME_PARTS) or _LONG_WORD.search(text) is not None


def _mask_value(m: re.Match[str]) -> str:
    s, e = m.span("val")
    base = m.start()
    text = m.group(0)
    return text[:s - base] + REDACTED + text[e - base:]


def _mask_bearer(m: re.Match[str]) -> str:
    return m.group("scheme") + REDACTED


def _mask_hex(m: re.Match[str]) -> str:
    if not _HAS_AF.search(m.group(0)):
        return m.group(0)                       # all digits: a token id, not a key
    if _DIGEST_NAME.search(m.string, max(0, m.start() - 16), m.start()):
        return m.group(0)                       # "--sha256 <hex>": which code runs
    return REDACTED


def _mask_b64(m: re.Match[str]) -> str:
    w = m.group(0)
    return REDACTED if _HAS_UPPER.search(w) and _HAS_LOWER.search(w) else w


_SHAPES: tuple[tuple[re.Pattern[str], Any], ...] = (
    (_KV_QUOTED, _mask_value),
    (_KV_PLAIN, _mask_value),
    (_BEARER, _mask_bearer),
    (_UUID, REDACTED),
    (_HEX0X, REDACTED),
    (_HEX, _mask_hex),
    (_B64URL, _mask_b64),
)


class SecretRegistry:
    """Literal secrets known to this process (credentials, the API token)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self.pattern: re.Pattern[str] | None = None

    def add(self, value: str) -> bool:
        """Register ``value``; False (and ignored) when shorter than MIN_SECRET_LEN."""
        value = str(value).strip()
        if len(value) < MIN_SECRET_LEN:
            return False
        with self._lock:
            if value not in self._values:
                self._values.add(value)
                # longest first: a secret that contains another is masked whole
                alts = sorted(self._values, key=len, reverse=True)
                self.pattern = re.compile("|".join(map(re.escape, alts)))
        return True


_REGISTRY = SecretRegistry()


def register_secret(value: str | None) -> bool:
    """Mask ``value`` wherever it appears in this process's log from now on.

    Empty and short values (under 8 characters) are ignored and return False."""
    return False if not value else _REGISTRY.add(value)


def redact(text: str, registry: SecretRegistry | None = None) -> str:
    """``text`` with every secret replaced by ``[REDACTED]``."""
    pattern = (registry or _REGISTRY).pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    if not _candidate(text):
        return text
    for rx, repl in _SHAPES:
        text = rx.sub(repl, text)
    return text


class Redactor(logging.Filter):
    """Renders ``msg % args`` into the final text, masks it, and masks exception text.

    Put it on handlers (a logger's filter misses records propagated from its children). It
    changes the record itself, so every later handler sees only the masked text; a record
    already masked is passed through."""

    def __init__(self, registry: SecretRegistry | None = None) -> None:
        super().__init__()
        self._registry = registry
        self._exc_formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_noblink_redacted", False):
            return True
        reg = self._registry
        try:
            msg = record.getMessage()
        except Exception:            # bad args: never let logging print them unmasked
            msg = f"{record.msg} (log arguments did not format: {record.args!r})"
        record.msg = redact(msg, reg)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exc_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, reg)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, reg)
        record._noblink_redacted = True
        return True


# -- formatting -----------------------------------------------------------------------------

@dataclass
class _Context:
    role: str = "noblink"
    epoch: int | None = None


_CTX = _Context()


def _iso_utc(created: float) -> str:
    ms = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{ms:03d}Z"


class JsonFormatter(logging.Formatter):
    """One orjson object per record (no trailing newline: the handler adds it)."""

    def __init__(self, ctx: _Context = _CTX) -> None:
        super().__init__()
        self._ctx = ctx

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"ts": _iso_utc(record.created), "level": record.levelname,
                               "role": self._ctx.role, "pid": record.process}
        if self._ctx.epoch is not None:
            doc["epoch"] = self._ctx.epoch
        doc["logger"] = record.name
        doc["msg"] = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = record.stack_info
        try:
            return orjson.dumps(doc).decode()
        except TypeError:            # lone surrogates: orjson refuses str that is not UTF-8
            return orjson.dumps({k: v.encode("utf-8", "replace").decode()
                                 if isinstance(v, str) else v for k, v in doc.items()}).decode()


# -- the per-role file ----------------------------------------------------------------------

class RotatingJsonFile(logging.handlers.RotatingFileHandler):
    """RotatingFileHandler that opens 0600 without following a symlink, formats each record
    once, and reopens the file when it was moved or deleted behind its back."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self._dev_ino: tuple[int, int] | None = None
        super().__init__(path, maxBytes=max_bytes, backupCount=max(1, backups),
                         encoding="utf-8")

    def _open(self) -> IO[str]:
        fd = os.open(self.baseFilename,
                     os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"{self.baseFilename} is not a regular file")
            if stat.S_IMODE(st.st_mode) != 0o600:
                os.fchmod(fd, 0o600)
            self._dev_ino = (st.st_dev, st.st_ino)
            return open(fd, "a", encoding=self.encoding, errors=self.errors)
        except BaseException:
            os.close(fd)
            raise

    def _reopen_if_moved(self) -> None:
        try:
            st = os.stat(self.baseFilename)
            same = (st.st_dev, st.st_ino) == self._dev_ino
        except FileNotFoundError:
            same = False
        if not same and self.stream is not None:
            self.stream.close()
            self.stream = None           # type: ignore[assignment]

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            self._reopen_if_moved()
            if self.stream is None:
                self.stream = self._open()
            if self.maxBytes > 0:
                self.stream.seek(0, os.SEEK_END)      # the real size, even with two writers
                if self.stream.tell() + len(line) >= self.maxBytes and self.stream.tell():
                    self.doRollover()
            self.stream.write(line)
            self.stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def _env_int(name: str, default: int, minimum: int) -> int:
    try:
        return max(minimum, int(os.environ.get(name, "") or default))
    except ValueError:
        return default


def _private_log_dir(run_dir: Path) -> Path:
    """``<run dir>/logs``, created 0700 (the run dir too, when missing). Refuses a run dir or
    logs dir that is a symlink, not ours, or writable by others (state/run.py's rule)."""
    run_dir = Path(run_dir)
    if not os.path.lexists(run_dir):
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(run_dir, 0o700)
    logs = run_dir / "logs"
    with contextlib.suppress(FileExistsError):
        os.mkdir(logs, 0o700)
    for d in (run_dir, logs):
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode):
            raise OSError(f"{d} is not a directory (or is a symlink)")
        if st.st_uid != os.geteuid():
            raise OSError(f"{d} is owned by uid {st.st_uid}, not by this user")
        if st.st_mode & 0o022:
            raise OSError(f"{d} is writable by group or others")
    return logs


# -- set-up ---------------------------------------------------------------------------------

def default_role() -> str:
    """The package the process runs as (``python -m feed_worker`` -> "feed"), else argv[0]."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = spec.name if spec is not None else Path(sys.argv[0] or "noblink").stem
    name = name.removesuffix(".__main__").split(".")[0].removesuffix("_worker")
    return name if _ROLE_OK.fullmatch(name) else "noblink"


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def set_log_epoch(epoch: int | None) -> None:
    """Stamp every later JSON line with ``epoch`` (the strategy worker's fencing epoch)."""
    _CTX.epoch = None if epoch is None else int(epoch)


def setup_logging(role: str | None = None, *, level: str | None = None,
                  run_dir: Path | None = None, epoch: int | None = None,
                  stream: IO[str] | None = None) -> Path | None:
    """Install the stream handler (and, with ``run_dir``, the role's file) on the root logger,
    replacing its handlers. Callable again (first without, then with a run dir).

    ``level``: a name (default ``$NOBLINK_LOG``, else INFO). Returns the file's path, or None
    without a run dir or when the file could not be opened (a warning says why; the process
    keeps its stream log rather than failing to start)."""
    role = role or default_role()
    if not _ROLE_OK.fullmatch(role):
        raise ValueError(f"bad log role {role!r}")
    _CTX.role = role
    if epoch is not None:
        set_log_epoch(epoch)
    stream = stream if stream is not None else sys.stderr
    name = (level or os.environ.get("NOBLINK_LOG") or "INFO").upper()
    lvl = logging.getLevelName(name)
    bad_level = not isinstance(lvl, int)

    redactor = Redactor()
    root = logging.getLogger()
    for h in root.handlers[:]:
        root.removeHandler(h)
        h.close()
    out = logging.StreamHandler(stream)
    out.setFormatter(logging.Formatter(LOG_FORMAT) if _isatty(stream) else JsonFormatter())
    out.addFilter(redactor)
    root.addHandler(out)
    root.setLevel(logging.INFO if bad_level else lvl)
    for chatty in CHATTY_LOGGERS:
        logging.getLogger(chatty).setLevel(logging.WARNING)
    log = logging.getLogger("core.logs")
    if bad_level:
        log.warning("unknown log level %r; using INFO", level or os.environ.get("NOBLINK_LOG"))
    if run_dir is None:
        return None
    path = None
    try:
        path = _private_log_dir(run_dir) / f"{role}.jsonl"
        fh = RotatingJsonFile(path, _env_int("NOBLINK_LOG_MAX_BYTES", DEFAULT_MAX_BYTES, 0),
                              _env_int("NOBLINK_LOG_BACKUPS", DEFAULT_BACKUPS, 1))
    except OSError as e:
        log.warning("no log file in %s: %s (logging to the stream only)", run_dir, e)
        return None
    fh.setFormatter(JsonFormatter())
    fh.addFilter(redactor)
    root.addHandler(fh)
    stream_level = os.environ.get("NOBLINK_STREAM_LOG_LEVEL")
    if stream_level and not _isatty(stream):
        # A supervised child's stream is a plain file that never rotates (it exists to catch
        # what bypasses logging: a crash before set-up, a print): the rotated file above has
        # every line, the stream only what an operator must not miss.
        out.setLevel(stream_level.upper())
    return path
