"""Where a run's resources live: the run directory and the names of its segments.

A run directory holds run.json (run id, supervisor pid, mode), sim.json, the position
journal, status.json, snapshot.json (the strategy state saved at a clean stop) and logs/;
control.json is reserved for the control plane. Segments live in /dev/shm, named
``noblink-<run id>-<name>``. Every process derives every path from (run dir, run id) here,
so no two modules can disagree about a name.

The run directory is private: by default under the user's XDG state directory (not a
predictable name in world-writable /tmp), mode 0700, owned by the user, and
:func:`prepare_run_dir` refuses one that another user could have planted or can write to.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from core.config import default_run_dir, write_json_atomic  # noqa: F401 (re-exported)
from core.errors import OperatorError
from state.segment import PREFIX, SHM_DIR, pid_alive, segment_path

# segment short names -> owner, for the inspector and the leak checks
SEGMENTS: dict[str, str] = {
    "control": "supervisor",
    "snapshot": "supervisor",
    "klines": "feed",
    "ticks": "feed",
    "windows": "feed",
    "markets": "feed",
    "feedstats": "feed",
    "refring": "feed",
    "reference": "feed",
    "positions": "position",
    "posstats": "position",
    "intents0": "position",
    "intents1": "position",
}
KLINE_RING_CAPACITY = 1 << 16
TICK_RING_CAPACITY = 1 << 8     # 21 min of ticks at 1x; a record is ~6.4 KB
REF_RING_CAPACITY = 1 << 14     # reference observations: ~40 min of 7 assets at 1/s
INTENT_RING_CAPACITY = 1 << 8
SNAPSHOT_CAPACITY = 4 << 20

log = logging.getLogger(__name__)


def prepare_run_dir(path: Path) -> Path:
    """Create the run directory (mode 0700, parents as needed) or check an existing one.

    Raises OperatorError for a run dir that is a symlink, is not a directory, is owned by
    another user, or is writable by group or others: any of these lets someone else plant
    or swap the files the bot trusts. An existing dir of ours that is merely readable by
    others (0755 from an older version) is tightened to 0700 with a warning.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
        created = True
    except FileExistsError:
        created = False
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise OperatorError(f"run dir {path} is a symlink; refusing it "
                            f"(point the run dir at the real directory)")
    if not stat.S_ISDIR(st.st_mode):
        raise OperatorError(f"run dir {path} exists and is not a directory")
    # From here on work on an fd that cannot follow a symlink, so the checks and the chmod
    # apply to the very directory checked, even if the path is swapped meanwhile.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise OperatorError(f"run dir {path} cannot be opened as a directory: {e}") from e
    try:
        st = os.fstat(fd)
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid != os.getuid():
            raise OperatorError(f"run dir {path} is owned by uid {st.st_uid}, not by this "
                                f"user (uid {os.getuid()}); refusing it")
        if mode & 0o022:
            raise OperatorError(f"run dir {path} is writable by group or others "
                                f"(mode {mode:04o}); refusing it (chmod 700 it, or remove it)")
        if mode != 0o700:
            if not created and mode & 0o077:
                log.warning("run dir %s had mode %04o; tightening it to 0700", path, mode)
            # mkdir applied the umask: set exactly 0700, whatever the umask was
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path


def new_run_id() -> str:
    return secrets.token_hex(4)


@dataclass(frozen=True)
class RunPaths:
    run_dir: Path
    run_id: str
    shm_dir: Path = field(default=SHM_DIR)

    def seg(self, name: str) -> Path:
        return segment_path(self.run_id, name, self.shm_dir)

    def intents(self, lane: int) -> Path:
        return self.seg(f"intents{lane}")

    @property
    def run_json(self) -> Path:
        return self.run_dir / "run.json"

    @property
    def sim_json(self) -> Path:
        return self.run_dir / "sim.json"

    @property
    def journal(self) -> Path:
        return self.run_dir / "journal.sqlite"

    @property
    def control_json(self) -> Path:
        return self.run_dir / "control.json"

    @property
    def status_json(self) -> Path:
        return self.run_dir / "status.json"

    def write_run_json(self, **extra: object) -> None:
        """Atomically (tmp + rename) record this run for the inspector and the CLI."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        doc = {"run_id": self.run_id, "pid": os.getpid(), "started": time.time(),
               "shm_dir": str(self.shm_dir), **extra}
        write_json_atomic(self.run_json, doc)

    @classmethod
    def load(cls, run_dir: Path) -> tuple[RunPaths, dict]:
        """The run recorded in ``run_dir/run.json``. Raises FileNotFoundError if none."""
        doc = orjson.loads((Path(run_dir) / "run.json").read_bytes())
        return cls(Path(run_dir), doc["run_id"], Path(doc.get("shm_dir", SHM_DIR))), doc

    @staticmethod
    def is_live(doc: dict) -> bool:
        return pid_alive(int(doc.get("pid", 0)))

    def remove_segments(self) -> list[Path]:
        """Unlink every segment (and bell) of this run. Only for a run whose processes are
        gone: the supervisor after its children exited, or `noblink clean` for a dead run."""
        removed = []
        for p in self.shm_dir.glob(f"{PREFIX}{self.run_id}-*"):
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
        return removed
