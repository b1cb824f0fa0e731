"""The control block: who is running, which strategy epoch may trade, and the tick.

The supervisor owns it. Every worker writes only its own worker slot (heartbeat, state, pid);
the feed worker's scanner advances the tick; the supervisor alone flips the active epoch.

Byte layout (after the 64-byte segment header). Hot fields each have a cache line to
themselves so that one writer's stores do not invalidate another's line:

    off   size   field
    64    32     run_id            S32
    96    32     reserved
    128   8      active_epoch      u64   (the only epoch whose intents may trade; 0 = none)
    136   56     reserved
    192   8      tick              u64   (scanner tick = strategy tick)
    200   8      tick_time_ms      i8    (clock time of that tick, ms)
    208   8      tick_mono_ns      i8    (monotonic ns when it was published)
    216   40     reserved
    256   64*8   workers[8]        WORKER_DT: heartbeat_ns, pid, role, state, lane, epoch,
                                   started_ns, label  (one cache line each)
    768   16*8   epoch_ticks[8]    EPOCH_TICK_DT: last tick evaluated by strategy epoch e, at
                                   index e % 8
    896   8      flags             u8 paused, u8 kill, 6 reserved
    904   56     reserved

Worker slot indices are fixed: see ``WorkerSlot``.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path

import numpy as np

from state.layout import (
    EPOCH_TICK_DT,
    HEADER_SIZE,
    MAX_EPOCH_TICKS,
    MAX_WORKERS,
    WORKER_DT,
    SegmentKind,
    WorkerRole,
    layout_hash,
)
from state.segment import Segment, pid_alive

_OFF_RUN_ID = 64
_OFF_EPOCH = 128
_OFF_TICK = 192
_OFF_WORKERS = 256
_OFF_EPOCH_TICKS = 768
_OFF_FLAGS = 896
PAYLOAD_SIZE = 960 - HEADER_SIZE
CONTROL_HASH = layout_hash("control", WORKER_DT, EPOCH_TICK_DT, MAX_WORKERS, MAX_EPOCH_TICKS)


class WorkerSlot(enum.IntEnum):
    SUPERVISOR = 0
    FEED = 1
    POSITION = 2
    SIM = 3
    STRATEGY_LANE0 = 4
    STRATEGY_LANE1 = 5

    @classmethod
    def strategy(cls, lane: int) -> WorkerSlot:
        return cls(cls.STRATEGY_LANE0 + lane)


class ControlBlock:
    """Attach with :meth:`attach`; the supervisor (or a test harness) uses :meth:`create`."""

    _seg: Segment | None = None

    def __init__(self, seg: Segment) -> None:
        self._seg = seg
        self._buf = seg.buf
        # Whole-word views: epoch and tick are read and written as one 8-byte access each
        # (struct would do it a byte at a time, and a reader could catch half an update).
        self._u64 = seg.buf.cast("Q")
        self._i64 = seg.buf.cast("q")
        self.workers = np.frombuffer(seg.buf, dtype=WORKER_DT, count=MAX_WORKERS,
                                     offset=_OFF_WORKERS)
        self.epoch_ticks = np.frombuffer(seg.buf, dtype=EPOCH_TICK_DT, count=MAX_EPOCH_TICKS,
                                         offset=_OFF_EPOCH_TICKS)

    @classmethod
    def create(cls, path: Path, run_id: str) -> ControlBlock:
        seg, adopted = Segment.create_or_adopt(Path(path), SegmentKind.CONTROL, CONTROL_HASH,
                                               PAYLOAD_SIZE, name="control")
        if not adopted:
            seg.buf[_OFF_RUN_ID:_OFF_RUN_ID + 32] = run_id.encode()[:32].ljust(32, b"\0")
        cb = cls(seg)
        cb.adopted = adopted
        return cb

    @classmethod
    def attach(cls, path: Path, *, readonly: bool = False) -> ControlBlock:
        return cls(Segment.attach(Path(path), SegmentKind.CONTROL, CONTROL_HASH,
                                  readonly=readonly, expected_size=HEADER_SIZE + PAYLOAD_SIZE))

    @property
    def path(self) -> Path:
        assert self._seg is not None
        return self._seg.path

    @property
    def run_id(self) -> str:
        return bytes(self._buf[_OFF_RUN_ID:_OFF_RUN_ID + 32]).rstrip(b"\0").decode()

    # -- epoch (fencing token) ----------------------------------------------------------

    @property
    def active_epoch(self) -> int:
        return self._u64[_OFF_EPOCH >> 3]

    def set_active_epoch(self, epoch: int) -> None:
        """Only the supervisor calls this: it decides which strategy may trade."""
        self._u64[_OFF_EPOCH >> 3] = epoch

    # -- tick -----------------------------------------------------------------------------

    def tick(self) -> tuple[int, int, int]:
        """(tick, tick_time_ms, tick_mono_ns). The scanner writes the three together; a
        torn read is harmless here because readers only compare ``tick`` for change."""
        w = _OFF_TICK >> 3
        return self._u64[w], self._i64[w + 1], self._i64[w + 2]

    def publish_tick(self, tick: int, tick_time_ms: int, mono_ns: int) -> None:
        # time fields first, counter last: whoever sees the new tick sees its time too
        w = _OFF_TICK >> 3
        self._i64[w + 1] = tick_time_ms
        self._i64[w + 2] = mono_ns
        self._u64[w] = tick

    def set_epoch_tick(self, epoch: int, tick: int) -> None:
        self.epoch_ticks[epoch % MAX_EPOCH_TICKS] = (epoch, tick)

    def epoch_tick(self, epoch: int) -> int | None:
        e = self.epoch_ticks[epoch % MAX_EPOCH_TICKS]
        return int(e["tick"]) if int(e["epoch"]) == epoch else None

    # -- flags ----------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return bool(self._buf[_OFF_FLAGS])

    def set_paused(self, paused: bool) -> None:
        self._buf[_OFF_FLAGS] = int(paused)

    @property
    def killed(self) -> bool:
        """The kill switch: like pause, but meant to stay on until an operator clears it."""
        return bool(self._buf[_OFF_FLAGS + 1])

    def set_killed(self, killed: bool) -> None:
        self._buf[_OFF_FLAGS + 1] = int(killed)

    # -- workers --------------------------------------------------------------------------

    def register(self, slot: WorkerSlot, role: WorkerRole, *, state: int = 0, lane: int = 0,
                 epoch: int = 0, label: str = "", now_ns: int = 0) -> None:
        """Claim a worker slot for this process (pid, role, first heartbeat)."""
        self.workers[slot] = (now_ns, os.getpid(), int(role), state, lane, epoch, now_ns,
                              label.encode()[:24])

    def heartbeat(self, slot: WorkerSlot, now_ns: int, state: int | None = None) -> None:
        w = self.workers[slot]
        w["heartbeat_ns"] = now_ns
        if state is not None:
            w["state"] = state

    def clear(self, slot: WorkerSlot) -> None:
        self.workers[slot] = np.zeros((), dtype=WORKER_DT)

    def worker(self, slot: WorkerSlot) -> dict:
        w = self.workers[slot].copy()
        pid = int(w["pid"])
        return {"slot": slot.name.lower(), "role": WorkerRole(int(w["role"])).name.lower(),
                "pid": pid, "alive": pid_alive(pid), "state": int(w["state"]),
                "lane": int(w["lane"]), "epoch": int(w["epoch"]),
                "heartbeat_ns": int(w["heartbeat_ns"]), "started_ns": int(w["started_ns"]),
                "label": bytes(w["label"]).rstrip(b"\0").decode(errors="replace")}

    def close(self) -> None:
        """Idempotent."""
        self.workers = self.epoch_ticks = None  # type: ignore[assignment]
        for view in (getattr(self, "_u64", None), getattr(self, "_i64", None)):
            if view is not None:
                view.release()
        self._u64 = self._i64 = None  # type: ignore[assignment]
        self._buf = None  # type: ignore[assignment]
        if self._seg is not None:
            self._seg.close()

    def unlink(self) -> None:
        if self._seg is not None:
            self._seg.unlink()
