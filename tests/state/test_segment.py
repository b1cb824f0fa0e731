"""Segment lifecycle: creation (O_EXCL, mode, ENOSPC), header checks, adoption, ownership,
unrelated processes attaching and leaving, and segments left behind by a dead run."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.errors import (
    SegmentError,
    SegmentExistsError,
    SegmentMismatchError,
    SegmentMissingError,
)
from state.control import ControlBlock
from state.layout import (
    HEADER_DT,
    HEADER_SIZE,
    KLINE_DT,
    LAYOUT_VERSION,
    MAGIC,
    SegmentKind,
)
from state.ring import RingReader, RingWriter, ring_hash
from state.run import RunPaths
from state.segment import BUILDING, SHM_DIR, Segment, scan_segments
from state.snapshot import SnapshotRegion
from state.table import TableReader, TableWriter
from tests.state.helpers import wait_for
from tests.state.procs import RING_DT, ROW_DT, make

HASH = 0x1234_5678_9ABC_DEF0


def records(first: int, n: int) -> np.ndarray:
    return make(RING_DT, np.arange(first, first + n, dtype=np.uint64))


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o137, 0o777])
def test_mode_is_0600_whatever_the_umask(run_paths: RunPaths, umask: int) -> None:
    old = os.umask(umask)
    try:
        seg = Segment.create(run_paths.seg("mode"), SegmentKind.TABLE, HASH, 64, name="mode")
    finally:
        os.umask(old)
    try:
        st = os.stat(seg.path)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.getuid()
        assert st.st_size == HEADER_SIZE + 64
    finally:
        seg.unlink()
        seg.close()


def test_create_is_exclusive(run_paths: RunPaths) -> None:
    path = run_paths.seg("excl")
    seg = Segment.create(path, SegmentKind.TABLE, HASH, 64)
    try:
        with pytest.raises(SegmentExistsError, match="already exists"):
            Segment.create(path, SegmentKind.TABLE, HASH, 64)
        assert seg.header().creator_pid == os.getpid()     # the first one is untouched
    finally:
        seg.unlink()
        seg.close()


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()                                      # reaped: its pid names no process now
    return p.pid


def builds(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}{BUILDING}*"))


def test_a_segment_appears_only_when_complete(run_paths: RunPaths) -> None:
    """Between creation and the header (and the payload's metadata), the name does not
    exist yet: a reader sees "missing", never an all-zero header or a ring of capacity 0."""
    path = run_paths.seg("whole")
    seen: list[str] = []

    def init(buf: memoryview) -> None:
        assert np.frombuffer(buf, dtype=HEADER_DT, count=1)[0]["magic"] == MAGIC
        buf[HEADER_SIZE:HEADER_SIZE + 4] = b"meta"
        seen.append("missing" if not path.exists() else "visible")
        with pytest.raises(SegmentMissingError):
            Segment.attach(path, SegmentKind.TABLE, HASH)
        assert len(builds(path)) == 1 and scan_segments(SHM_DIR, run_paths.run_id) == []

    seg = Segment.create(path, SegmentKind.TABLE, HASH, 64, name="whole", init=init)
    try:
        assert seen == ["missing"] and builds(path) == []
        with Segment.attach(path, SegmentKind.TABLE, HASH, readonly=True) as other:
            assert bytes(other.buf[HEADER_SIZE:HEADER_SIZE + 4]) == b"meta"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        seg.unlink()
        seg.close()


def test_a_failed_or_losing_build_leaves_nothing(run_paths: RunPaths) -> None:
    path = run_paths.seg("fail")

    def boom(buf: memoryview) -> None:
        raise RuntimeError("init failed")
    with pytest.raises(RuntimeError, match="init failed"):
        Segment.create(path, SegmentKind.TABLE, HASH, 64, init=boom)
    assert not path.exists() and builds(path) == []
    # a creator that loses the race (the name appears while it builds) says so, cleans up,
    # and the winner's segment is untouched
    winner: list[Segment] = []

    def race(buf: memoryview) -> None:
        winner.append(Segment.create(path, SegmentKind.TABLE, HASH, 64, name="winner"))
    with pytest.raises(SegmentExistsError, match="already exists"):
        Segment.create(path, SegmentKind.TABLE, HASH, 64, name="loser", init=race)
    try:
        assert builds(path) == [] and winner[0].header().name == "winner"
        with Segment.attach(path, SegmentKind.TABLE, HASH) as other:
            assert other.header().name == "winner"
    finally:
        winner[0].unlink()
        winner[0].close()


def test_a_dead_creators_build_is_swept_and_never_listed(run_paths: RunPaths) -> None:
    path = run_paths.seg("swept")
    dead = path.with_name(f"{path.name}{BUILDING}{dead_pid()}-deadbeef")
    live = path.with_name(f"{path.name}{BUILDING}{os.getpid()}-0badf00d")
    for p in (dead, live):
        p.write_bytes(b"\0" * (HEADER_SIZE + 64))
    try:
        assert scan_segments(SHM_DIR, run_paths.run_id) == []
        seg = Segment.create(path, SegmentKind.TABLE, HASH, 64)
        seg.unlink()
        seg.close()
        # the dead one goes; a live creator's build (here: ours) is not touched
        assert not dead.exists() and live.exists()
    finally:
        for p in (dead, live):
            p.unlink(missing_ok=True)


def test_header_mismatches_are_refused_naming_both_sides(run_paths: RunPaths) -> None:
    path = run_paths.seg("hdr")
    seg = Segment.create(path, SegmentKind.TABLE, HASH, 64, name="hdr")
    try:
        with pytest.raises(SegmentMismatchError,
                           match=r"kind 2 \(segment\) != 1 \(RING, this code\)"):
            Segment.attach(path, SegmentKind.RING, HASH)
        with pytest.raises(SegmentMismatchError,
                           match=r"layout hash 123456789abcdef0 \(segment\) != "
                                 r"0fedcba987654321 \(this code\)"):
            Segment.attach(path, SegmentKind.TABLE, 0x0FED_CBA9_8765_4321)
        with pytest.raises(SegmentMismatchError,
                           match=r"size 128 \(segment\) != 192 \(this code\)"):
            Segment.attach(path, SegmentKind.TABLE, HASH, expected_size=192)
        h = np.frombuffer(seg.buf, dtype=HEADER_DT, count=1)
        h[0]["layout_version"] = LAYOUT_VERSION + 98
        del h
        with pytest.raises(SegmentMismatchError,
                           match=rf"layout version {LAYOUT_VERSION + 98} \(segment\) != "
                                 rf"{LAYOUT_VERSION} \(this code\)"):
            Segment.attach(path, SegmentKind.TABLE, HASH)
        seg.buf[:8] = b"GARBAGE!"
        with pytest.raises(SegmentMismatchError, match="magic"):
            Segment.attach(path, SegmentKind.TABLE, HASH)
        # a create_or_adopt over an incompatible segment refuses it too, and leaves it alone
        with pytest.raises(SegmentMismatchError):
            Segment.create_or_adopt(path, SegmentKind.TABLE, HASH, 64)
        assert path.exists()
    finally:
        seg.unlink()
        seg.close()
    short = run_paths.seg("short")
    short.write_bytes(b"NOBLINK")
    short.chmod(0o600)                     # ours and private: only its size is wrong
    try:
        with pytest.raises(SegmentMismatchError, match="smaller than a header"):
            Segment.attach(short, SegmentKind.TABLE, HASH)
    finally:
        short.unlink()


def test_a_ring_of_another_record_type_is_refused(run_paths: RunPaths) -> None:
    path = run_paths.seg("ring")
    w = RingWriter(path, RING_DT, 16)
    try:
        with pytest.raises(SegmentMismatchError, match=r"\(segment\) != .* \(this code\)"):
            RingReader(path, KLINE_DT)
        with pytest.raises(SegmentMismatchError):
            RingWriter(path, KLINE_DT, 16)
        assert ring_hash(RING_DT) != ring_hash(KLINE_DT)
    finally:
        w.unlink()
        w.close()


def test_create_or_adopt_keeps_the_data(run_paths: RunPaths) -> None:
    ring, table = run_paths.seg("ring"), run_paths.seg("table")
    w = RingWriter(ring, RING_DT, 16)
    t = TableWriter(table, ROW_DT, 3)
    assert not w.adopted and not t.adopted
    w.publish_many(records(0, 10))
    t.write(1, make(ROW_DT, np.array([7], dtype=np.uint64))[0])
    w.close()                                         # a crash: nothing is unlinked
    t.close()
    w2 = RingWriter(ring, RING_DT, 16)
    t2 = TableWriter(table, ROW_DT, 3)
    try:
        assert w2.adopted and t2.adopted
        assert w2.head() == 10
        assert w2.publish(records(10, 1)[0]) == 10    # continues at the published head
        r = RingReader(ring, RING_DT, start="oldest")
        b = r.poll()
        np.testing.assert_array_equal(b.records, records(0, 11))
        r.close()
        assert int(t2.read(1)["seq"]) == 7
        assert t2._seg is not None and t2._seg.header().creator_pid == os.getpid()
    finally:
        w2.unlink()
        w2.close()
        t2.unlink()
        t2.close()


def test_close_is_idempotent_and_survives_live_views(run_paths: RunPaths) -> None:
    path = run_paths.seg("close")
    seg = Segment.create(path, SegmentKind.TABLE, HASH, 64)
    view = np.frombuffer(seg.buf, dtype=np.uint8)     # a view someone forgot to drop
    seg.close()
    seg.close()
    assert seg.closed
    with pytest.raises(SegmentError, match="closed"):
        _ = seg.buf
    assert view[0] == ord("N")                        # still mapped while the view lives
    del view
    seg.unlink()
    seg.unlink()                                      # unlinking twice is harmless
    assert not path.exists()
    # Every structure's close() is idempotent, and close() never unlinks.
    w = RingWriter(run_paths.seg("r"), RING_DT, 8)
    r = RingReader(run_paths.seg("r"), RING_DT)
    t = TableWriter(run_paths.seg("t"), ROW_DT, 2)
    tr = TableReader(run_paths.seg("t"), ROW_DT)
    c = ControlBlock.create(run_paths.seg("c"), run_paths.run_id)
    s = SnapshotRegion.create(run_paths.seg("s"), 64)
    for obj in (r, tr, w, t, c, s):
        obj.close()
        obj.close()
    for name in ("r", "t", "c", "s"):
        assert run_paths.seg(name).exists()
    for obj in (w, t, c, s):
        obj.unlink()
    assert not any(run_paths.seg(n).exists() for n in ("r", "t", "c", "s"))


def test_only_the_owner_unlinks(run_paths: RunPaths) -> None:
    path = run_paths.seg("own")
    owner = Segment.create(path, SegmentKind.TABLE, HASH, 64)
    visitor = Segment.attach(path, SegmentKind.TABLE, HASH)
    ro = Segment.attach(path, SegmentKind.TABLE, HASH, readonly=True)
    try:
        for s in (visitor, ro):
            with pytest.raises(SegmentError, match="only the owner"):
                s.unlink()
        assert path.exists()
        c = ControlBlock.create(run_paths.seg("control"), run_paths.run_id)
        attached = ControlBlock.attach(run_paths.seg("control"))
        with pytest.raises(SegmentError, match="owner"):
            attached.unlink()
        attached.close()
        c.unlink()
        c.close()
    finally:
        for s in (visitor, ro):
            s.close()
        owner.unlink()
        owner.close()
    assert not path.exists()


@pytest.mark.parametrize("how", ["close", "exit", "kill"])
def test_unrelated_processes_attach_and_leave_without_removing_anything(
        run_paths: RunPaths, spawn, how: str) -> None:
    ring, table = run_paths.seg("ring"), run_paths.seg("table")
    w = RingWriter(ring, RING_DT, 16)
    t = TableWriter(table, ROW_DT, 2)
    try:
        w.publish_many(records(0, 5))
        child = spawn("attach_and_exit", ring=str(ring), table=str(table), how=how)
        assert child.report()["pid"] == child.pid
        child.wait()
        raw = spawn("raw_mmap_and_exit", path=str(ring))
        assert raw.report() == {"magic": "NOBLINK\x01", "size": os.stat(ring).st_size}
        assert raw.wait() == 0
        inspector = RingReader(ring, RING_DT, readonly=True, start="oldest")
        inspector.close()
        for path in (ring, table):
            assert path.exists(), f"{path.name} vanished after a visitor left"
        r = RingReader(ring, RING_DT, start="oldest")
        np.testing.assert_array_equal(r.poll().records, records(0, 5))
        r.close()
        assert w.head() == 5
    finally:
        w.unlink()
        w.close()
        t.unlink()
        t.close()


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="3.13 has SharedMemory(track=False)")
def test_the_stdlib_would_have_unlinked_it(run_paths: RunPaths, spawn) -> None:
    """Why noblink maps /dev/shm itself: on 3.11 a process that merely *attaches* with
    multiprocessing.shared_memory unlinks the segment when it exits. (Also proves that the
    "segment still exists" checks above can fail.)"""
    path = run_paths.seg("victim")
    seg = Segment.create(path, SegmentKind.TABLE, HASH, 64)
    try:
        child = spawn("stdlib_attach_and_exit", name=path.name)
        assert child.report()["size"] >= HEADER_SIZE + 64
        child.wait()
        assert wait_for(lambda: not path.exists(), timeout=10.0)
    finally:
        seg.unlink()                                  # already gone: harmless
        seg.close()


def test_a_dead_run_is_reported_then_cleaned_up(run_paths: RunPaths, spawn) -> None:
    orphan = run_paths.seg("orphan")
    child = spawn("create_and_abandon", ring=str(orphan))
    dead_pid = child.report()["pid"]
    child.wait()
    live = Segment.create(run_paths.seg("live"), SegmentKind.TABLE, HASH, 64, name="live")
    try:
        infos = {i.name: i for i in scan_segments(SHM_DIR, run_paths.run_id)}
        assert set(infos) == {"orphan", "live"}
        o = infos["orphan"]
        assert o.error is None and o.header is not None
        assert o.header.creator_pid == dead_pid and o.creator_alive is False
        assert o.header.as_dict()["kind"] == "RING" and o.header.name == "orphan"
        assert infos["live"].creator_alive is True
        # A restarted owner adopts the orphan (its data intact) and then retires it.
        w = RingWriter(orphan, RING_DT, 16)
        assert w.adopted and w.head() == 1
        w.unlink()
        w.close()
        assert [i.name for i in scan_segments(SHM_DIR, run_paths.run_id)] == ["live"]
    finally:
        live.unlink()
        live.close()


def _tmpfs_total(path: Path) -> int | None:
    with open("/proc/mounts") as f:
        for line in f:
            _dev, mnt, fstype, *_ = line.split()
            if mnt == str(path) and fstype == "tmpfs":
                st = os.statvfs(path)
                return st.f_blocks * st.f_frsize or None
    return None


def test_a_segment_bigger_than_dev_shm_fails_at_create(run_paths: RunPaths) -> None:
    """ENOSPC at start, not SIGBUS later. The request is larger than the whole tmpfs, which
    the kernel refuses up front (shmem_fallocate: "avoid a swapstorm if len is impossible to
    satisfy") without allocating a page. A size between free and total would allocate (and
    then give back) all the free memory first: not something to do on a shared box."""
    total = _tmpfs_total(SHM_DIR)
    if total is None:
        pytest.skip("/dev/shm is not a size-limited tmpfs")
    path = run_paths.seg("huge")
    capacity = 1 << max(0, (total // (8 + RING_DT.itemsize)).bit_length())
    with pytest.raises(SegmentError, match="full"):
        RingWriter(path, RING_DT, capacity)
    assert not path.exists(), "the failed create left its file behind"
    with pytest.raises(SegmentError, match="full"):
        Segment.create(path, SegmentKind.TABLE, HASH, total)
    assert not path.exists()


@pytest.mark.parametrize("mode", [0o660, 0o606, 0o666])
def test_a_segment_others_can_write_is_refused(run_paths: RunPaths, mode: int) -> None:
    """/dev/shm is world-writable: a segment planted under our name (or loosened) must not be
    adopted or attached for writing, whatever its header says."""
    cb = ControlBlock.create(run_paths.seg("control"), run_paths.run_id)
    try:
        os.chmod(run_paths.seg("control"), mode)
        with pytest.raises(SegmentError, match="not ours and 0600"):
            ControlBlock.attach(run_paths.seg("control"))
        with pytest.raises(SegmentError, match="not ours and 0600"):
            ControlBlock.create(run_paths.seg("control"), run_paths.run_id)   # adopt
        ControlBlock.attach(run_paths.seg("control"), readonly=True).close()  # inspector
    finally:
        cb.unlink()
        cb.close()


def test_a_segment_of_another_user_is_refused(run_paths: RunPaths) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to chown")
    cb = ControlBlock.create(run_paths.seg("control"), run_paths.run_id)
    try:
        os.chown(run_paths.seg("control"), 65534, 65534)
        with pytest.raises(SegmentError, match="owned by uid 65534"):
            ControlBlock.attach(run_paths.seg("control"))
    finally:
        cb.unlink()
        cb.close()
