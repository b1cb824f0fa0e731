"""One class for one OS resource: a named POSIX shared-memory file, mapped with mmap.

Why not ``multiprocessing.shared_memory``: on Python 3.11 every process that attaches a
``SharedMemory`` registers it with its resource tracker, and the tracker unlinks the segment
when that process exits (bpo-39959 / gh-82300; ``track=False`` only arrived in 3.13). A memory
inspector run would destroy live state. So noblink opens ``/dev/shm`` files itself with
``os.open`` + ``mmap`` and no tracker ever hears of them.

Rules:
- Files are ``/dev/shm/noblink-<run id>-<name>``, mode 0600. A segment is built under a
  temporary name and linked into place once its header and metadata are written, so a
  name that exists is always complete (``link`` refuses an existing name, like O_EXCL).
- The creator allocates every page up front (``posix_fallocate``), so a full /dev/shm fails
  at start with ENOSPC instead of later with SIGBUS on first touch.
- Exactly one owner unlinks. ``attach`` never unlinks, and ``close`` never unlinks.
- A restarted owner *adopts* its old segment (same header) instead of creating a new one:
  a crash is an unplanned reload, and the state must survive it.
- ``close()`` is idempotent. Structures built on a segment drop their numpy views first,
  because an mmap with live exports cannot be closed.

The 64-byte header is described in state/layout.py.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from core.errors import (
    SegmentError,
    SegmentExistsError,
    SegmentMismatchError,
    SegmentMissingError,
)
from state.layout import HEADER_DT, HEADER_SIZE, LAYOUT_VERSION, MAGIC, SegmentKind
from state.strings import decode_nul

log = logging.getLogger(__name__)
SHM_DIR = Path("/dev/shm")
PREFIX = "noblink-"
# A segment under construction: "<segment name>.building-<pid>-<token>" (see Segment.create).
BUILDING = ".building-"


def segment_path(run_id: str, name: str, shm_dir: Path = SHM_DIR) -> Path:
    return Path(shm_dir) / f"{PREFIX}{run_id}-{name}"


def _sweep_builds(path: Path) -> None:
    """Remove what a creator killed mid-build left next to ``path`` (its pid is dead)."""
    for p in path.parent.glob(f"{path.name}{BUILDING}*"):
        pid = p.name[len(path.name) + len(BUILDING):].partition("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


@dataclass(frozen=True)
class Header:
    magic: bytes
    layout_version: int
    kind: int
    layout_hash: int
    size: int
    creator_pid: int
    created_ns: int
    name: str

    @classmethod
    def parse(cls, raw: bytes) -> Header:
        h = np.frombuffer(raw[:HEADER_SIZE], dtype=HEADER_DT)[0]
        return cls(magic=bytes(h["magic"]), layout_version=int(h["layout_version"]),
                   kind=int(h["kind"]), layout_hash=int(h["layout_hash"]), size=int(h["size"]),
                   creator_pid=int(h["creator_pid"]), created_ns=int(h["created_ns"]),
                   name=decode_nul(h["name"]))

    def as_dict(self) -> dict:
        known = self.kind in SegmentKind._value2member_map_
        kind = SegmentKind(self.kind).name if known else self.kind
        return {"layout_version": self.layout_version, "kind": kind,
                "layout_hash": f"{self.layout_hash:016x}", "size": self.size,
                "creator_pid": self.creator_pid, "created_ns": self.created_ns, "name": self.name}


class Segment:
    """A mapped shared-memory file. Create it (owner) or attach to it (everyone else)."""

    # Class-level defaults make close() safe even when __init__ failed half-way.
    _fd: int = -1
    _mmap: mmap.mmap | None = None
    _buf: memoryview | None = None

    def __init__(self, path: Path, fd: int, size: int, *, readonly: bool, owner: bool) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.owner = owner
        self.size = size
        self._fd = fd
        prot = mmap.PROT_READ if readonly else mmap.PROT_READ | mmap.PROT_WRITE
        self._mmap = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=prot)
        self._buf = memoryview(self._mmap)

    # -- lifecycle ----------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, kind: SegmentKind, lhash: int, payload_size: int,
               *, name: str = "", init: Callable[[memoryview], None] | None = None) -> Segment:
        """Create a new segment of ``HEADER_SIZE + payload_size`` bytes and become its owner.

        The segment appears under its name only when it is complete: it is built under a
        temporary name (pages allocated, header written, then ``init(buf)`` writes the
        payload's own metadata) and hard-linked into place. A reader that looks at the
        name between the two sees nothing rather than an all-zero header or a ring of
        capacity 0. ``link`` fails on an existing name, so O_EXCL's guarantee is kept.

        Raises SegmentExistsError when the name exists, SegmentError on ENOSPC.
        """
        path = Path(path)
        _sweep_builds(path)          # also when the name exists: a build that lost to it
        if path.exists() or path.is_symlink():    # cheap early answer; link() decides
            raise SegmentExistsError(f"segment {path} already exists")
        size = HEADER_SIZE + payload_size
        tmp = path.with_name(f"{path.name}{BUILDING}{os.getpid()}-{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        seg: Segment | None = None
        try:
            os.fchmod(fd, 0o600)   # the umask can only remove bits; make the mode exact
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise SegmentError(
                        f"cannot allocate {size} bytes for {path}: /dev/shm is full") from e
                raise
            seg = cls(path, fd, size, readonly=False, owner=True)
            seg._write_header(kind, lhash, name)
            if init is not None:
                init(seg.buf)
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise SegmentExistsError(f"segment {path} already exists") from None
        except BaseException:
            if seg is not None:
                seg.close()
            else:
                os.close(fd)
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return seg

    @classmethod
    def attach(cls, path: Path, kind: SegmentKind, lhash: int, *, readonly: bool = False,
               expected_size: int | None = None) -> Segment:
        """Map an existing segment after checking its header. Never unlinks."""
        path = Path(path)
        try:
            fd = os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise SegmentMissingError(f"no segment {path}") from None
        except OSError as e:            # ELOOP: a symlink where a segment should be
            raise SegmentError(f"{path}: {e.strerror or e}") from e
        try:
            st = os.fstat(fd)
            if not readonly and (st.st_uid != os.getuid() or st.st_mode & 0o077):
                # /dev/shm is world-writable: another user could plant a segment under our
                # name before we create it, with a header copied from public code, and feed
                # us candles or intents. Ours are ours and 0600; anything else is refused.
                raise SegmentError(f"{path} is owned by uid {st.st_uid} with mode "
                                   f"{st.st_mode & 0o777:o}, not ours and 0600: refusing it")
            size = st.st_size
            if size < HEADER_SIZE:
                raise SegmentMismatchError(f"{path}: {size} bytes is smaller than a header")
            seg = cls(path, fd, size, readonly=readonly, owner=False)
        except BaseException:
            os.close(fd)
            raise
        try:
            seg.check(kind, lhash, expected_size)
        except BaseException:
            seg.close()
            raise
        return seg

    @classmethod
    def create_or_adopt(cls, path: Path, kind: SegmentKind, lhash: int, payload_size: int,
                        *, name: str = "", init: Callable[[memoryview], None] | None = None,
                        ) -> tuple[Segment, bool]:
        """Create the segment, or adopt the one a previous incarnation of this owner left.

        Returns (segment, adopted). Adopting checks the header like ``attach`` and then takes
        ownership (the header's creator_pid becomes this process); ``init`` runs only on a
        segment this call created.
        """
        try:
            return cls.create(path, kind, lhash, payload_size, name=name, init=init), False
        except SegmentExistsError:
            seg = cls.attach(path, kind, lhash, expected_size=HEADER_SIZE + payload_size)
            seg.owner = True
            seg._header_view()["creator_pid"] = os.getpid()
            return seg, True

    def close(self) -> None:
        """Unmap and close the file. Idempotent. Does not unlink."""
        if self._buf is not None:
            try:
                self._buf.release()
            except BufferError:
                # A numpy view made from this memoryview is still alive (a caller kept a row).
                # The memoryview goes with its last export; never fail close() over it.
                log.warning("%s: buffer exports still alive at close", self.path)
            self._buf = None
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                # Someone still holds a numpy view. Closing would pull memory out from under
                # it; instead drop our reference and let the mapping go with the last view.
                log.warning("%s: views still alive at close; unmapping when they die",
                            self.path)
            self._mmap = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def unlink(self) -> None:
        """Remove the file. Only the owner may; every mapping stays valid until closed."""
        if not self.owner:
            raise SegmentError(f"{self.path}: only the owner may unlink a segment")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- header -------------------------------------------------------------------------

    @property
    def buf(self) -> memoryview:
        if self._buf is None:
            raise SegmentError(f"{self.path} is closed")
        return self._buf

    @property
    def closed(self) -> bool:
        return self._buf is None

    def _header_view(self) -> np.ndarray:
        return np.frombuffer(self.buf, dtype=HEADER_DT, count=1)[0]

    def _write_header(self, kind: SegmentKind, lhash: int, name: str) -> None:
        h = np.zeros((), dtype=HEADER_DT)
        h["magic"] = MAGIC
        h["layout_version"] = LAYOUT_VERSION
        h["kind"] = int(kind)
        h["layout_hash"] = lhash
        h["size"] = self.size
        h["creator_pid"] = os.getpid()
        h["created_ns"] = time.time_ns()
        h["name"] = name.encode()[:16]
        self.buf[:HEADER_SIZE] = h.tobytes()

    def header(self) -> Header:
        return Header.parse(bytes(self.buf[:HEADER_SIZE]))

    def check(self, kind: SegmentKind, lhash: int, expected_size: int | None = None) -> None:
        """Refuse a segment whose header differs from what this code expects, naming both."""
        h = self.header()
        problems = []
        if h.magic != MAGIC:
            problems.append(f"magic {h.magic!r} != {MAGIC!r}")
        if h.layout_version != LAYOUT_VERSION:
            problems.append(f"layout version {h.layout_version} (segment) != "
                            f"{LAYOUT_VERSION} (this code)")
        if h.kind != int(kind):
            problems.append(f"kind {h.kind} (segment) != {int(kind)} ({kind.name}, this code)")
        if h.layout_hash != lhash:
            problems.append(f"layout hash {h.layout_hash:016x} (segment) != "
                            f"{lhash:016x} (this code)")
            # the hash covers the universe too: say so, or the operator hunts a code change
            problems.append("the layout hash covers the code's layouts and the universe "
                            "(noblink.toml): a changed universe is a new layout")
        if h.size != self.size:
            problems.append(f"header size {h.size} != file size {self.size}")
        if expected_size is not None and self.size != expected_size:
            problems.append(f"size {self.size} (segment) != {expected_size} (this code)")
        if problems:
            raise SegmentMismatchError(f"refusing {self.path}: " + "; ".join(problems))


@dataclass(frozen=True)
class SegmentInfo:
    path: Path
    run_id: str
    name: str
    header: Header | None
    error: str | None
    creator_alive: bool


def scan_segments(shm_dir: Path = SHM_DIR, run_id: str | None = None) -> list[SegmentInfo]:
    """List noblink segments (read-only: reads headers with plain file reads, no mmap)."""
    out = []
    for p in sorted(Path(shm_dir).glob(f"{PREFIX}*")):
        try:
            if not stat.S_ISREG(p.stat().st_mode):
                continue            # a reader's bell (FIFO): opening it would block
        except FileNotFoundError:
            continue
        if BUILDING in p.name:
            continue                # not a segment yet (or a dead creator's leftover)
        rest = p.name[len(PREFIX):]
        rid, _, name = rest.partition("-")
        if run_id is not None and rid != run_id:
            continue
        header = None
        error = None
        try:
            with open(p, "rb") as f:
                raw = f.read(HEADER_SIZE)
            if len(raw) < HEADER_SIZE:
                error = "shorter than a header"
            else:
                header = Header.parse(raw)
                if header.magic != MAGIC:
                    error = f"bad magic {header.magic!r}"
        except OSError as e:
            error = str(e)
        alive = header is not None and pid_alive(header.creator_pid)
        out.append(SegmentInfo(p, rid, name, header, error, alive))
    return out
