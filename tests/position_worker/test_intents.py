from __future__ import annotations

import asyncio

import pytest

from core.errors import SegmentError, SegmentMissingError
from position_worker.intents import IntentSource
from state.control import ControlBlock
from state.intents import IntentWriter
from state.layout import INTENT_DT, Outcome
from state.ring import RingWriter
from state.run import INTENT_RING_CAPACITY, RunPaths


def submit(w: IntentWriter, slot: int = 0) -> int:
    return w.submit(slot, 900, "btc-updown-15m-900", Outcome.DOWN, 5.0, 0.55, "edge")


def test_strategy_writes_position_worker_reads(run_paths: RunPaths) -> None:
    src = IntentSource(run_paths)
    w0, w1 = IntentWriter(run_paths, 0, epoch=3), IntentWriter(run_paths, 1, epoch=4)
    try:
        assert submit(w0) == 0 and submit(w1, slot=2) == 0 and submit(w0, slot=1) == 1
        got = sorted(src.poll(), key=lambda i: (i.lane, i.seq))
        assert [(i.lane, i.seq, i.epoch, i.slot) for i in got] == [
            (0, 0, 3, 0), (0, 1, 3, 1), (1, 0, 4, 2)]
        it = got[0]
        assert it.outcome == Outcome.DOWN and it.stake == 5.0 and it.max_price == 0.55
        assert it.slug == "btc-updown-15m-900" and it.reason == "edge"
        assert it.window_start == 900 and it.problems() is None
        assert src.poll() == []
    finally:
        w0.close()
        w1.close()
        src.close(unlink=True)


def test_a_tick_of_intents_is_one_batch(run_paths: RunPaths) -> None:
    """submit_many: consecutive seqs and intent ids, one creation time, all visible to one
    poll (the position worker journals them in one commit)."""
    src = IntentSource(run_paths)
    w = IntentWriter(run_paths, 0, epoch=3)
    try:
        submit(w)
        batch = [{"slot": s, "window_start": 900, "slug": f"btc-updown-15m-{900 + s}",
                  "outcome": Outcome.UP, "stake": 5.0, "max_price": 0.6, "reason": f"r{s}"}
                 for s in range(3)]
        assert w.submit_many(batch) == 4 and w.submit_many([]) == 4
        got = src.poll()
        assert [(i.seq, i.intent_id, i.slot, i.reason) for i in got] == [
            (0, 0, 0, "edge"), (1, 1, 0, "r0"), (2, 2, 1, "r1"), (3, 3, 2, "r2")]
        assert len({i.created_ns for i in got[1:]}) == 1 and got[1].epoch == 3
    finally:
        w.close()
        src.close(unlink=True)


def test_attached_producer_cannot_unlink(run_paths: RunPaths) -> None:
    src = IntentSource(run_paths)
    w = RingWriter.attach_producer(run_paths.intents(0), INTENT_DT)
    try:
        with pytest.raises(SegmentError):
            w.unlink()
        assert run_paths.intents(0).exists()
    finally:
        w.close()
        src.close(unlink=True)


def test_writer_waits_for_the_ring(run_paths: RunPaths) -> None:
    w = IntentWriter(run_paths, 0, epoch=1)          # the position worker is not up yet
    with pytest.raises(SegmentMissingError):
        submit(w)
    src = IntentSource(run_paths)
    try:
        assert submit(w) == 0
        assert [i.epoch for i in src.poll()] == [1]
    finally:
        w.close()
        src.close(unlink=True)


class FakeMono:
    def __init__(self) -> None:
        self.ns = 1_000_000_000

    def __call__(self) -> int:
        return self.ns


def test_writer_follows_a_recreated_ring(run_paths: RunPaths) -> None:
    src = IntentSource(run_paths)
    mono = FakeMono()
    w = IntentWriter(run_paths, 0, epoch=1, recheck_s=0.1, monotonic_ns=mono)
    try:
        submit(w)
        src.close(unlink=True)                     # clean stop of the position worker...
        src = IntentSource(run_paths)              # ... and a fresh start
        mono.ns += 100_000_000                     # the next check is due
        submit(w)
        got = src.poll()
        assert len(got) == 1 and got[0].seq == 0
    finally:
        w.close()
        src.close(unlink=True)


