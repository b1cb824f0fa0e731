"""The control block: epoch, tick, flags and worker slots, as seen from an attached process."""

from __future__ import annotations

import os

import pytest

from core.errors import SegmentMismatchError
from state.control import ControlBlock, WorkerSlot
from state.layout import WorkerRole
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
