"""Deploy history: every strategy file that was ever deployed, by content hash.

A reload never runs the operator's file in place: it hashes it, copies it to
``<run dir>/deploys/<sha256[:16]>.py`` (0600) and starts the worker on the copy, so the code
that runs is exactly the code that was hashed (an editor saving mid-reload cannot change it),
and any earlier version can be redeployed by hash (``noblink reload --to SHA``) or by
position (``--previous``). ``deploys.jsonl`` lists the versions that became active, in order.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from core.errors import InputError

log = logging.getLogger("supervisor.deploys")
SHA_PREFIX = 16
MAX_STRATEGY_BYTES = 1 << 20


@dataclass(frozen=True)
class Deployment:
    source: str                   # the operator's path (what they edit)
    sha256: str
    path: Path                    # the immutable copy the worker loads
    params: dict = field(default_factory=dict)

    @property
    def short(self) -> str:
        return self.sha256[:12]

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "sha256": self.sha256, "path": str(self.path),
                "params": self.params}


class DeployStore:
    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir) / "deploys"
        self.history_path = Path(run_dir) / "deploys.jsonl"

    def stage(self, source: Path, params: dict) -> Deployment:
        """Hash ``source`` and keep an immutable copy of it. InputError when unreadable."""
        source = Path(source)
        try:
            # non-blocking and size-checked: a FIFO or /dev/zero named as the strategy must
            # not hang or exhaust the supervisor
            fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise InputError(f"strategy file {source} is not a regular file")
                if st.st_size > MAX_STRATEGY_BYTES:
                    raise InputError(f"strategy file {source} is {st.st_size} bytes, over "
                                     f"the {MAX_STRATEGY_BYTES} limit")
                data = f.read(MAX_STRATEGY_BYTES + 1)
        except OSError as e:
            raise InputError(f"cannot read strategy file {source}: {e.strerror or e}") from e
        sha = hashlib.sha256(data).hexdigest()
        self.dir.mkdir(mode=0o700, exist_ok=True)
        dest = self.dir / f"{sha[:SHA_PREFIX]}.py"
        if not dest.exists():
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, dest)
        return Deployment(str(source), sha, dest, dict(params))

    def record_active(self, d: Deployment, reload_id: str) -> None:
        with open(self.history_path, "ab") as f:
            f.write(orjson.dumps({**d.to_dict(), "reload": reload_id, "at": time.time()})
                    + b"\n")

    def history(self) -> list[dict[str, Any]]:
        try:
            lines = self.history_path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for ln in lines:
            try:
                out.append(orjson.loads(ln))
            except orjson.JSONDecodeError:
                log.warning("skipping a corrupt line of %s", self.history_path)
        return out

    def previous(self, current_sha: str, current_params: dict | None = None) -> Deployment:
        """The newest deployment that became active before the current one and differs
        from it, in code or (when ``current_params`` is given) in params."""
        for doc in reversed(self.history()):
            same_code = doc.get("sha256") == current_sha
            if not same_code or (current_params is not None
                                 and doc.get("params", {}) != current_params):
                return self._from_doc(doc)
        raise InputError("no previous deployment to go back to")

    def by_sha(self, prefix: str, params: dict | None = None) -> Deployment:
        prefix = prefix.lower()
        matches = sorted({p for p in self.dir.glob("*.py") if p.stem.startswith(prefix[:16])
                          } if self.dir.exists() else set())
        found = []
        for p in matches:
            sha = hashlib.sha256(p.read_bytes()).hexdigest()
            if sha.startswith(prefix):
                found.append((p, sha))
        if not found:
            raise InputError(f"no deployed strategy has a sha256 starting with {prefix!r}")
        if len(found) > 1:
            raise InputError(f"sha256 prefix {prefix!r} is ambiguous ({len(found)} versions)")
        p, sha = found[0]
        source = next((d.get("source", str(p)) for d in reversed(self.history())
                       if d.get("sha256") == sha), str(p))
        last = next((d.get("params", {}) for d in reversed(self.history())
                     if d.get("sha256") == sha), {})
        return Deployment(source, sha, p, dict(last if params is None else params))

    def _from_doc(self, doc: dict) -> Deployment:
        path = Path(doc["path"])
        if not path.exists():
            raise InputError(f"deployed copy {path} is gone")
        return Deployment(doc.get("source", str(path)), doc["sha256"], path,
                          dict(doc.get("params", {})))
