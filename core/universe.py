"""The universe: which assets the bot trades, on which windows, with which prices.

A universe lists assets; each has
- ``slug``: Polymarket's asset slug (``btc`` in ``btc-updown-5m-<start>``);
- ``windows``: the market windows traded, among ``5m`` and ``15m``;
- ``chainlink``: RTDS's Chainlink symbol the markets resolve on (default ``<slug>/usd``);
- ``candles``: where the 1m/5m/15m candles come from: ``binance:<SYMBOL>`` (Binance spot
  klines) or ``reference`` (built from the Chainlink stream, for assets without a Binance
  spot market, such as HYPE).

It comes from a TOML file (``noblink.toml``, see the example at the repository root)::

    [[assets]]
    slug = "btc"
    windows = ["5m", "15m"]
    chainlink = "btc/usd"
    candles = "binance:BTCUSDT"

The slot count and every shared-memory layout follow the universe, so it is resolved ONCE
per process, before any module that sizes a layout (core.markets, state.layout) is imported:
from ``$NOBLINK_UNIVERSE`` (the path of the run's resolved universe, ``<run dir>/universe.json``,
which the supervisor writes and hands to every child) or, when unset, the built-in default
(the series that exist: btc, eth, sol, xrp, doge, bnb, hype x 5m, 15m). ``noblink run
--config`` installs the file's universe before it imports the supervisor.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import write_json_atomic
from core.errors import OperatorError

ENV = "NOBLINK_UNIVERSE"
UNIVERSE_FILE = "universe.json"        # in the run directory, written by the supervisor
WINDOW_NAMES: dict[str, int] = {"5m": 300, "15m": 900}
REFERENCE = "reference"
_SLUG_RE = re.compile(r"[a-z0-9]{1,16}")
_BINANCE_RE = re.compile(r"[A-Z0-9]{2,20}")
_CHAINLINK_RE = re.compile(r"[a-z0-9]{1,16}/[a-z]{2,8}")
_ASSET_KEYS = {"slug", "windows", "chainlink", "candles"}
MAX_ASSETS = 16        # 2 windows each: the lanes' decision records hold 32 slots


class UniverseError(OperatorError):
    """A universe file (or flag) that cannot be used; the message names the file and key."""


@dataclass(frozen=True)
class AssetSpec:
    slug: str                      # "btc"
    windows: tuple[int, ...]       # seconds, ascending: (300, 900)
    chainlink: str                 # "btc/usd"
    candles: str                   # "binance:BTCUSDT" or "reference"

    @property
    def binance_symbol(self) -> str | None:
        """The Binance spot symbol of the candles, None when they come from the reference."""
        return self.candles.split(":", 1)[1] if self.candles.startswith("binance:") else None

    @property
    def candle_symbol(self) -> str:
        """The name of this asset's candle rows: the Binance symbol, or ``HYPE/USD``-style
        for candles built from the reference."""
        return self.binance_symbol or self.chainlink.upper()

    def to_dict(self) -> dict[str, Any]:
        names = {v: k for k, v in WINDOW_NAMES.items()}
        return {"slug": self.slug, "windows": [names[w] for w in self.windows],
                "chainlink": self.chainlink, "candles": self.candles}


@dataclass(frozen=True)
class Universe:
    assets: tuple[AssetSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"assets": [a.to_dict() for a in self.assets]}

    @property
    def fingerprint(self) -> str:
        """Stable across processes and runs: part of every layout hash."""
        data = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.blake2b(data, digest_size=8).hexdigest()

    def describe(self) -> str:
        """``btc 5m/15m, hype 5m (reference)``: for logs and error messages."""
        out = []
        for a in self.assets:
            ws = "/".join(f"{w // 60}m" for w in a.windows)
            out.append(f"{a.slug} {ws}" + (" (reference candles)" if a.binance_symbol is None
                                           else ""))
        return ", ".join(out)

    def select(self, slugs: list[str], source: str = "--assets") -> Universe:
        """The assets named, in the universe's order (the ``--assets`` flag)."""
        known = {a.slug for a in self.assets}
        bad = [s for s in slugs if s not in known]
        if bad:
            raise UniverseError(f"{source}: {', '.join(bad)} not in the universe "
                                f"({', '.join(sorted(known))})")
        return Universe(tuple(a for a in self.assets if a.slug in slugs))


def _default() -> Universe:
    binance = ("btc", "eth", "sol", "xrp", "doge", "bnb")
    assets = [AssetSpec(a, (300, 900), f"{a}/usd", f"binance:{a.upper()}USDT") for a in binance]
    # HYPE has no Binance spot market: its candles are built from the Chainlink stream.
    assets.append(AssetSpec("hype", (300, 900), "hype/usd", REFERENCE))
    return Universe(tuple(assets))


