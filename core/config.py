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

    @classmethod
    def production(cls) -> Endpoints:
        return cls(
            binance_ws="wss://stream.binance.com:9443",
            binance_rest="https://api.binance.com",
            gamma="https://gamma-api.polymarket.com",
            clob="https://clob.polymarket.com",
        )

    @classmethod
    def from_sim_info(cls, info: dict) -> Endpoints:
        return cls(binance_ws=info["binance_ws"], binance_rest=info["binance_rest"],
                   gamma=info["gamma"], clob=info["clob"], admin=info.get("admin"))


def write_json_atomic(path: Path, doc: Any) -> None:
    """Write JSON so that a reader sees the old file or the new one, never half of one
    (a per-process temp name, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)


def load_json(path: str) -> dict:
    with open(path, "rb") as f:
        return orjson.loads(f.read())
