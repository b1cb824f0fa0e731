"""``python -m api_worker --run-dir DIR [--listen HOST:PORT] [--allow-remote] [--public-read]``

Mission Control's HTTP API as its own process (see the package docstring for why), on the
same run directory as the bot. Start-up, in order (shut-down is the mirror):

1. check ``--listen``: a host that is not loopback is refused (exit 2) unless
   ``--allow-remote``, which is then logged as a WARNING and recorded in api.json;
2. umask 077; create or check the run directory; create ``api.token`` (0600) if missing;
3. listen (port 0 = a free port), then write ``api.json`` atomically::

       {"url": "http://127.0.0.1:40123", "token_file": "/abs/run/api.token", "pid": 4242,
        "remote": false, "public_read": false}

4. serve until SIGTERM/SIGINT; then stop listening, end the event streams, remove api.json
   (if it is still ours) and exit 0.

Exit codes: 0 clean stop, 2 bad usage or cannot listen, 3 the run dir or token file is not
trustworthy. :func:`read_api_info` is what the supervisor calls to put ``api`` into
status.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import sys
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from api_worker.app import ApiConfig, build_app
from api_worker.auth import load_or_create_token
from api_worker.logs import AccessLog, quiet_bad_requests
from core.config import write_json_atomic
from core.errors import OperatorError
from core.logs import register_secret
from core.proc import (
    EXIT_OK,
    EXIT_OPERATOR,
    EXIT_USAGE,
    install_stop_signals,
    private_umask,
    run_async,
    setup_logging,
)
from state.run import default_run_dir, prepare_run_dir
from state.segment import pid_alive

log = logging.getLogger("api_worker")

DEFAULT_LISTEN = "127.0.0.1:0"
API_JSON = "api.json"
TOKEN_FILE = "api.token"
SHUTDOWN_TIMEOUT_S = 3.0
LOG_ROLE = "api"                        # <run dir>/logs/api.jsonl


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); ValueError why not."""
    host, sep, port_s = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"--listen {value!r} must be HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"--listen {value!r}: the port must be a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"--listen {value!r}: the port must be 0..65535")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False                        # a name could resolve anywhere


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def read_api_info(run_dir: Path) -> dict[str, Any] | None:
    """The running API worker's api.json (url, token_file, pid, remote, public_read), or None
    when there is none, it is unreadable, or its process is gone."""
    try:
        doc = orjson.loads((Path(run_dir) / API_JSON).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("url"), str) \
            or not isinstance(doc.get("token_file"), str):
        return None
    pid = doc.get("pid")
    if not isinstance(pid, int) or not pid_alive(pid):
        return None
    return doc


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m api_worker",
                                description="noblink Mission Control: the HTTP API.")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="the bot's run directory (default: $NOBLINK_RUN_DIR, ...)")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"address to listen on (default {DEFAULT_LISTEN}: loopback, a free "
                   "port; the URL goes to <run dir>/api.json)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --listen host (the token is then the only "
                   "protection, over plain HTTP: put TLS in front)")
    p.add_argument("--public-read", action="store_true",
                   help="GET routes, /metrics and the page without the token")
    p.add_argument("--log-level", default=None)
    return p


async def amain(args: argparse.Namespace, host: str, port: int) -> int:
    stop = asyncio.Event()
    install_stop_signals(stop)
    run_dir = Path(args.run_dir or default_run_dir()).absolute()
    try:
        prepare_run_dir(run_dir)
        setup_logging(args.log_level, role=LOG_ROLE, run_dir=run_dir)
        token_file = run_dir / TOKEN_FILE
        token = load_or_create_token(token_file)
        register_secret(token)              # masked wherever it could reach the log
    except (OperatorError, OSError) as e:
        log.error("cannot start: %s", e)
        return EXIT_OPERATOR
    app = build_app(ApiConfig(run_dir, public_read=args.public_read), token)
    # keepalive_timeout: aiohttp's default keeps an idle (or half-sent) connection for an
    # hour; a slow or idle client should cost a file descriptor for seconds, not hours
    runner = web.AppRunner(app, access_log_class=AccessLog,
                           access_log=logging.getLogger("api_worker.access"),
                           shutdown_timeout=SHUTDOWN_TIMEOUT_S, keepalive_timeout=30.0)
    await runner.setup()
    api_json = run_dir / API_JSON
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as e:
            log.error("cannot listen on %s: %s", url_of(host, port), e.strerror or e)
            return EXIT_USAGE
        bound = runner.addresses[0]
        url = url_of(host, int(bound[1]))
        write_json_atomic(api_json, {"url": url, "token_file": str(token_file),
                                     "pid": os.getpid(), "remote": not is_loopback(host),
                                     "public_read": args.public_read})
        log.info("api: %s for run dir %s (token in %s%s)", url, run_dir, token_file,
                 "; reads are public" if args.public_read else "")
        await stop.wait()
        log.info("api: stopping")
    finally:
        with contextlib.suppress(OSError, ValueError):
            if orjson.loads(api_json.read_bytes()).get("pid") == os.getpid():
                api_json.unlink()
        await runner.cleanup()
    log.info("api: exit 0")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        host, port = parse_listen(args.listen)
    except ValueError as e:
        print(f"api_worker: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not is_loopback(host) and not args.allow_remote:
        print(f"api_worker: refusing to listen on {host!r}, which is not a loopback address: "
              "anyone who can reach it could try the token, over plain HTTP. Pass "
              "--allow-remote if you mean it (and put TLS in front).", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(args.log_level, role=LOG_ROLE)
    private_umask()
    if not is_loopback(host):
        log.warning("api: listening on non-loopback %s (--allow-remote): the token is the "
                    "only protection, over plain HTTP", host)
    quiet_bad_requests()
    return run_async(lambda: amain(args, host, port))
