"""Where a run's resources live: the run directory and the names of its segments.

A run directory holds run.json (run id, supervisor pid, mode), sim.json, the position
journal, status.json, snapshot.json (the strategy state saved at a clean stop) and logs/;
control.json is reserved for the control plane. Segments live in /dev/shm, named
``noblink-<run id>-<name>``. Every process derives every path from (run dir, run id) here,
so no two modules can disagree about a name.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from core.config import write_json_atomic
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
    "positions": "position",
    "posstats": "position",
    "intents0": "position",
    "intents1": "position",
}
KLINE_RING_CAPACITY = 1 << 16
TICK_RING_CAPACITY = 1 << 10
INTENT_RING_CAPACITY = 1 << 8
SNAPSHOT_CAPACITY = 4 << 20


def default_run_dir() -> Path:
    env = os.environ.get("NOBLINK_RUN_DIR")
    return Path(env) if env else Path(f"/tmp/noblink-{os.getuid()}")


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
