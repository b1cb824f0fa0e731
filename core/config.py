"""Endpoints and modes. Declaring configuration is separate from acquiring resources.

Modes:
- ``sim`` (default): every endpoint is the embedded simulator's, read from sim.json.
- ``paper``: production market data (Binance, Gamma, CLOB books), orders filled locally.
- ``live``: production everything; needs ``--live`` and credentials.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

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

    def with_(self, **kw: str) -> Endpoints:
        return replace(self, **kw)


def load_json(path: str) -> dict:
    with open(path, "rb") as f:
        return orjson.loads(f.read())
