"""The A/B snapshot region: basics, empty versus corrupt, exact generations, and a writer
killed with SIGKILL mid-write, many times."""

from __future__ import annotations

import os
import random
import signal
import time
import zlib

import numpy as np
import pytest

from core.errors import OperatorError, SegmentError, SnapshotCorruptError, SnapshotEmptyError
from state.run import RunPaths
from state.snapshot import SnapshotRegion
from tests.state.helpers import wait_for

CAPACITY = 4 << 20


def body(gen: int) -> bytes:
    """A payload that encodes its generation everywhere, and in its length."""
    words = (CAPACITY - 7 * 8192) // 8 + (gen % 7) * 1024
    return np.full(words, gen, dtype=np.uint64).tobytes()


def check_body(gen: int, data: bytes) -> None:
    assert len(data) == len(body(gen)), f"generation {gen} has the length of another"
    words = np.frombuffer(data, dtype=np.uint64)
    assert (words == gen).all(), f"generation {gen} holds data of {set(np.unique(words))}"


def flip_payload_byte(region: SnapshotRegion, buffer: str, at: int = 5) -> None:
    """Corrupt one payload byte of buffer A or B through the segment's own mapping."""
    assert region._seg is not None
    off = 256 + "AB".index(buffer) * region.capacity + at
    region._seg.buf[off] ^= 0xFF


def buffer_of(region: SnapshotRegion, generation: int) -> str:
    """Which buffer ("A" or "B") holds ``generation``."""
    (b,) = [b["buffer"] for b in region.status()["buffers"] if b["generation"] == generation]
    return b


def test_empty_region_raises(run_paths: RunPaths) -> None:
    region = SnapshotRegion.create(run_paths.seg("snapshot"), 1024)
    try:
        with pytest.raises(SnapshotEmptyError, match="no generation was ever committed") as exc:
            region.read()
        assert not isinstance(exc.value, SnapshotCorruptError)
        with pytest.raises(SnapshotEmptyError):
            region.read_generation(1)
        assert [b["generation"] for b in region.status()["buffers"]] == [0, 0]
    finally:
        region.unlink()
        region.close()


def test_generations_alternate_between_a_and_b(run_paths: RunPaths) -> None:
    path = run_paths.seg("snapshot")
    region = SnapshotRegion.create(path, 1024)
    reader = SnapshotRegion.attach(path, readonly=True)
    try:
        for gen in range(1, 6):
            assert region.write(bytes([gen]) * (gen * 10), schema_version=3, epoch=gen + 100) \
                == gen
            snap = reader.read()
            assert (snap.generation, snap.schema_version, snap.epoch) == (gen, 3, gen + 100)
            assert snap.data == bytes([gen]) * (gen * 10)
            status = region.status()["buffers"]
            # the newest generation and the one before it, one per buffer
            assert sorted(b["generation"] for b in status) == [gen - 1, gen]
            assert all(b["crc_ok"] for b in status if b["generation"])
        region.write(b"", schema_version=1)
        assert reader.read().data == b""
        with pytest.raises(ValueError, match="exceeds capacity"):
            region.write(bytes(1025), schema_version=1)
        assert reader.read().generation == 6
    finally:
        reader.close()
        region.unlink()
        region.close()
        region.close()                                  # idempotent


def test_a_corrupt_newest_buffer_falls_back_to_the_previous_generation(
        run_paths: RunPaths) -> None:
    path = run_paths.seg("snapshot")
    region = SnapshotRegion.create(path, 1024)
    try:
        region.write(b"old" * 10, schema_version=1)
        region.write(b"new" * 10, schema_version=1)
        newest = max(region.status()["buffers"], key=lambda b: b["generation"])
        off = 256 + "AB".index(newest["buffer"]) * 1024
        with open(path, "r+b") as f:                  # flip one payload byte behind its back
            f.seek(off + 5)
            f.write(b"X")
        snap = region.read()
        assert (snap.generation, snap.data) == (1, b"old" * 10)
    finally:
        region.unlink()
        region.close()


def test_both_buffers_corrupt_is_not_empty(run_paths: RunPaths) -> None:
    """A snapshot that exists but cannot be read must not look like "no snapshot yet": the
    strategy would start empty and its next commit would make the loss permanent."""
    path = run_paths.seg("snapshot")
    region = SnapshotRegion.create(path, 1024)
    try:
        region.write(b"old" * 10, schema_version=1)
        region.write(b"new" * 10, schema_version=1)
        flip_payload_byte(region, "A")
        flip_payload_byte(region, "B")
        with pytest.raises(SnapshotCorruptError) as exc:
            region.read()
        assert isinstance(exc.value, OperatorError)
        assert not isinstance(exc.value, SnapshotEmptyError)
        message = str(exc.value)
        assert str(path) in message
        assert "generation 1" in message and "generation 2" in message
        assert "crc mismatch" in message
        assert [b["crc_ok"] for b in region.status()["buffers"]] == [False, False]
    finally:
        region.unlink()
        region.close()


