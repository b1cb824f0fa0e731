"""The run directory is private: where it defaults to, how it is created and checked, and
that the files written into it are 0600 whatever the umask."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from core.config import write_json_atomic
from core.errors import OperatorError
from core.proc import private_umask
from state.run import default_run_dir, prepare_run_dir


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The umask of a typical login shell, restored afterwards (the umask is process-wide)."""
    old = os.umask(0o022)
    yield
    os.umask(old)


# --- default_run_dir -----------------------------------------------------------------------

@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake HOME, with neither NOBLINK_RUN_DIR nor XDG_STATE_HOME set."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NOBLINK_RUN_DIR", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    return tmp_path / "home"


def test_default_run_dir_is_under_the_home_state_dir(home: Path) -> None:
    assert default_run_dir() == home / ".local" / "state" / "noblink"


def test_default_run_dir_follows_xdg_state_home(home: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "/srv/state")
    assert default_run_dir() == Path("/srv/state/noblink")


@pytest.mark.parametrize("xdg", ["", "relative/state"])
def test_an_empty_or_relative_xdg_state_home_is_ignored(
        home: Path, monkeypatch: pytest.MonkeyPatch, xdg: str) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", xdg)
    assert default_run_dir() == home / ".local" / "state" / "noblink"


@pytest.mark.parametrize("xdg", [None, "/srv/state"])
def test_noblink_run_dir_wins(home: Path, monkeypatch: pytest.MonkeyPatch,
                              xdg: str | None) -> None:
    if xdg is not None:
        monkeypatch.setenv("XDG_STATE_HOME", xdg)
    monkeypatch.setenv("NOBLINK_RUN_DIR", "/run/noblink-test")
    assert default_run_dir() == Path("/run/noblink-test")


def test_an_empty_noblink_run_dir_is_ignored(home: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOBLINK_RUN_DIR", "")
    assert default_run_dir() == home / ".local" / "state" / "noblink"


# --- prepare_run_dir -----------------------------------------------------------------------

def test_prepare_creates_the_dir_and_its_parents_0700(tmp_path: Path, umask_022: None) -> None:
    run_dir = tmp_path / "state" / "deep" / "noblink"
    assert prepare_run_dir(run_dir) == run_dir
    assert run_dir.is_dir()
    assert mode_of(run_dir) == 0o700
    assert prepare_run_dir(run_dir) == run_dir          # a second start accepts it
    assert mode_of(run_dir) == 0o700


def test_prepare_refuses_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "noblink"
    link.symlink_to(real)
    with pytest.raises(OperatorError, match="symlink") as exc:
        prepare_run_dir(link)
    assert str(link) in str(exc.value)


def test_prepare_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    link = tmp_path / "noblink"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OperatorError, match="symlink"):
        prepare_run_dir(link)
    assert not (tmp_path / "nowhere").exists()


def test_prepare_refuses_a_file(tmp_path: Path) -> None:
    path = tmp_path / "noblink"
    path.write_text("not a dir")
    with pytest.raises(OperatorError, match="not a directory") as exc:
        prepare_run_dir(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("mode", [0o770, 0o702, 0o777, 0o720])
def test_prepare_refuses_a_dir_writable_by_group_or_others(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "noblink"
    path.mkdir()
    path.chmod(mode)
    with pytest.raises(OperatorError, match="writable by group or others") as exc:
        prepare_run_dir(path)
    assert str(path) in str(exc.value)
    assert mode_of(path) == mode                        # refused, not silently "fixed"


def test_prepare_tightens_an_old_0755_dir_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "noblink"
    path.mkdir()
    path.chmod(0o755)
    with caplog.at_level(logging.WARNING, logger="state.run"):
        assert prepare_run_dir(path) == path
    assert mode_of(path) == 0o700
    assert [r.name for r in caplog.records] == ["state.run"]
    assert "0755" in caplog.text and str(path) in caplog.text


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to chown a dir to another user")
def test_prepare_refuses_a_dir_owned_by_another_user(tmp_path: Path) -> None:
    path = tmp_path / "noblink"
    path.mkdir(mode=0o700)
    os.chown(path, 65534, 65534)
    with pytest.raises(OperatorError, match="owned by uid 65534") as exc:
        prepare_run_dir(path)
    assert str(path) in str(exc.value)


# --- files in the run dir ------------------------------------------------------------------

def test_write_json_atomic_makes_0600_files_and_leaves_no_tmp(tmp_path: Path,
                                                              umask_022: None) -> None:
    path = tmp_path / "status.json"
    path.write_text("{}")
    path.chmod(0o644)                                   # written by an older version
    stale = tmp_path / f".status.json.{os.getpid()}.tmp"
    stale.write_text("half a file")                    # left by a dead process with our pid
    write_json_atomic(path, {"a": 1})
    assert orjson.loads(path.read_bytes()) == {"a": 1}
    assert mode_of(path) == 0o600
    write_json_atomic(tmp_path / "new.json", [1, 2])
    assert mode_of(tmp_path / "new.json") == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.json", "status.json"]


def test_private_umask_sets_077() -> None:
    old = os.umask(0o022)
    try:
        private_umask()
        assert os.umask(0o022) == 0o077
    finally:
        os.umask(old)
