"""The durable journal: SQLite in WAL mode, every commit fsynced (synchronous=FULL).

It records every intent and its decision, every order request BEFORE it is sent (with its
deterministic client key and the exact signed payload), every exchange reply, lookup, fill,
settlement and reconciliation mismatch. The shared-memory positions are a cache of it: on
start they are rebuilt from here.

Tables:
- ``intents``: one row per intent read from a ring, with its decision (accepted, or the
  reject reason and detail).
- ``orders``: one row per accepted intent. ``idem_key`` (slot:window_start) is UNIQUE, so
  the database itself refuses a second order for the same window. ``state`` follows
  ``ORDER_TRANSITIONS``; ``request`` holds the signed order as sent.
- ``fills``: one row per exchange trade (or paper fill), keyed by trade id.
- ``settlements``: one row per settled order.
- ``events``: an append-only log of requests, replies, lookups and mismatches (JSON bodies).
- ``meta``: per-lane ring identity and the next ring sequence to read.

Every order change is compare-and-set: ``UPDATE ... WHERE client_key=? AND state=?`` with the
state the caller's copy was read in, and exactly one row must change (``OrderConflict``
otherwise). A second writer (which the worker's run-dir lock already excludes) or a stale
in-memory copy therefore can never move an order behind another's back. The caller's
``OrderRow`` is changed only after the transaction commits, so a failed commit leaves memory
equal to the journal.
"""

from __future__ import annotations

import contextlib
import enum
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import orjson

from position_worker.intents import Intent
from position_worker.reasons import RejectReason

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS intents (
    id INTEGER PRIMARY KEY, lane INTEGER, seq INTEGER, epoch INTEGER, intent_id INTEGER,
    created_ns INTEGER, received_ns INTEGER, slot INTEGER, outcome INTEGER,
    window_start INTEGER, slug TEXT, stake REAL, max_price REAL, reason TEXT,
    accepted INTEGER, reject_reason INTEGER, detail TEXT, client_key TEXT);
CREATE INDEX IF NOT EXISTS intents_reject ON intents(reject_reason);
CREATE TABLE IF NOT EXISTS orders (
    client_key TEXT PRIMARY KEY, idem_key TEXT NOT NULL UNIQUE, intent_row INTEGER,
    slot INTEGER, window_start INTEGER, end_ts INTEGER, slug TEXT, condition_id TEXT,
    outcome INTEGER, token TEXT, stake REAL, max_price REAL, epoch INTEGER,
    state TEXT NOT NULL, order_id TEXT, request TEXT, error TEXT,
    shares REAL DEFAULT 0, cost REAL DEFAULT 0, fees REAL DEFAULT 0,
    payout REAL DEFAULT 0, pnl REAL DEFAULT 0,
    created_ns INTEGER, sent_ns INTEGER, updated_ns INTEGER, settled_ns INTEGER,
    settled_ts REAL);
CREATE INDEX IF NOT EXISTS orders_state ON orders(state);
CREATE TABLE IF NOT EXISTS fills (
    trade_id TEXT PRIMARY KEY, client_key TEXT NOT NULL, price REAL, size REAL, fee REAL,
    ts_ns INTEGER);
CREATE TABLE IF NOT EXISTS settlements (
    client_key TEXT PRIMARY KEY, slug TEXT, winner TEXT, payout REAL, cost REAL, fees REAL,
    pnl REAL, win INTEGER, settled_ns INTEGER, settled_ts REAL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, client_key TEXT, kind TEXT, ts_ns INTEGER, body TEXT);
