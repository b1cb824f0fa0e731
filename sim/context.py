"""The simulator's configuration (declared) and its shared state (built by SimApp.start)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from core.clock import Clock
from sim.faults import Faults
from sim.orderlog import OrderLog
from sim.prices import PriceModel
from state.run import default_run_dir

if TYPE_CHECKING:
    from sim.chainlink import ChainlinkModel
    from sim.exchange import Exchange
    from sim.ledger import LedgerStore
    from sim.markets import MarketRegistry

KLINE_UPDATE_SIM_S = 2.0      # Binance sends a kline update about every 2 s
MIN_UPDATE_WALL_S = 0.1       # ... but never faster than this, whatever the speed
RTDS_OBSERVATION_SIM_S = 1.0  # Chainlink on RTDS: about one observation a second


@dataclass(frozen=True)
class SimConfig:
    """Everything ``noblink sim`` accepts; no resources are touched here."""

    speed: float = 1.0
    seed: int = 1
    port_base: int = 0
    run_dir: Path = field(default_factory=default_run_dir)
    start: float | None = None           # sim epoch (unix s); None = now
    # wall time (unix s) at which the sim time is ``start``; None = the moment the sim starts.
    # A restarted sim given the dead one's (start, start_wall) runs exactly its clock, which
    # every other process still holds; ``start`` alone lags it by the start-up time x speed.
    start_wall: float | None = None
    weight_limit: int = 6000             # Binance REST weight per (sim) minute
    ping_interval_s: float | None = None  # wall s; None = 20 s of sim time, >= 0.25 s wall
    pong_timeout_s: float | None = None   # wall s; None = 60 s of sim time, >= 5 s wall
    balance: float = 1000.0              # starting USDC of every CLOB account
    resolve_lag_s: float = 5.0           # sim s between a window's end and its resolution

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ValueError("speed must be > 0")
        if self.start_wall is not None and self.start is None:
            raise ValueError("--start-wall needs --start")
        if self.port_base < 0 or self.port_base > 65535 - 5:
            raise ValueError("port base must be 0 or a port with 5 free ports above it")

    @property
    def ping_wall_s(self) -> float:
        return self.ping_interval_s or max(20.0 / self.speed, 0.25)

    @property
    def pong_wall_s(self) -> float:
        return self.pong_timeout_s or max(60.0 / self.speed, 5.0)

    @property
    def update_wall_s(self) -> float:
        return max(KLINE_UPDATE_SIM_S / self.speed, MIN_UPDATE_WALL_S)

    @property
    def rtds_wake_wall_s(self) -> float:
        """How often the RTDS broadcaster wakes (it sends every observation due since)."""
        return max(RTDS_OBSERVATION_SIM_S / self.speed, MIN_UPDATE_WALL_S)


@dataclass
class SimContext:
    config: SimConfig
    clock: Clock
    prices: PriceModel
    faults: Faults
    order_log: OrderLog
    markets: MarketRegistry | None = None
    exchange: Exchange | None = None
    chainlink: ChainlinkModel | None = None
    ledger: LedgerStore | None = None     # None: nothing persisted (in-process tests)

    def save_ledger(self) -> None:
        """Persist the exchange's ledger if it changed (a no-op without a store)."""
        if self.ledger is not None and self.exchange is not None:
            self.ledger.flush(self.exchange)
