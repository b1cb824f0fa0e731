"""The control block: epoch, tick, flags, worker slots, lane cursors/fences and lane
mailboxes, as seen from an attached process."""

from __future__ import annotations

import os

import pytest

from core.errors import SegmentMismatchError
from state.control import NO_FENCE, ControlBlock, WorkerSlot
from state.layout import LaneAck, LaneCommand, WorkerRole
from state.run import RunPaths


def test_epoch_tick_and_flags_are_shared(control: ControlBlock, run_paths: RunPaths) -> None:
    other = ControlBlock.attach(run_paths.seg("control"))
    ro = ControlBlock.attach(run_paths.seg("control"), readonly=True)
    try:
        assert not control.adopted
        assert other.run_id == ro.run_id == run_paths.run_id
        assert (ro.active_epoch, ro.tick(), ro.paused) == (0, (0, 0, 0), False)
        control.set_active_epoch(3)
        assert other.active_epoch == ro.active_epoch == 3
        # every byte of the tick changes (0xff.. -> 0x100..): read whole, never half-updated
        other.publish_tick(0x1_0000_0000, -1_700_000_000_000, 2**62)
        assert ro.tick() == (0x1_0000_0000, -1_700_000_000_000, 2**62)
        control.set_active_epoch(2**64 - 1)
        assert ro.active_epoch == 2**64 - 1
        control.set_paused(True)
        assert ro.paused is True
        control.set_paused(False)
        assert other.paused is False
        with pytest.raises(TypeError):                 # a read-only mapping stays read-only
            ro.set_active_epoch(5)
    finally:
        other.close()
        ro.close()
        ro.close()


def test_epoch_ticks_wrap_by_epoch(control: ControlBlock) -> None:
    control.set_epoch_tick(1, 100)
    control.set_epoch_tick(2, 200)
    assert control.epoch_tick(1) == 100 and control.epoch_tick(2) == 200
    assert control.epoch_tick(3) is None
    control.set_epoch_tick(9, 900)                     # same slot as epoch 1 (mod 8)
    assert control.epoch_tick(9) == 900
    assert control.epoch_tick(1) is None               # stale epoch: not mistaken for 9


def test_worker_slots(control: ControlBlock, run_paths: RunPaths) -> None:
    other = ControlBlock.attach(run_paths.seg("control"))
    try:
        other.register(WorkerSlot.STRATEGY_LANE1, WorkerRole.STRATEGY, state=2, lane=1,
                       epoch=4, label="momentum-v2-with-a-very-long-name", now_ns=1000)
        w = control.worker(WorkerSlot.strategy(1))
        assert w == {"slot": "strategy_lane1", "role": "strategy", "pid": os.getpid(),
                     "alive": True, "state": 2, "lane": 1, "epoch": 4, "heartbeat_ns": 1000,
                     "started_ns": 1000, "label": "momentum-v2-with-a-very-"}
        other.heartbeat(WorkerSlot.STRATEGY_LANE1, 2500)
        other.heartbeat(WorkerSlot.STRATEGY_LANE1, 3000, state=3)
        w = control.worker(WorkerSlot.STRATEGY_LANE1)
        assert (w["heartbeat_ns"], w["state"], w["started_ns"]) == (3000, 3, 1000)
        assert control.worker(WorkerSlot.FEED)["role"] == "none"
        other.clear(WorkerSlot.STRATEGY_LANE1)
        assert control.worker(WorkerSlot.STRATEGY_LANE1)["pid"] == 0
        assert control.worker(WorkerSlot.STRATEGY_LANE1)["alive"] is False
    finally:
        other.close()


def test_recreate_adopts_and_keeps_state(run_paths: RunPaths) -> None:
    path = run_paths.seg("control")
    cb = ControlBlock.create(path, run_paths.run_id)
    cb.set_active_epoch(7)
    cb.publish_tick(12, 34, 56)
    cb.register(WorkerSlot.FEED, WorkerRole.FEED, now_ns=9)
    cb.close()
    again = ControlBlock.create(path, "ignored-on-adopt")
    try:
        assert again.adopted
        assert again.run_id == run_paths.run_id
        assert (again.active_epoch, again.tick()) == (7, (12, 34, 56))
        assert again.worker(WorkerSlot.FEED)["heartbeat_ns"] == 9
    finally:
        again.unlink()
        again.close()


def test_attach_checks_the_header(run_paths: RunPaths) -> None:
    from state.snapshot import SnapshotRegion
    path = run_paths.seg("control")
    snap = SnapshotRegion.create(path, 64)             # a segment of another kind
    try:
        with pytest.raises(SegmentMismatchError, match=r"kind 4 \(segment\) != 3 \(CONTROL"):
            ControlBlock.attach(path)
    finally:
        snap.unlink()
        snap.close()