DEFAULT = _default()


# -- parsing --------------------------------------------------------------------------------

def parse(doc: Any, source: str) -> Universe:
    """Validate a parsed document (TOML or the resolved JSON) into a Universe. Every error
    names ``source`` (the file) and the key."""
    if not isinstance(doc, dict):
        raise UniverseError(f"{source}: expected a table with an 'assets' array")
    # [risk] is read by core.risklimits: limits are not part of the universe (or its hash)
    extra = sorted(set(doc) - {"assets", "risk"})
    if extra:
        raise UniverseError(f"{source}: unknown key(s) {', '.join(extra)} "
                            f"(noblink.toml has [[assets]] tables and a [risk] table)")
    items = doc.get("assets")
    if not isinstance(items, list) or not items:
        raise UniverseError(f"{source}: 'assets' must be a non-empty array of tables "
                            f"([[assets]])")
    if len(items) > MAX_ASSETS:
        raise UniverseError(f"{source}: {len(items)} assets; at most {MAX_ASSETS}")
    assets: list[AssetSpec] = []
    for i, item in enumerate(items):
        assets.append(_parse_asset(item, f"{source}: assets[{i}]"))
    seen: set[str] = set()
    for a in assets:
        if a.slug in seen:
            raise UniverseError(f"{source}: asset {a.slug!r} is listed twice")
        seen.add(a.slug)
    return Universe(tuple(assets))


def _parse_asset(item: Any, where: str) -> AssetSpec:
    if not isinstance(item, dict):
        raise UniverseError(f"{where}: expected a table")
    extra = sorted(set(item) - _ASSET_KEYS)
    if extra:
        raise UniverseError(f"{where}: unknown key(s) {', '.join(extra)} "
                            f"(known: {', '.join(sorted(_ASSET_KEYS))})")
    slug = item.get("slug")
    if not isinstance(slug, str) or not _SLUG_RE.fullmatch(slug):
        raise UniverseError(f"{where}.slug: {slug!r} is not an asset slug "
                            f"(lowercase letters and digits, as in btc-updown-5m-...)")
    where = f"{where} ({slug})"
    windows = item.get("windows", ["5m", "15m"])
    if (not isinstance(windows, list) or not windows
            or any(w not in WINDOW_NAMES for w in windows) or len(set(windows)) != len(windows)):
        raise UniverseError(f"{where}.windows: {windows!r}; expected a list of distinct "
                            f"windows among {', '.join(WINDOW_NAMES)}")
    chainlink = item.get("chainlink", f"{slug}/usd")
    if not isinstance(chainlink, str) or not _CHAINLINK_RE.fullmatch(chainlink):
        raise UniverseError(f"{where}.chainlink: {chainlink!r} is not an RTDS Chainlink "
                            f"symbol like 'btc/usd'")
    candles = item.get("candles")
    if not isinstance(candles, str) or not (
            candles == REFERENCE or (candles.startswith("binance:")
                                     and _BINANCE_RE.fullmatch(candles[8:]))):
        raise UniverseError(f"{where}.candles: {candles!r}; expected 'binance:<SYMBOL>' "
                            f"(e.g. binance:BTCUSDT) or 'reference' (candles built from the "
                            f"Chainlink stream)")
    return AssetSpec(slug, tuple(sorted(WINDOW_NAMES[w] for w in windows)), chainlink,
                     candles)


def load_file(path: Path) -> Universe:
    """A TOML config (``noblink.toml``) or a resolved ``universe.json``, by suffix."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UniverseError(f"{path}: cannot read the universe: {e.strerror or e}") from None
    try:
        doc = json.loads(data) if path.suffix == ".json" else tomllib.loads(data.decode())
    except (ValueError, UnicodeDecodeError) as e:
        raise UniverseError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'}"
                            f": {e}") from None
    return parse(doc, str(path))


# -- the process's universe -----------------------------------------------------------------

_current: Universe | None = None


def current() -> Universe:
    """The universe of this process, resolved on first use and then fixed."""
    global _current
    if _current is None:
        path = os.environ.get(ENV)
        _current = load_file(Path(path)) if path else DEFAULT
    return _current


def install(universe: Universe) -> None:
    """Make ``universe`` this process's universe. Only before core.markets is imported: the
    layouts are sized at import time, and a second universe would mean two layouts."""
    global _current
    if "core.markets" in sys.modules and current() != universe:
        raise RuntimeError("core.universe.install() after core.markets was imported "
                           "(resolve the universe before importing the bot's modules)")
    _current = universe


def write_resolved(path: Path, universe: Universe) -> None:
    """``<run dir>/universe.json``, 0600 (the children resolve it through $NOBLINK_UNIVERSE)."""
    write_json_atomic(path, universe.to_dict())
