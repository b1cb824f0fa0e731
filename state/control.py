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
    896   8      flags             u8 paused     (supervisor: open no new position)
                                   u8 kill       (supervisor: the kill switch, see below)
                                   u8 kill_done  (position worker: kill carried out)
                                   5 reserved
    904   56     reserved
    960   8*2    decided[2]        u64: the next intent seq of lane l the position worker has
                                   not decided yet (it writes it after journaling a decision)
    976   8*2    fence[2]          u64: lane l's intents with seq >= fence[l] are refused
                                   (written by the supervisor when a worker drains;
                                   NO_FENCE = 2**64-1 when open)
    992   32     reserved
    1024  448*2  lanes[2]          LANE_DT: the supervisor <-> strategy worker mailbox of lane
                                   l (commands, drain/handoff reports, decisions per tick,
                                   evaluation-time histogram)

The kill switch is a handshake over the flags. The supervisor's ``kill`` clears kill_done,
then sets paused and kill; the position worker, seeing kill set and kill_done clear, refuses
intents (PAUSED), cancels every open order at the venue, journals it and only then sets
kill_done, which is what the supervisor acknowledges. An operator's ``resume`` clears all
three. kill_done is set by the position worker alone and cleared by the supervisor alone.

Worker slot indices are fixed: see ``WorkerSlot``. Fields written by one process and read by
another are whole aligned u64 words (one store each on x86-64), and every multi-field
message publishes its sequence word last.
"""

from __future__ import annotations

import enum
import os
import struct
from pathlib import Path

import numpy as np

from state.layout import (
    EPOCH_TICK_DT,
    HEADER_SIZE,
    LANE_DT,
    MAX_EPOCH_TICKS,
    MAX_WORKERS,
    N_LANES,
    WORKER_DT,
    LaneAck,
    LaneCommand,
    SegmentKind,
    WorkerRole,
    layout_hash,
)
from state.segment import Segment, pid_alive
from state.strings import decode_nul, encode_nul

_OFF_RUN_ID = 64
_OFF_EPOCH = 128
_OFF_TICK = 192
_OFF_WORKERS = 256
_OFF_EPOCH_TICKS = 768
_OFF_FLAGS = 896
FLAGS = ("paused", "kill", "kill_done")     # one byte each from _OFF_FLAGS, in this order
_OFF_DECIDED = 960
_OFF_FENCE = 976
_OFF_LANES = 1024
PAYLOAD_SIZE = _OFF_LANES + N_LANES * LANE_DT.itemsize - HEADER_SIZE
CONTROL_HASH = layout_hash("control", WORKER_DT, EPOCH_TICK_DT, MAX_WORKERS, MAX_EPOCH_TICKS,
                           LANE_DT, N_LANES, _OFF_FLAGS, FLAGS, _OFF_DECIDED, _OFF_FENCE,
                           _OFF_LANES)
NO_FENCE = (1 << 64) - 1


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
        self.lanes = np.frombuffer(seg.buf, dtype=LANE_DT, count=N_LANES, offset=_OFF_LANES)

    @classmethod
    def create(cls, path: Path, run_id: str) -> ControlBlock:
        def init(buf: memoryview) -> None:
            buf[_OFF_RUN_ID:_OFF_RUN_ID + 32] = encode_nul(run_id, 32)
            for lane in range(N_LANES):          # every lane open until a drain closes it
                struct.pack_into("<Q", buf, _OFF_FENCE + 8 * lane, NO_FENCE)

        seg, adopted = Segment.create_or_adopt(Path(path), SegmentKind.CONTROL, CONTROL_HASH,
                                               PAYLOAD_SIZE, name="control", init=init)
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
        return decode_nul(self._buf[_OFF_RUN_ID:_OFF_RUN_ID + 32])

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

    @property
    def kill_confirmed(self) -> bool:
        """kill_done: the position worker has cancelled every open order since the kill flag
        was last set (see the module doc for the handshake)."""
        return bool(self._buf[_OFF_FLAGS + 2])

    def set_kill_confirmed(self, done: bool) -> None:
        """The position worker sets it after its cancel-all; the supervisor clears it (kill,
        resume)."""
        self._buf[_OFF_FLAGS + 2] = int(done)

    # -- intent lanes: decided cursor (position worker) and fence (supervisor) --------------

    def decided(self, lane: int) -> int:
        """The next seq of ``lane``'s intent ring the position worker has not decided."""
        return self._u64[(_OFF_DECIDED >> 3) + lane]

    def set_decided(self, lane: int, next_seq: int) -> None:
        self._u64[(_OFF_DECIDED >> 3) + lane] = next_seq

    def fence(self, lane: int) -> int | None:
        """Intents of ``lane`` with seq >= this are refused; None when the lane is open."""
        v = self._u64[(_OFF_FENCE >> 3) + lane]
        return None if v == NO_FENCE else int(v)

    def set_fence(self, lane: int, seq: int | None) -> None:
        """Only the supervisor calls this: close a drained worker's lane at its head."""
        self._u64[(_OFF_FENCE >> 3) + lane] = NO_FENCE if seq is None else seq

    # -- lane mailboxes (supervisor <-> strategy worker) ---------------------------------

    def send_lane(self, lane: int, cmd: LaneCommand, *, gen: int = 0, tick: int = 0,
                  epoch: int = 0, n: int = 0) -> int:
        """Post a command to ``lane``'s worker (arguments first, sequence last); returns its
        sequence number, which the worker's acknowledgement will carry."""
        rec = self.lanes[lane]
        seq = int(rec["cmd_seq"]) + 1
        rec["arg_gen"], rec["arg_tick"], rec["arg_epoch"], rec["arg_n"] = gen, tick, epoch, n
        rec["cmd"] = int(cmd)
        rec["cmd_seq"] = seq
        return seq

    def lane_command(self, lane: int) -> tuple[int, LaneCommand, dict]:
        """(seq, command, arguments) as last posted on ``lane``."""
        rec = self.lanes[lane].copy()
        args = {k: int(rec[f"arg_{k}"]) for k in ("gen", "tick", "epoch", "n")}
        return int(rec["cmd_seq"]), LaneCommand(int(rec["cmd"])), args

    def ack_lane(self, lane: int, seq: int, ok: bool, **report: int) -> None:
        """The worker's answer to command ``seq`` (report fields first, ack_seq last)."""
        rec = self.lanes[lane]
        for k, v in report.items():
            rec[k] = v
        rec["ack"] = int(LaneAck.OK if ok else LaneAck.ERROR)
        rec["ack_seq"] = seq

    def lane_ack(self, lane: int) -> tuple[int, LaneAck]:
        rec = self.lanes[lane]
        return int(rec["ack_seq"]), LaneAck(int(rec["ack"]))

    def lane(self, lane: int) -> np.void:
        """A copy of ``lane``'s whole record."""
        return self.lanes[lane].copy()

    def reset_lane(self, lane: int) -> None:
        """Before a new worker starts on ``lane``: no stale command, report or fence. The
        sequence numbers keep growing, so an old acknowledgement never matches a new
        command."""
        rec = self.lanes[lane]
        seq = max(int(rec["cmd_seq"]), int(rec["ack_seq"]))
        self.lanes[lane] = np.zeros((), dtype=LANE_DT)
        rec = self.lanes[lane]
        rec["ack_seq"] = seq
        rec["cmd_seq"] = seq
        self.set_fence(lane, None)

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

    def clear(self, slot: WorkerSlot, pid: int | None = None) -> bool:
        """Empty ``slot``; with ``pid``, only if that process still owns it (a worker, or
        the supervisor on behalf of a reaped one, never clears a successor's slot)."""
        if pid is not None and int(self.workers[slot]["pid"]) != pid:
            return False
        self.workers[slot] = np.zeros((), dtype=WORKER_DT)
        return True

    def worker(self, slot: WorkerSlot) -> dict:
        w = self.workers[slot].copy()
        pid = int(w["pid"])
        return {"slot": slot.name.lower(), "role": WorkerRole(int(w["role"])).name.lower(),
                "pid": pid, "alive": pid_alive(pid), "state": int(w["state"]),
                "lane": int(w["lane"]), "epoch": int(w["epoch"]),
                "heartbeat_ns": int(w["heartbeat_ns"]), "started_ns": int(w["started_ns"]),
                "label": decode_nul(w["label"])}

    def close(self) -> None:
        """Idempotent."""
        self.workers = self.epoch_ticks = self.lanes = None  # type: ignore[assignment]
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