def test_writer_stats_the_ring_at_most_every_recheck(run_paths: RunPaths,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """No stat(2) per submit: the path is looked at once per ``recheck_s``."""
    from state import intents
    calls = 0
    real = intents._ring_ino

    def counting(path):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return real(path)
    src = IntentSource(run_paths)
    mono = FakeMono()
    w = IntentWriter(run_paths, 0, epoch=1, recheck_s=0.1, monotonic_ns=mono)
    monkeypatch.setattr(intents, "_ring_ino", counting)
    try:
        for _ in range(50):
            submit(w)
        assert calls == 0
        mono.ns += 100_000_000
        for _ in range(50):
            submit(w)
        assert calls == 1
        assert [i.seq for i in src.poll(200)] == list(range(100))
    finally:
        w.close()
        src.close(unlink=True)


def test_resume_on_a_lapped_ring_starts_at_its_oldest_record(run_paths: RunPaths) -> None:
    """The oldest record still in a full ring is head - capacity (RingReader's definition);
    resuming from before it must not skip it."""
    src = IntentSource(run_paths)
    w = IntentWriter(run_paths, 0, epoch=1)
    try:
        for _ in range(INTENT_RING_CAPACITY + 3):
            submit(w)
        src.close()                                # crash: the ring survives
        src = IntentSource(run_paths)
        src.resume(0, 1)                           # journaled up to seq 0: 1..2 were lapped
        seqs = [i.seq for i in src.poll(INTENT_RING_CAPACITY + 10)]
        assert seqs == list(range(3, INTENT_RING_CAPACITY + 3))
    finally:
        w.close()
        src.close(unlink=True)


def test_resume_skips_journaled_intents(run_paths: RunPaths) -> None:
    src = IntentSource(run_paths)
    w = IntentWriter(run_paths, 0, epoch=1)
    try:
        for _ in range(5):
            submit(w)
        ident = src.identity(0)
        src.close()                                # crash: segments stay
        src = IntentSource(run_paths)
        assert src.identity(0) == ident            # adopted, same ring
        src.resume(0, 3)
        assert [i.seq for i in src.poll()] == [3, 4]
    finally:
        w.close()
        src.close(unlink=True)


async def test_wait_wakes_on_either_lane(run_paths: RunPaths) -> None:
    src = IntentSource(run_paths)
    w = IntentWriter(run_paths, 1, epoch=1)
    try:
        assert await src.wait(0.05) is False
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, submit, w)
        t0 = loop.time()
        # woken by the intent, not by the (long) timeout: generous on a loaded box
        assert await src.wait(60.0) is True
        assert loop.time() - t0 < 30.0
    finally:
        w.close()
        src.close(unlink=True)


def test_identity_comes_from_our_own_mapping(run_paths: RunPaths) -> None:
    """The ring's creation stamp is read from the mapped header, not by reopening the path
    (which another process may be replacing: it was once seen missing at start-up)."""
    src = IntentSource(run_paths)
    try:
        ident = src.identity(0)
        assert ident > 0
        run_paths.intents(0).unlink()              # the path goes away under us
        assert src.identity(0) == ident
    finally:
        src.close(unlink=True)


def test_adopted_ring_without_a_cursor_is_read_from_its_head(run_paths: RunPaths,
                                                             tmp_path) -> None:
    """A new journal on surviving rings: old intents are not replayed (they would become
    orders again for windows that are still open)."""
    from types import SimpleNamespace

    from position_worker.journal import Journal
    from position_worker.main import Worker, parse_args
    src = IntentSource(run_paths)
    w = IntentWriter(run_paths, 0, epoch=1)
    try:
        for _ in range(5):
            submit(w)
        src.close()                                # crash: the rings survive...
        src = IntentSource(run_paths)
        journal = Journal(tmp_path / "fresh.sqlite")   # ... the journal does not
        worker = Worker(parse_args(["--run-dir", str(run_paths.run_dir)]))
        engine = SimpleNamespace(ring_ids={})
        worker._resume_lanes(src, journal, engine)  # type: ignore[arg-type]
        journal.close()
        assert src.poll() == []
        submit(w)
        assert [i.seq for i in src.poll()] == [5]
    finally:
        w.close()
        src.close(unlink=True)


async def test_intake_publishes_decided_past_lost_intents(run_paths: RunPaths,
                                                          control: ControlBlock) -> None:
    """Intents lost to a lapped ring are never decided; the decided cursor still moves past
    them (to the reader's cursor), or a hot reload would wait for them forever."""
    from types import SimpleNamespace

    from position_worker.main import Worker, parse_args
    src = IntentSource(run_paths)
    w = IntentWriter(run_paths, 0, epoch=1)
    head = INTENT_RING_CAPACITY + 5
    seen: list[int] = []
    worker = Worker(parse_args(["--run-dir", str(run_paths.run_dir)]))
    worker.control = control

    def decide_all(intents):  # type: ignore[no-untyped-def]
        for it in intents:        # a real decide also publishes it.seq + 1; this one not
            seen.append(it.seq)
            if it.seq == head - 1:
                worker.stop.set()
        return [None] * len(intents)
    try:
        for _ in range(head):
            submit(w)
        worker._publish_decided(src)                   # start-up: nothing read yet
        assert (control.decided(0), control.decided(1)) == (0, 0)
        await worker._intake(src, SimpleNamespace(decide_all=decide_all))  # type: ignore[arg-type]
        assert seen == list(range(5, head)) and src.lost() == 5
        assert (control.decided(0), control.decided(1)) == (head, 0)
    finally:
        w.close()
        src.close(unlink=True)


def test_start_up_publishes_the_resumed_cursor(run_paths: RunPaths,
                                               control: ControlBlock) -> None:
    """After a restart the supervisor sees where intake resumes, before any new decision."""
    from position_worker.main import Worker, parse_args
    src = IntentSource(run_paths)
    w = IntentWriter(run_paths, 1, epoch=1)
    try:
        for _ in range(5):
            submit(w)
        src.close()                                # crash: the rings survive
        src = IntentSource(run_paths)
        src.resume(1, 3)                           # the journal says 0..2 were decided
        worker = Worker(parse_args(["--run-dir", str(run_paths.run_dir)]))
        worker.control = control
        worker._publish_decided(src)
        assert (control.decided(0), control.decided(1)) == (0, 3)
    finally:
        w.close()
        src.close(unlink=True)
