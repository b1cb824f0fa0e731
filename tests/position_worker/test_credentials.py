from __future__ import annotations

import logging
import os
from pathlib import Path

import orjson
import pytest

from core.errors import OperatorError
from position_worker.credentials import Credentials, CredentialsError, load_live

SECRET = "0x" + "ab" * 32


def test_repr_never_shows_secrets(caplog: pytest.LogCaptureFixture) -> None:
    c = Credentials(private_key=SECRET, api_key="KEY123", api_secret="SEC456",
                    api_passphrase="PASS789")
    for text in (repr(c), str(c), f"{c}", repr([c])):
        for secret in (SECRET, "KEY123", "SEC456", "PASS789"):
            assert secret not in text
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("creds: %s %r", c, c)
    assert SECRET not in caplog.text and "redacted" in caplog.text


def test_from_env() -> None:
    env = {"NOBLINK_PK": SECRET, "NOBLINK_CLOB_API_KEY": "k", "NOBLINK_CLOB_SECRET": "s",
           "NOBLINK_CLOB_PASSPHRASE": "p", "NOBLINK_SIGNATURE_TYPE": "1"}
    c = Credentials.from_env(env)
    assert c.private_key == SECRET and c.has_api_creds and c.signature_type == 1
    with pytest.raises(CredentialsError):
        Credentials.from_env({})


def test_secret_file_must_be_private(tmp_path: Path) -> None:
    f = tmp_path / "secret.json"
    f.write_bytes(orjson.dumps({"private_key": SECRET, "funder": "0xf"}))
    os.chmod(f, 0o644)
    with pytest.raises(CredentialsError, match="chmod 600"):
        load_live(f)
    os.chmod(f, 0o600)
    c = load_live(f)
    assert c.private_key == SECRET and c.funder == "0xf" and not c.has_api_creds
    with pytest.raises(CredentialsError):
        load_live(tmp_path / "missing.json")


def test_sim_key_is_deterministic_per_run() -> None:
    a, b = Credentials.sim_throwaway("r1"), Credentials.sim_throwaway("r1")
    assert a.private_key == b.private_key != Credentials.sim_throwaway("r2").private_key
    from eth_account import Account
    assert Account.from_key(a.private_key).address.startswith("0x")


def test_secret_file_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_bytes(orjson.dumps({"private_key": SECRET}))
    os.chmod(real, 0o600)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    with pytest.raises(CredentialsError, match="symlink"):
        load_live(link)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file away")
def test_secret_file_must_be_ours(tmp_path: Path) -> None:
    f = tmp_path / "secret.json"
    f.write_bytes(orjson.dumps({"private_key": SECRET}))
    os.chmod(f, 0o600)
    os.chown(f, 65534, 65534)
    with pytest.raises(CredentialsError, match="owned by uid 65534"):
        load_live(f)


@pytest.mark.parametrize("bad", ["0x" + "ab" * 31, "0x" + "zz" * 32, "ab" * 33, "not a key"])
def test_malformed_private_key_is_refused_without_echo(bad: str) -> None:
    with pytest.raises(CredentialsError) as e:
        Credentials.from_env({"NOBLINK_PK": bad})
    assert bad not in str(e.value) and "malformed" in str(e.value)
    assert issubclass(CredentialsError, OperatorError)         # exit 3: needs a human