def test_clear_with_another_pid_leaves_the_slot(control: ControlBlock) -> None:
    """The supervisor reaping an old worker must not clear its successor's slot."""
    control.register(WorkerSlot.STRATEGY_LANE0, WorkerRole.STRATEGY, epoch=5, now_ns=1)
    assert control.clear(WorkerSlot.STRATEGY_LANE0, pid=os.getpid() + 1) is False
    assert control.worker(WorkerSlot.STRATEGY_LANE0)["pid"] == os.getpid()
    assert control.worker(WorkerSlot.STRATEGY_LANE0)["epoch"] == 5
    assert control.clear(WorkerSlot.STRATEGY_LANE0, pid=os.getpid()) is True
    assert control.worker(WorkerSlot.STRATEGY_LANE0)["pid"] == 0


def test_fresh_lanes_are_open_and_undecided(control: ControlBlock) -> None:
    assert [control.fence(lane) for lane in (0, 1)] == [None, None]
    assert [control.decided(lane) for lane in (0, 1)] == [0, 0]


def test_decided_and_fence_round_trip(control: ControlBlock, run_paths: RunPaths) -> None:
    other = ControlBlock.attach(run_paths.seg("control"))
    try:
        other.set_decided(1, 42)                       # the position worker...
        assert control.decided(1) == 42 and control.decided(0) == 0
        control.set_fence(0, 17)                       # ... and the supervisor
        assert other.fence(0) == 17 and other.fence(1) is None
        control.set_fence(0, 0)                        # 0 is a fence, not "open"
        assert other.fence(0) == 0
        control.set_fence(0, NO_FENCE - 1)
        assert other.fence(0) == NO_FENCE - 1
        control.set_fence(0, None)
        assert other.fence(0) is None
        other.set_decided(1, 2**63)
        assert control.decided(1) == 2**63
    finally:
        other.close()


def test_adopting_keeps_fences_and_cursors(run_paths: RunPaths) -> None:
    """A restarted supervisor adopts the block: a lane it had fenced stays fenced."""
    path = run_paths.seg("control")
    cb = ControlBlock.create(path, run_paths.run_id)
    cb.set_fence(1, 9)
    cb.set_decided(1, 8)
    cb.close()
    again = ControlBlock.create(path, run_paths.run_id)
    try:
        assert again.adopted
        assert (again.fence(0), again.fence(1), again.decided(1)) == (None, 9, 8)
    finally:
        again.unlink()
        again.close()


def test_lane_mailbox_round_trip(control: ControlBlock, run_paths: RunPaths) -> None:
    worker = ControlBlock.attach(run_paths.seg("control"))
    try:
        assert control.lane_ack(0) == (0, LaneAck.NONE)
        seq = control.send_lane(0, LaneCommand.HANDOFF, gen=3, tick=120, epoch=9, n=2)
        assert seq == 1
        assert worker.lane_command(0) == (1, LaneCommand.HANDOFF,
                                          {"gen": 3, "tick": 120, "epoch": 9, "n": 2})
        assert worker.lane_command(1) == (0, LaneCommand.NONE,
                                          {"gen": 0, "tick": 0, "epoch": 0, "n": 0})
        worker.ack_lane(0, seq, True, gen=3, tick=120, head=55)
        assert control.lane_ack(0) == (1, LaneAck.OK)
        rec = control.lane(0)
        assert (int(rec["gen"]), int(rec["tick"]), int(rec["head"])) == (3, 120, 55)
        seq2 = control.send_lane(0, LaneCommand.DRAIN)
        assert seq2 == 2
        assert control.lane_ack(0) == (1, LaneAck.OK)      # the old ack is not the new one
        worker.ack_lane(0, seq2, False)
        assert control.lane_ack(0) == (2, LaneAck.ERROR)
        assert control.lane_ack(1) == (0, LaneAck.NONE)    # the other lane is untouched
    finally:
        worker.close()


def test_reset_lane_clears_but_keeps_sequence_numbers_growing(control: ControlBlock) -> None:
    """A new worker on the lane sees no stale command, report or fence, and an ack left by
    the previous worker can never match a command sent after the reset."""
    seq = control.send_lane(1, LaneCommand.DRAIN)
    control.ack_lane(1, seq, True, head=30, gen=4)
    control.send_lane(1, LaneCommand.RETIRE)              # never acknowledged: cmd_seq 2
    control.set_fence(1, 30)
    control.set_decided(1, 30)
    control.reset_lane(1)
    cmd_seq, cmd, args = control.lane_command(1)
    assert (cmd_seq, cmd, args) == (2, LaneCommand.NONE,
                                    {"gen": 0, "tick": 0, "epoch": 0, "n": 0})
    assert control.lane_ack(1) == (2, LaneAck.NONE)
    rec = control.lane(1)
    assert (int(rec["head"]), int(rec["gen"])) == (0, 0)
    assert control.fence(1) is None
    assert control.decided(1) == 30          # the position worker's cursor is not the lane's
    nxt = control.send_lane(1, LaneCommand.HANDOFF, gen=5)
    assert nxt == 3 and nxt > seq
    assert control.lane_ack(1)[0] < nxt
