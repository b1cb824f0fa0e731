"""The risk limits an operator sets for a run: the ``[risk]`` table of noblink.toml, or the
flags of ``noblink run`` (a flag wins over the file)::

    [risk]
    max_open = 16            # positions pending or open at once
    max_exposure = 80.0      # $ in pending + open positions
    daily_loss_limit = 50.0  # $ of realised loss in a (market-clock) day: then no new orders
    max_book_age = 20.0      # market-clock seconds a scanned order book stays usable

The position worker enforces them (position_worker/risk.py) and owns their defaults; this
module only reads and checks them, and hands them on as the worker's own flags. One checker
serves the file, ``noblink run`` and the position worker's argparse, so a value refused in
one place is refused in all of them, with the same words.

The limits are not part of the universe: changing one is not a new shared-memory layout,
and a restarted bot may run with new limits in the same run directory.
"""

from __future__ import annotations

import argparse
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import OperatorError

TABLE = "risk"


class RiskLimitsError(OperatorError):
    """A risk limit that cannot be used; the message names where it came from."""


@dataclass(frozen=True)
class Limit:
    key: str           # in the [risk] table
    flag: str          # of `noblink run` and of the position worker
    kind: type         # int or float
    help: str


LIMITS = (
    Limit("max_open", "--max-open", int, "positions pending or open at once"),
    Limit("max_exposure", "--max-exposure", float, "$ in pending + open positions"),
    Limit("daily_loss_limit", "--daily-loss-limit", float,
          "$ of realised loss in a market-clock day, then no new orders"),
    Limit("max_book_age", "--max-book-age", float,
          "market-clock seconds a scanned order book stays usable"),
)
BY_KEY = {lim.key: lim for lim in LIMITS}


def check(lim: Limit, value: Any, where: str) -> int | float:
    """``value`` as ``lim``'s type if it is a usable limit (finite and > 0), else
    RiskLimitsError naming ``where``. Booleans are not numbers here (TOML's ``true``)."""
    ok = not isinstance(value, bool) and (
        isinstance(value, int) if lim.kind is int else isinstance(value, int | float))
    if ok and lim.kind is float:
        value = float(value)
    if not ok or not math.isfinite(value) or value <= 0:
        what = "a whole number" if lim.kind is int else "a number"
        raise RiskLimitsError(f"{where}: {lim.key} = {value!r}: expected {what} > 0")
    return value


def parse(doc: Any, source: str) -> dict[str, int | float]:
    """The ``[risk]`` table of a parsed noblink.toml (absent: no limits set)."""
    table = doc.get(TABLE, {}) if isinstance(doc, dict) else {}
    if not isinstance(table, dict):
        raise RiskLimitsError(f"{source}: [{TABLE}] must be a table")
    unknown = sorted(set(table) - set(BY_KEY))
    if unknown:
        raise RiskLimitsError(f"{source}: [{TABLE}] unknown key(s) {', '.join(unknown)} "
                              f"(known: {', '.join(BY_KEY)})")
    return {k: check(BY_KEY[k], v, f"{source}: [{TABLE}]") for k, v in table.items()}


def load_file(path: Path) -> dict[str, int | float]:
    """The limits in a noblink.toml (a ``.json`` universe file has none)."""
    path = Path(path)
    if path.suffix == ".json":
        return {}
    try:
        doc = tomllib.loads(path.read_bytes().decode())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise RiskLimitsError(f"{path}: cannot read the risk limits: {e}") from None
    return parse(doc, str(path))


def arg_type(key: str) -> Any:
    """An argparse ``type=`` that applies ``check`` to a flag's text."""
    lim = BY_KEY[key]

    def convert(text: str) -> int | float:
        try:
            value = lim.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected {'a whole number' if lim.kind is int else 'a number'}"
            ) from None
        try:
            return check(lim, value, lim.flag)
        except RiskLimitsError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = lim.kind.__name__        # argparse names the type in its errors
    return convert


def add_flags(ap: Any, defaults: dict[str, Any] | None = None) -> None:
    """The limits' flags on ``ap`` (a parser or an argument group). ``defaults`` (the
    position worker's) or None (unset: the file's value, else the worker's default,
    applies)."""
    for lim in LIMITS:
        default = None if defaults is None else defaults[lim.key]
        shown = "" if defaults is None else f" (default {default:g})"
        ap.add_argument(lim.flag, type=arg_type(lim.key), default=default,
                        metavar="N", help=lim.help + shown)


def resolve(from_file: dict[str, int | float], args: argparse.Namespace
            ) -> dict[str, int | float]:
    """The file's limits with the flags that were given on top."""
    out = dict(from_file)
    for lim in LIMITS:
        v = getattr(args, lim.key, None)
        if v is not None:
            out[lim.key] = v
    return out


def worker_args(limits: dict[str, int | float]) -> list[str]:
    """The position worker's flags for ``limits`` (only those set)."""
    out: list[str] = []
    for key, value in limits.items():
        out += [BY_KEY[key].flag, str(value)]
    return out