CREATE INDEX IF NOT EXISTS events_kind ON events(kind);
CREATE INDEX IF NOT EXISTS events_key ON events(client_key);
CREATE INDEX IF NOT EXISTS orders_window ON orders(window_start);
CREATE INDEX IF NOT EXISTS orders_token ON orders(token);
CREATE INDEX IF NOT EXISTS settlements_ts ON settlements(settled_ts);
CREATE INDEX IF NOT EXISTS fills_key ON fills(client_key);
"""


class OrderState(enum.StrEnum):
    NEW = "NEW"            # accepted and journaled; nothing has left the process
    SENDING = "SENDING"    # signed request journaled; it may or may not have reached the exchange
    ACKED = "ACKED"        # the exchange has it, not (yet) filled
    FILLED = "FILLED"      # a position exists
    REJECTED = "REJECTED"  # the exchange refused it (or the FOK was killed): no position
    UNKNOWN = "UNKNOWN"    # sent, no reply, not (yet) found on the exchange: look it up again
    FAILED = "FAILED"      # never placed, or given up on after lookups: no position
    SETTLED = "SETTLED"    # the window resolved and PnL is booked


_S = OrderState
ORDER_TRANSITIONS: dict[OrderState, frozenset[OrderState]] = {
    _S.NEW: frozenset({_S.SENDING, _S.FAILED}),
    _S.SENDING: frozenset({_S.ACKED, _S.FILLED, _S.REJECTED, _S.UNKNOWN, _S.FAILED}),
    _S.UNKNOWN: frozenset({_S.ACKED, _S.FILLED, _S.REJECTED, _S.FAILED}),
    _S.ACKED: frozenset({_S.FILLED, _S.REJECTED, _S.FAILED}),
    _S.FILLED: frozenset({_S.SETTLED}),
    # Adoption: reconciliation found fills on the exchange for an order the journal had
    # given up on. The money was spent, so the position is real and must not be lost.
    _S.REJECTED: frozenset({_S.FILLED}),
    _S.FAILED: frozenset({_S.FILLED}),
    _S.SETTLED: frozenset(),
}
LIVE_STATES = (_S.NEW, _S.SENDING, _S.UNKNOWN, _S.ACKED)     # exposure not yet known
FINAL_STATES = (_S.REJECTED, _S.FAILED, _S.SETTLED)


class JournalError(RuntimeError):
    pass


class OrderConflict(JournalError):
    """The journal no longer holds the order in the state the caller's copy says: another
    writer (or an older copy) moved it. Nothing was changed."""


@dataclass
class OrderRow:
    client_key: str
    idem_key: str
    intent_row: int
    slot: int
    window_start: int
    end_ts: int
    slug: str
    condition_id: str
    outcome: int
    token: str
    stake: float
    max_price: float
    epoch: int
    state: str = OrderState.NEW
    order_id: str = ""
    request: str = ""
    error: str = ""
    shares: float = 0.0
    cost: float = 0.0
    fees: float = 0.0
    payout: float = 0.0
    pnl: float = 0.0
    created_ns: int = 0
    sent_ns: int = 0
    updated_ns: int = 0
    settled_ns: int = 0
    settled_ts: float = 0.0

    @property
    def avg_price(self) -> float:
        return self.cost / self.shares if self.shares > 0 else 0.0


_ORDER_COLS = [f.name for f in fields(OrderRow)]


PROVISIONAL = ":reply"      # trade-id suffix of a fill taken from an order reply's amounts


@dataclass(frozen=True)
class Fill:
    trade_id: str
    price: float
    size: float
    fee: float

    @property
    def provisional(self) -> bool:
        """Taken from the reply's amounts; the venue's own trades replace it when seen."""
        return self.trade_id.endswith(PROVISIONAL)


def _now_ns() -> int:
    return time.time_ns()


class Journal:
    """One connection, used from the event loop thread only."""

    _db: sqlite3.Connection | None = None

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        self._db.row_factory = sqlite3.Row
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise JournalError(f"{self.path}: journal_mode is {mode}, WAL required")
        # FULL: a commit returns only after the WAL is fsynced, so "journaled before sent"
        # survives power loss as well as kill -9.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        self._depth = 0
        self._on_commit: list[Callable[[], None]] = []
        self._staged: dict[str, str] = {}        # client key -> state written, not committed

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise JournalError("journal is closed")
        return self._db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT; nested uses join the outer transaction."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            # Also when COMMIT itself failed: SQLite may leave the transaction open, and the
            # next BEGIN would then fail forever.
            self._end_transaction()
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            raise
        done = self._end_transaction()
        for apply in done:
            apply()

    def _end_transaction(self) -> list[Callable[[], None]]:
        done, self._on_commit, self._depth = self._on_commit, [], 0
        self._staged.clear()
        return done

    def _after_commit(self, fn: Callable[[], None]) -> None:
        if self._depth:
            self._on_commit.append(fn)
        else:
            fn()                               # autocommit: the statement is already durable

    def close(self) -> None:
        """Idempotent. Checkpoints the WAL so the file is self-contained."""
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
            self._db = None

    # -- meta -------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE "
                        "SET value=excluded.value", (key, value))

    def lane_cursor(self, lane: int) -> tuple[int, int] | None:
        """(ring identity, next seq to read) recorded for ``lane``, or None."""
        v = self.get_meta(f"lane{lane}")
        if v is None:
            return None
        ring_id, next_seq = v.split(":")
        return int(ring_id), int(next_seq)

    def set_lane_cursor(self, lane: int, ring_id: int, next_seq: int) -> None:
        self.set_meta(f"lane{lane}", f"{ring_id}:{next_seq}")

    # -- intents and decisions --------------------------------------------------------------

    def record_intent(self, it: Intent, *, accepted: bool, reject: RejectReason | None,
                      detail: str = "", client_key: str = "") -> int:
        cur = self.db.execute(
            "INSERT INTO intents(lane, seq, epoch, intent_id, created_ns, received_ns, slot, "
            "outcome, window_start, slug, stake, max_price, reason, accepted, reject_reason, "
            "detail, client_key) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (it.lane, it.seq, it.epoch, it.intent_id, it.created_ns, _now_ns(), it.slot,
             it.outcome, it.window_start, it.slug, it.stake, it.max_price, it.reason,
             int(accepted), None if reject is None else int(reject), detail, client_key))
        return int(cur.lastrowid or 0)

    def rejections(self) -> dict[int, int]:
        rows = self.db.execute("SELECT reject_reason, COUNT(*) FROM intents WHERE accepted=0 "
                               "GROUP BY reject_reason").fetchall()
        return {int(r[0]): int(r[1]) for r in rows if r[0] is not None}

    def intent_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM intents").fetchone()[0])

    # -- orders -----------------------------------------------------------------------------

    def has_order(self, idem: str) -> bool:
        return self.db.execute("SELECT 1 FROM orders WHERE idem_key=?",
                               (idem,)).fetchone() is not None

    def insert_order(self, o: OrderRow) -> None:
        o.created_ns = o.updated_ns = o.created_ns or _now_ns()
        cols = ",".join(_ORDER_COLS)
        marks = ",".join("?" * len(_ORDER_COLS))
        self.db.execute(f"INSERT INTO orders({cols}) VALUES({marks})",
                        [getattr(o, c) for c in _ORDER_COLS])

    def order(self, client_key: str) -> OrderRow | None:
        row = self.db.execute("SELECT * FROM orders WHERE client_key=?",
                              (client_key,)).fetchone()
        return None if row is None else OrderRow(**dict(row))

    def orders(self, states: tuple[str, ...] | None = None, *,
               limit: int | None = None) -> list[OrderRow]:
        """Orders in creation order (the newest ``limit`` of them when given)."""
        q = "SELECT * FROM orders"
        args: list[Any] = []
        if states:
            q += f" WHERE state IN ({','.join('?' * len(states))})"
            args.extend(str(s) for s in states)
        if limit is not None:
            q = f"SELECT * FROM ({q} ORDER BY created_ns DESC, rowid DESC LIMIT ?)"
            args.append(limit)
        q += " ORDER BY created_ns, rowid"
        return [OrderRow(**dict(r)) for r in self.db.execute(q, args).fetchall()]

    def orders_since(self, window_start: int) -> list[OrderRow]:
        """Orders whose window starts at or after ``window_start``, in creation order."""
        rows = self.db.execute("SELECT * FROM orders WHERE window_start >= ? ORDER BY "
                               "created_ns, rowid", (window_start,)).fetchall()
        return [OrderRow(**dict(r)) for r in rows]

    def has_token(self, token: str) -> bool:
        return self.db.execute("SELECT 1 FROM orders WHERE token=?",
                               (token,)).fetchone() is not None

    def tokens(self) -> dict[str, str]:
        """token -> client key, over every order ever journaled."""
        return {r[0]: r[1] for r in self.db.execute(
            "SELECT token, client_key FROM orders WHERE token != ''").fetchall()}

    def update_order(self, o: OrderRow, new_state: str | None = None, **changes: Any) -> None:
        """Apply ``changes`` (and a checked state transition) to ``o``'s row, compare-and-set
        on the state ``o`` holds; ``o`` itself is updated once the transaction commits.

        Raises ``JournalError`` for a refused transition, ``OrderConflict`` when the row is no
        longer in ``o``'s state (nothing is written then)."""
        state = self._staged.get(o.client_key, o.state)      # earlier writes in this txn
        if new_state is not None and new_state != state:
            allowed = ORDER_TRANSITIONS[OrderState(state)]
            if OrderState(new_state) not in allowed:
                raise JournalError(f"order {o.client_key}: {state} -> {new_state} refused")
            changes["state"] = str(new_state)
        changes["updated_ns"] = _now_ns()
        for k in changes:
            if k not in _ORDER_COLS:
                raise JournalError(f"unknown order column {k}")
        sets = ",".join(f"{k}=?" for k in changes)
        cur = self.db.execute(f"UPDATE orders SET {sets} WHERE client_key=? AND state=?",
                              [*changes.values(), o.client_key, str(state)])
        if cur.rowcount != 1:
            row = self.db.execute("SELECT state FROM orders WHERE client_key=?",
                                  (o.client_key,)).fetchone()
            raise OrderConflict(f"order {o.client_key}: expected {state}, journal has "
                                f"{row[0] if row else 'no row'}; not changed")
        if self._depth:
            self._staged[o.client_key] = changes.get("state", state)

        def apply() -> None:
            for k, v in changes.items():
                setattr(o, k, v)
        self._after_commit(apply)

    # -- fills, settlements, events ---------------------------------------------------------

    def record_fills(self, client_key: str, fills: list[Fill]) -> int:
        """Insert fills not seen before; returns how many were new."""
        n = 0
        for f in fills:
            cur = self.db.execute(
                "INSERT OR IGNORE INTO fills(trade_id, client_key, price, size, fee, ts_ns) "
                "VALUES(?,?,?,?,?,?)", (f.trade_id, client_key, f.price, f.size, f.fee,
                                        _now_ns()))
            n += cur.rowcount
        return n

    def fills(self, client_key: str) -> list[Fill]:
        rows = self.db.execute("SELECT trade_id, price, size, fee FROM fills WHERE "
                               "client_key=? ORDER BY rowid", (client_key,)).fetchall()
        return [Fill(r[0], r[1], r[2], r[3]) for r in rows]

    def has_provisional_fills(self, client_key: str) -> bool:
        return self.db.execute("SELECT 1 FROM fills WHERE client_key=? AND trade_id LIKE ?",
                               (client_key, "%" + PROVISIONAL)).fetchone() is not None

    def drop_provisional_fills(self, client_key: str) -> None:
        self.db.execute("DELETE FROM fills WHERE client_key=? AND trade_id LIKE ?",
                        (client_key, "%" + PROVISIONAL))

    def trade_ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT trade_id FROM fills").fetchall()}

    def record_settlement(self, o: OrderRow, *, winner: str, payout: float, settled_ts: float,
                          win: bool) -> None:
        pnl = payout - o.cost - o.fees
        now = _now_ns()
        self.db.execute(
            "INSERT INTO settlements(client_key, slug, winner, payout, cost, fees, pnl, win, "
            "settled_ns, settled_ts) VALUES(?,?,?,?,?,?,?,?,?,?)",
            (o.client_key, o.slug, winner, payout, o.cost, o.fees, pnl, int(win), now,
             settled_ts))
        self.update_order(o, OrderState.SETTLED, payout=payout, pnl=pnl, settled_ns=now,
                          settled_ts=settled_ts)

    def settlements(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM settlements ORDER BY settled_ts, rowid").fetchall()

    def recent_wins(self) -> Iterator[bool]:
        """Win flags of settlements in booking order, newest first (lazily: callers stop
        early). Booking order, not window order, so running counters can keep up."""
        cur = self.db.execute("SELECT win FROM settlements ORDER BY rowid DESC")
        for (w,) in cur:
            yield bool(w)

    def realized_since(self, ts: float) -> float:
        """Realised PnL of settlements whose window closed at or after ``ts`` (clock s)."""
        v = self.db.execute("SELECT COALESCE(SUM(pnl), 0) FROM settlements WHERE "
                            "settled_ts >= ?", (ts,)).fetchone()[0]
        return float(v)

    def event(self, client_key: str, kind: str, body: Any) -> None:
        self.db.execute("INSERT INTO events(client_key, kind, ts_ns, body) VALUES(?,?,?,?)",
                        (client_key, kind, _now_ns(), orjson.dumps(body, default=str).decode()))

    def events(self, client_key: str | None = None, kind: str | None = None) -> list[dict]:
        q, args = "SELECT client_key, kind, ts_ns, body FROM events WHERE 1=1", []
        if client_key is not None:
            q += " AND client_key=?"
            args.append(client_key)
        if kind is not None:
            q += " AND kind=?"
            args.append(kind)
        return [{"client_key": r[0], "kind": r[1], "ts_ns": r[2], "body": orjson.loads(r[3])}
                for r in self.db.execute(q + " ORDER BY id", args).fetchall()]
