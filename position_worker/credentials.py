"""Exchange credentials: where they come from, and how they never leak.

Live mode reads them from the environment (``NOBLINK_PK``, ``NOBLINK_CLOB_API_KEY``,
``NOBLINK_CLOB_SECRET``, ``NOBLINK_CLOB_PASSPHRASE``, ``NOBLINK_FUNDER``,
``NOBLINK_SIGNATURE_TYPE``) or from a JSON secret file that must be a regular file (not a
symlink, which is not followed), owned by the user running the worker and readable by its owner
only (mode 0600 or stricter). A private key must be 32 bytes of hex (``0x`` optional); a
malformed one is refused without echoing it. Sim mode uses a throwaway key derived from the run id,
and derives its API key from the sim.

The object's repr shows which parts are present, never their values; nothing in this package
logs or writes them to status. Every secret part is registered with the log redactor as the
object is made (core/logs.py ``register_secret``), so even a library that logs it verbatim
prints ``[REDACTED]``.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson

from core.errors import OperatorError
from core.logs import register_secret

ENV = {
    "private_key": "NOBLINK_PK",
    "api_key": "NOBLINK_CLOB_API_KEY",
    "api_secret": "NOBLINK_CLOB_SECRET",
    "api_passphrase": "NOBLINK_CLOB_PASSPHRASE",
    "funder": "NOBLINK_FUNDER",
    "signature_type": "NOBLINK_SIGNATURE_TYPE",
}


class CredentialsError(OperatorError):
    """Missing or unsafe credentials: a human must fix them."""


_PK = re.compile(r"(0x)?[0-9a-fA-F]{64}")


@dataclass(frozen=True, repr=False)
class Credentials:
    private_key: str
    api_key: str = ""
    api_secret: str = ""
    api_passphrase: str = ""
    funder: str = ""
    signature_type: int | None = None

    def __post_init__(self) -> None:
        for value in (self.private_key, self.api_key, self.api_secret, self.api_passphrase):
            register_secret(value)

    def __repr__(self) -> str:
        present = [k for k in ("private_key", "api_key", "api_secret", "api_passphrase")
                   if getattr(self, k)]
        return f"Credentials(<redacted: {', '.join(present) or 'none'}>)"

    __str__ = __repr__

    @property
    def has_api_creds(self) -> bool:
        return bool(self.api_key and self.api_secret and self.api_passphrase)

    @classmethod
    def _from_mapping(cls, m: Mapping[str, object], where: str) -> Credentials:
        pk = str(m.get("private_key") or "").strip()
        if not pk:
            raise CredentialsError(f"no private key in {where}")
        if not _PK.fullmatch(pk):
            # never echo it: a typo'd key is still mostly a key
            raise CredentialsError(f"the private key in {where} is malformed (expected 64 hex "
                                   f"digits, optionally 0x-prefixed; got {len(pk)} characters)")
        st = m.get("signature_type")
        try:
            sig = None if st in (None, "") else int(str(st))
        except ValueError:
            raise CredentialsError(f"signature_type in {where} is not an integer") from None
        return cls(private_key=pk, api_key=str(m.get("api_key") or ""),
                   api_secret=str(m.get("api_secret") or ""),
                   api_passphrase=str(m.get("api_passphrase") or ""),
                   funder=str(m.get("funder") or ""), signature_type=sig)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Credentials:
        return cls._from_mapping({k: environ.get(v, "") for k, v in ENV.items()},
                                 "the environment (" + ENV["private_key"] + ")")

    @classmethod
    def from_file(cls, path: Path) -> Credentials:
        """A JSON object with the ``ENV`` keys (lower-case field names).

        Opened with O_NOFOLLOW and checked on the open descriptor (no race between the check
        and the read): a regular file, owned by us, no group/other permission bits."""
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise CredentialsError(f"secret file {path} does not exist") from None
        except OSError as e:                  # ELOOP: a symlink
            raise CredentialsError(f"secret file {path} cannot be opened safely "
                                   f"({os.strerror(e.errno or 0)}; symlinks are refused)"
                                   ) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CredentialsError(f"secret file {path} is not a regular file")
            if st.st_uid != os.geteuid():
                raise CredentialsError(f"secret file {path} is owned by uid {st.st_uid}, not "
                                       f"by the worker's user ({os.geteuid()})")
            if st.st_mode & 0o077:
                raise CredentialsError(f"secret file {path} is readable by others "
                                       f"(mode {stat.S_IMODE(st.st_mode):o}); chmod 600 it")
            with os.fdopen(os.dup(fd), "rb") as f:
                raw = f.read()
        finally:
            os.close(fd)
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise CredentialsError(f"secret file {path} is not valid JSON") from None
        if not isinstance(doc, dict):
            raise CredentialsError(f"secret file {path} must hold a JSON object")
        return cls._from_mapping(doc, str(path))

    @classmethod
    def sim_throwaway(cls, run_id: str) -> Credentials:
        """A deterministic, worthless key for the simulator (same run id, same account)."""
        pk = hashlib.sha256(f"noblink-sim-key:{run_id}".encode()).hexdigest()
        return cls(private_key="0x" + pk)


def load_live(secret_file: Path | None, environ: Mapping[str, str] = os.environ) -> Credentials:
    """Live credentials: the secret file when given, else the environment."""
    if secret_file is not None:
        return Credentials.from_file(secret_file)
    return Credentials.from_env(environ)
