"""The API token and the check every request passes.

The token lives in ``<run dir>/api.token`` (mode 0600, ``secrets.token_urlsafe(32)``),
created at the first start and kept afterwards; delete the file and restart to rotate it.
Whoever can read it can steer the bot (a reload runs the Python file it names), so it gets
the same protection as the run directory itself.

A request carries it as ``Authorization: Bearer <token>``, compared in constant time
(:func:`hmac.compare_digest`). Mutating requests (anything but GET and HEAD) always need it;
reads need it unless the worker runs with ``--public-read``. No token -> 401, a wrong one ->
403, both as JSON.

The dashboard page (``/``) is the one public path: a static file with no data in it, which
a browser must be able to load before it has the token (page.py).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
import stat
from pathlib import Path

from aiohttp import web

from api_worker.errors import ApiError, Handler
from core.errors import OperatorError

log = logging.getLogger("api_worker.auth")

READ_METHODS = frozenset({"GET", "HEAD"})
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="noblink"'}


def load_or_create_token(path: Path) -> str:
    """The token in ``path``; a new one (file 0600, O_EXCL) if there is none or it is empty.

    Refuses (OperatorError) a symlink or a file of another user. A file readable by group or
    others is tightened to 0600 with a warning (its token may have leaked: delete it to
    rotate).
    """
    path = Path(path)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            token = secrets.token_urlsafe(32)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.unlink(missing_ok=True)
            wfd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
            with os.fdopen(wfd, "w") as f:
                f.write(token + "\n")
            try:
                os.link(tmp, path)              # never replaces a token another process made
            except FileExistsError:
                continue                        # lost the race: read theirs
            finally:
                tmp.unlink(missing_ok=True)
            log.info("created a new API token in %s", path)
            return token
        except OSError as e:
            raise OperatorError(f"cannot open {path}: {e.strerror} (a symlink is refused)"
                                ) from e
        with os.fdopen(fd, "r") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                raise OperatorError(f"{path} is not a regular file of uid {os.getuid()}; "
                                    "refusing it")
            if st.st_mode & 0o077:
                log.warning("%s had mode %04o; tightening it to 0600 (delete it and restart "
                            "to rotate the token)", path, st.st_mode & 0o777)
                os.fchmod(f.fileno(), 0o600)
            token = f.read(4096).strip()
        if token:
            return token
        log.warning("%s is empty; writing a new token", path)
        path.unlink(missing_ok=True)
    raise OperatorError(f"cannot create {path}: it keeps changing under us")


def _literal_host(host: str) -> bool:
    """Whether the Host header names an IP address or localhost (not a DNS name)."""
    if host.startswith("[") and "]" in host:        # [::1]:8787
        name = host[1:host.index("]")]
    elif host.count(":") == 1:                      # 127.0.0.1:8787, localhost:8787
        name = host.split(":", 1)[0]
    else:
        name = host
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Auth:
    """The request check, as an aiohttp middleware."""

    def __init__(self, token: str, *, public_read: bool,
                 public_paths: frozenset[str] | set[str] = frozenset()) -> None:
        if not token:
            raise ValueError("empty token")
        self._token = token.encode()
        self.public_read = public_read
        self.public_paths = frozenset(public_paths)     # readable by anyone (the page)
        self.failures = 0                   # 401 + 403 answers (for /metrics)

    def matches(self, given: str) -> bool:
        # bytes on both sides: compare_digest refuses non-ASCII str, and a header may hold any
        return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), self._token)

    def check(self, request: web.Request) -> None:
        header = request.headers.get("Authorization")
        if header is None:
            if request.method in READ_METHODS and request.path in self.public_paths:
                return
            if request.method in READ_METHODS and self.public_read:
                if not _literal_host(request.host):
                    # DNS rebinding: a web page the operator visits can point its own name
                    # at 127.0.0.1 and read a tokenless API; its requests carry that name
                    raise ApiError(403, "token-less reads need an IP address or localhost "
                                   "in the Host header (a name could be DNS rebinding)")
                return
            raise ApiError(401, "missing token: send 'Authorization: Bearer <token>' (the "
                           "token is in <run dir>/api.token)", headers=_CHALLENGE)
        scheme, _, given = header.strip().partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            raise ApiError(401, "the Authorization header must be 'Bearer <token>'",
                           headers=_CHALLENGE)
        if not self.matches(given):
            raise ApiError(403, "wrong token")

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            self.check(request)
        except ApiError:
            self.failures += 1
            raise
        return await handler(request)
