"""Property tests: the ring against a plain Python model, in one process.

Random capacities (powers of two), random publish / publish_many (including batches larger
than the ring) / poll with random max_records, readers joining at random times from the
"oldest" or "newest" end, and the producer re-opening (adopting) its ring mid-way. After
every step the ring must agree with the model: same records in the same order, same lost
counts, same head and lag.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from state.ring import RingReader, RingWriter
from state.run import RunPaths

# 13 bytes: the record size is not a multiple of 8, so slots carry padding.
REC_DT = np.dtype([("seq", "<u8"), ("x", "<u4"), ("b", "u1")])
_names = itertools.count()


def records(first: int, n: int) -> np.ndarray:
    seqs = np.arange(first, first + n, dtype=np.uint64)
    out = np.zeros(n, dtype=REC_DT)
    out["seq"] = seqs
    out["x"] = (seqs * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)
    out["b"] = seqs & np.uint64(0xFF)
    return out


@dataclass
class ModelReader:
    cursor: int
    lost_total: int = 0


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, list[tuple]]:
    cap = 1 << draw(st.integers(0, 6))
    op = st.one_of(
        st.tuples(st.just("publish"), st.integers(1, 3)),
        st.tuples(st.just("many"), st.integers(0, 3 * cap + 1)),
        st.tuples(st.just("poll"), st.integers(0, 3), st.integers(1, 2 * cap + 1)),
        st.tuples(st.just("join"), st.sampled_from(["oldest", "newest"]), st.booleans()),
        st.tuples(st.just("adopt")),
    )
    return cap, draw(st.lists(op, min_size=1, max_size=60))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=scenarios())
def test_ring_matches_model(run_paths: RunPaths, scenario: tuple[int, list[tuple]]) -> None:
    cap, ops = scenario
    path = run_paths.seg(f"model{next(_names)}")
    writer = RingWriter(path, REC_DT, cap)
    readers: list[tuple[RingReader, ModelReader]] = []
    head = 0
    try:
        for op in ops:
            kind = op[0]
            if kind == "publish":
                for _ in range(op[1]):
                    assert writer.publish(records(head, 1)[0]) == head
                    head += 1
            elif kind == "many":
                n = op[1]
                assert writer.publish_many(records(head, n)) == head + n
                head += n
            elif kind == "join" and len(readers) < 4:
                start, readonly = op[1], op[2]
                r = RingReader(path, REC_DT, start=start, readonly=readonly, name="model")
                cursor = head if start == "newest" else max(0, head - cap)
                readers.append((r, ModelReader(cursor)))
                assert r.cursor == cursor
            elif kind == "poll" and readers:
                r, m = readers[op[1] % len(readers)]
                max_records = op[2]
                batch = r.poll(max_records)
                oldest = head - cap
                lost = max(0, oldest - m.cursor)
                m.cursor += lost
                m.lost_total += lost
                n = min(head - m.cursor, max_records)
                assert batch.lost == lost, (batch.lost, lost)
                assert batch.first_seq == m.cursor
                assert len(batch) == n
                np.testing.assert_array_equal(batch.records, records(m.cursor, n))
                m.cursor += n
                assert r.cursor == m.cursor
                assert r.lost_total == m.lost_total
            elif kind == "adopt":                      # producer restart: same ring, same head
                writer.close()
                writer = RingWriter(path, REC_DT, cap)
                assert writer.adopted
            assert writer.head() == head
            for r, m in readers:
                assert r.lag() == head - m.cursor
    finally:
        for r, _ in readers:
            r.close()
        writer.unlink()
        writer.close()


def test_oldest_reader_gets_every_record_still_in_the_ring(run_paths: RunPaths) -> None:
    """A full ring of capacity c holds exactly the last c records, and "oldest" gets them all
    (a capacity-1 ring holds one)."""
    for cap in (1, 2, 8):
        path = run_paths.seg(f"full{cap}")
        w = RingWriter(path, REC_DT, cap)
        try:
            w.publish_many(records(0, 3 * cap + 1))
            r = RingReader(path, REC_DT, start="oldest")
            b = r.poll()
            assert (b.first_seq, b.lost, len(b)) == (2 * cap + 1, 0, cap)
            np.testing.assert_array_equal(b.records, records(2 * cap + 1, cap))
            r.close()
        finally:
            w.unlink()
            w.close()


def test_publish_refuses_a_record_of_the_wrong_size(run_paths: RunPaths) -> None:
    path = run_paths.seg("size")
    w = RingWriter(path, REC_DT, 4)
    try:
        r = RingReader(path, REC_DT, start="oldest")
        try:
            w.publish(records(0, 1)[0])
            for bad in (b"short", bytes(REC_DT.itemsize + 1)):
                try:
                    w.publish(bad)
                except ValueError:
                    pass
                else:
                    raise AssertionError("a wrong-size record was published")
            assert w.head() == 1
            w.publish(records(1, 1)[0])            # the ring is unharmed by the refusals
            b = r.poll()
            assert (b.lost, len(b)) == (0, 2)
            np.testing.assert_array_equal(b.records, records(0, 2))
        finally:
            r.close()
    finally:
        w.unlink()
        w.close()