def test_a_bad_length_with_the_other_buffer_invalid_is_corrupt(run_paths: RunPaths) -> None:
    """One buffer mid-write (generation 0), the other with a length beyond the capacity."""
    region = SnapshotRegion.create(run_paths.seg("snapshot"), 1024)
    try:
        region.write(b"only", schema_version=1)
        region._meta["AB".index(buffer_of(region, 1))]["length"] = 1025
        with pytest.raises(SnapshotCorruptError, match="bad length 1025 > capacity 1024"):
            region.read()
    finally:
        region.unlink()
        region.close()


def test_a_corrupt_older_buffer_leaves_the_newest_readable(run_paths: RunPaths) -> None:
    region = SnapshotRegion.create(run_paths.seg("snapshot"), 1024)
    try:
        region.write(b"old" * 10, schema_version=1)
        region.write(b"new" * 10, schema_version=1)
        flip_payload_byte(region, buffer_of(region, 1))
        snap = region.read()
        assert (snap.generation, snap.data) == (2, b"new" * 10)
    finally:
        region.unlink()
        region.close()


def test_read_generation_returns_exactly_that_generation(run_paths: RunPaths) -> None:
    path = run_paths.seg("snapshot")
    region = SnapshotRegion.create(path, 1024)
    reader = SnapshotRegion.attach(path, readonly=True)
    try:
        for gen in range(1, 4):
            region.write(bytes([gen]) * gen, schema_version=2, epoch=gen)
        newest, previous = reader.read_generation(3), reader.read_generation(2)
        assert (newest.generation, newest.data, newest.epoch) == (3, b"\x03" * 3, 3)
        assert (previous.generation, previous.data, previous.epoch) == (2, b"\x02" * 2, 2)
        with pytest.raises(SnapshotEmptyError, match="generation 1 is not held") as exc:
            reader.read_generation(1)                   # overwritten by generation 3
        assert not isinstance(exc.value, SnapshotCorruptError)
        with pytest.raises(SnapshotEmptyError):
            reader.read_generation(4)                   # not written yet
        with pytest.raises(ValueError):
            reader.read_generation(0)
        flip_payload_byte(region, buffer_of(region, 2), at=1)
        with pytest.raises(SnapshotCorruptError, match=r"generation 2 does not validate.*crc"):
            reader.read_generation(2)
        assert reader.read_generation(3).data == b"\x03" * 3
    finally:
        reader.close()
        region.unlink()
        region.close()


def test_adopting_keeps_the_snapshot_and_attach_refuses_unlink(run_paths: RunPaths) -> None:
    path = run_paths.seg("snapshot")
    region = SnapshotRegion.create(path, 4096)
    region.write(b"state", schema_version=2, epoch=7)
    region.close()
    again = SnapshotRegion.create(path, 4096)             # the supervisor restarted
    try:
        assert again.adopted
        snap = again.read()
        assert (snap.generation, snap.data, snap.epoch) == (1, b"state", 7)
        other = SnapshotRegion.attach(path)
        with pytest.raises(SegmentError, match="owner"):
            other.unlink()
        other.close()
        assert path.exists()
    finally:
        again.unlink()
        again.close()


def _writer_until_killed(path: str) -> None:
    """The child: write generations as fast as it can; it never returns (SIGKILL ends it)."""
    try:
        region = SnapshotRegion.attach(path)
        try:
            gen = region.read().generation
        except SnapshotEmptyError:
            gen = 0
        while True:
            gen += 1
            if region.write(body(gen), schema_version=1, epoch=gen) != gen:
                os._exit(3)                            # the generation numbering broke
    except BaseException:
        os._exit(4)
    os._exit(5)


def test_a_writer_killed_mid_write_never_costs_a_complete_generation(
        run_paths: RunPaths) -> None:
    """Fork a writer of 4 MiB generations, let it run, SIGKILL it at a random moment, and
    read: always a complete generation (CRC ok, every word equal to its generation, the
    length of that generation), never older than one seen complete before. Forty times;
    most kills land inside a write (one buffer invalid at that moment)."""
    path = run_paths.seg("snapshot")
    region = SnapshotRegion.create(path, CAPACITY)
    rng = random.Random(os.getpid())
    last_seen = 0
    mid_write = 0
    try:
        for _ in range(40):
            start = last_seen
            pid = os.fork()
            if pid == 0:                               # pragma: no cover - child
                _writer_until_killed(str(path))

            def advanced(start: int = start) -> bool:
                nonlocal last_seen
                try:
                    snap = region.read()               # concurrent with the writer
                except SnapshotEmptyError:
                    return False
                assert snap.generation >= last_seen
                check_body(snap.generation, snap.data)
                last_seen = snap.generation
                return snap.generation >= start + 2

            try:
                assert wait_for(advanced, timeout=20.0), "the writer made no progress"
                time.sleep(rng.uniform(0.0, 0.004))    # a random point in the write cycle
            finally:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
            assert os.WIFSIGNALED(status), f"writer exited on its own: {status}"
            buffers = region.status()["buffers"]
            mid_write += any(b["generation"] == 0 or not b["crc_ok"] for b in buffers)
            snap = region.read()
            assert snap.generation >= last_seen
            assert zlib.crc32(snap.data) == zlib.crc32(body(snap.generation))
            check_body(snap.generation, snap.data)
            last_seen = snap.generation
        assert mid_write >= 5, f"only {mid_write}/40 kills landed inside a write"
    finally:
        region.unlink()
        region.close()
