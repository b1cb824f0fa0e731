"""Endpoints and modes. Declaring configuration is separate from acquiring resources.

Modes:
- ``sim`` (default): every endpoint is the embedded simulator's, read from sim.json.
- ``paper``: production market data (Binance, Gamma, CLOB books), orders filled locally.
- ``live``: production everything; needs ``--live`` and credentials.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

Mode = Literal["sim", "paper", "live"]


@dataclass(frozen=True)
class Endpoints:
    binance_ws: str
    binance_rest: str
    gamma: str
    clob: str
    admin: str | None = None     # sim only
    rtds: str = ""               # Polymarket's Real-Time Data Socket (Chainlink prices)

    @classmethod
    def production(cls) -> Endpoints:
        return cls(
            binance_ws="wss://stream.binance.com:9443",
            binance_rest="https://api.binance.com",
            gamma="https://gamma-api.polymarket.com",
            clob="https://clob.polymarket.com",
            rtds="wss://ws-live-data.polymarket.com",
        )

    @classmethod
    def from_sim_info(cls, info: dict) -> Endpoints:
        return cls(binance_ws=info["binance_ws"], binance_rest=info["binance_rest"],
                   gamma=info["gamma"], clob=info["clob"], admin=info.get("admin"),
                   rtds=info.get("rtds", ""))


def default_run_dir() -> Path:
    """``$NOBLINK_RUN_DIR``, else ``$XDG_STATE_HOME/noblink``, else ``~/.local/state/noblink``.

    A relative XDG_STATE_HOME is ignored, as the XDG base directory spec requires.
    """
    env = os.environ.get("NOBLINK_RUN_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "noblink"
    return Path.home() / ".local" / "state" / "noblink"


def write_json_atomic(path: Path, doc: Any) -> None:
    """Write JSON so that a reader sees the old file or the new one, never half of one
    (a per-process temp name, then rename). The file is created 0600 whatever the umask."""
    path = Path(path)
    data = orjson.dumps(doc, option=orjson.OPT_INDENT_2)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # A tmp with our pid can only be a leftover of a dead process that had this pid, and
    # O_EXCL below would refuse it.
    tmp.unlink(missing_ok=True)
    # O_EXCL: never write through a file (or symlink) someone else put there; 0600 at
    # creation, so the content is never readable by others, not even for a moment.
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_json(path: str) -> dict:
    with open(path, "rb") as f:
        return orjson.loads(f.read())
