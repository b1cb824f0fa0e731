"""The CLOB ledger on disk, so that a restarted sim is the same exchange.

On production, API credentials, balances, positions and orders survive an exchange restart.
A sim killed and restarted by the supervisor must too: the position worker keeps the L2
credentials it derived, and a sim that forgot them refused every later order with 401.

``<run_dir>/sim-ledger.json`` (0600: it holds the accounts' API secrets) carries
``Exchange.snapshot()`` plus the world it belongs to: the seed and the run id of
``run.json`` (None for a sim started alone). A sim starting on a run directory loads it when
the world matches; a new run (the supervisor writes a new run id before it starts the sim)
or another seed starts empty, and its first save replaces the file.

Writes are synchronous, at the end of each step that changed the ledger (a CLOB request, an
exchange tick, a market tick) and before the reply leaves: whatever a client or the admin
API has seen is on disk, so a kill -9 loses nothing anyone observed. A rename keeps the file
whole; no fsync, since what must survive is the process, not the machine.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from core.config import write_json_atomic

if TYPE_CHECKING:
    from sim.exchange import Exchange

log = logging.getLogger("sim.ledger")

LEDGER_FILE = "sim-ledger.json"
FORMAT = 1


def current_run_id(run_dir: Path) -> str | None:
    """The run id in ``run_dir/run.json`` (the supervisor writes it before starting the sim);
    None when there is none (a sim started alone)."""
    try:
        doc = orjson.loads((run_dir / "run.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    run_id = doc.get("run_id") if isinstance(doc, dict) else None
    return run_id if isinstance(run_id, str) else None


class LedgerStore:
    """Loads the ledger of this world at start and saves it whenever it changed."""

    def __init__(self, run_dir: Path, seed: int, run_id: str | None) -> None:
        self.path = run_dir / LEDGER_FILE
        self.world = {"seed": seed, "run_id": run_id}
        self._saved = -1                # Exchange.version at the last save
        self._failed = False

    def load(self, ex: Exchange) -> bool:
        """Restore ``ex`` from the file if it belongs to this world; True if it did."""
        try:
            doc = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return False
        except (OSError, orjson.JSONDecodeError) as e:
            log.warning("ledger %s unreadable (%s): starting with an empty exchange",
                        self.path, e)
            return False
        if not isinstance(doc, dict) or doc.get("format") != FORMAT \
                or doc.get("world") != self.world:
            log.info("ledger %s is of another world (%s, now %s): starting empty", self.path,
                     doc.get("world") if isinstance(doc, dict) else None, self.world)
            return False
        try:
            ex.restore(doc["ledger"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            # a half-restored exchange is worse than an empty one: the caller builds anew
            log.error("ledger %s malformed (%r): starting with an empty exchange", self.path, e)
            raise LedgerError(str(e)) from e
        self._saved = ex.version
        log.warning("ledger restored from %s: %d accounts, %d orders, %d trades", self.path,
                    len(ex.by_address), len(ex.orders), len(ex.trades))
        return True

    def flush(self, ex: Exchange) -> None:
        """Save if anything changed since the last save. Never raises: a full disk must not
        stop the exchange (it is logged once per failure streak)."""
        if ex.version == self._saved:
            return
        version = ex.version
        doc: dict[str, Any] = {"format": FORMAT, "world": self.world,
                               "saved_at": ex.ctx.clock.now(), "pid": os.getpid(),
                               "ledger": ex.snapshot()}
        try:
            write_json_atomic(self.path, doc)
        except OSError as e:
            if not self._failed:
                log.error("cannot save the ledger to %s: %s", self.path, e)
            self._failed = True
            return
        self._failed = False
        self._saved = version


class LedgerError(Exception):
    """The ledger file of this world could not be restored."""
