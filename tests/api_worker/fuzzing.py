"""Garbage for the API: raw HTTP requests from hypothesis strategies, sent over a socket so
that nothing (method, path, headers, body, framing) is sanitised by a client library.

``fuzz(port, token, examples, live=...)`` runs them and asserts that none is answered with a
500, and that errors the app itself produces are JSON. With ``live=True`` (a real bot behind
the server) a mutating request never carries the right token, so the garbage can probe every
check but can never stop, pause or reload the bot.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import string
import threading

import orjson
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROUTES = ["/", "/api/status", "/api/slots", "/api/workers", "/api/reloads",
          "/api/reloads/abc123", "/api/reloads/..", "/api/positions", "/api/params",
          "/api/candles/btc-5m", "/api/candles/x", "/api/events", "/metrics", "/api/reload",
          "/api/pause", "/api/resume", "/api/stop", "/api/kill", "/api/nope", "//api//status"]
READ = ("GET", "HEAD")
JSON_CODES = {401, 403, 404, 405, 413}
URL_CHARS = string.ascii_letters + string.digits + "-._~%/?=&+:@!$'()*,;"
HEADER_CHARS = string.printable.replace("\r", "").replace("\n", "") + "\u00e9\u00ff"
VALUE_CHARS = string.ascii_letters + string.digits + " =;,/-_.\"'"
RESERVED = {"content-length", "transfer-encoding", "expect", "host", "connection",
            "authorization"}

def mix(*weighted: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """Pick a strategy by weight, then draw from it (st.one_of leans to the biggest one)."""
    choices = [i for i, (w, _) in enumerate(weighted) for _ in range(w)]
    return st.sampled_from(choices).flatmap(lambda i: weighted[i][1])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12)
command_like = st.dictionaries(
    st.sampled_from(["strategy", "params", "previous", "to", "shadow", "dry_run", "timeout",
                     "id", "cmd", "args", "x"]), json_values, max_size=4)
bodies = mix(
    (3, st.just(b"")), (5, st.builds(orjson.dumps, command_like)),
    (2, st.builds(orjson.dumps, json_values)), (1, st.binary(max_size=512)),
    (1, st.sampled_from([b"[" * 5000 + b"]" * 5000,
                         b'{"shadow": 123456789012345678901234567890}', b'{"timeout": 1e999}',
                         b"{" + b" " * (70 * 1024) + b"}", b'{"params": {"a": NaN}}',
                         b"\xff\xfe{}"])))
queries = mix((3, st.just("")), (2, st.builds(
    lambda k, v: f"?{k}={v}", st.sampled_from(["n", "wait", "token", "x"]),
    st.text(URL_CHARS, max_size=12))))
paths = mix((8, st.builds(lambda r, q: r + q, st.sampled_from(ROUTES), queries)),
            (1, st.builds(lambda s: "/" + s, st.text(URL_CHARS, max_size=40))),
            (1, st.text(string.printable + "\u00e9", max_size=30)))
methods = mix((8, st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD",
                                   "OPTIONS"])),
              (1, st.text(string.ascii_letters + "-_!", min_size=1, max_size=10)))
header_names = mix((1, st.sampled_from(["Content-Type", "Cookie", "Accept", "X-Y"])),
                   (1, st.text(string.ascii_letters + "-", min_size=1, max_size=20).filter(
                       lambda n: n.lower() not in RESERVED)))
headers = st.lists(st.tuples(header_names, mix((4, st.text(VALUE_CHARS, max_size=60)),
                                               (1, st.text(HEADER_CHARS, max_size=60)))),
                   max_size=3)
auths = st.sampled_from(["right", "right", "right", "right", "wrong", "none", "basic",
                         "empty", "garbage"])
junks = mix((9, st.none()), (1, st.binary(min_size=1, max_size=200)))


def raw_request(method: str, path: str, hdrs: list[tuple[str, str]], auth: str, token: str,
                body: bytes) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += {"right": [f"Authorization: Bearer {token}"], "wrong": ["Authorization: Bearer x"],
              "none": [], "basic": [f"Authorization: Basic {token}"],
              "empty": ["Authorization: Bearer "],
              "garbage": ["Authorization: \u00e9\u00e9 \u00ff"]}[auth]
    lines += [f"{n}: {v}" for n, v in hdrs]
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body


def send(port: int, data: bytes, timeout: float = 10.0) -> tuple[int | None, dict[str, str]]:
    """(status, headers) of the answer; (None, {}) if the server closed without one."""
    buf = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        with contextlib.suppress(OSError):  # answered and closed before reading it all
            s.sendall(data)
        try:
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except ConnectionResetError:
            pass
    head = buf.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    parts = head[0].split(" ")
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return None, {}
    hdrs = dict(h.split(": ", 1) for h in head[1:] if ": " in h)
    return int(parts[1]), {k.lower(): v for k, v in hdrs.items()}


def fuzz(port: int, token: str, examples: int, *, live: bool) -> list[tuple[int | None, bool]]:
    """Send ``examples`` garbage requests; returns (status, answered in JSON) of each."""
    seen: list[tuple[int | None, bool]] = []

    @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(method=methods, path=paths, hdrs=headers, auth=auths, body=bodies,
           junk=junks)
    def one(method: str, path: str, hdrs: list[tuple[str, str]], auth: str, body: bytes,
            junk: bytes | None) -> None:
        if live and auth == "right" and method not in READ:
            auth = "wrong"                  # never a valid command to the live bot
        data = junk if junk is not None else raw_request(method, path, hdrs, auth, token,
                                                         body)
        status, resp_headers = send(port, data)
        seen.append((status, resp_headers.get("content-type", "").startswith(
            "application/json")))
        assert status != 500, data[:300]
        if status in JSON_CODES:
            assert resp_headers.get("content-type", "").startswith("application/json"), \
                (status, resp_headers, data[:300])

    one()
    return seen


class ThreadServer:
    """An aiohttp app served from a thread (for tests that are not async)."""

    def __init__(self, app: web.Application) -> None:
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app, shutdown_timeout=1.0)
        self.port = 0
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = self.runner.addresses[0][1]
            ready.set()
            self.loop.run_forever()
            self.loop.run_until_complete(self.runner.cleanup())
            self.loop.close()

        self.thread = threading.Thread(target=serve, name="api-test-server", daemon=True)
        self.thread.start()
        assert ready.wait(10), "the test server did not start"

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
