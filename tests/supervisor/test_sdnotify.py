"""sd_notify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.sdnotify import Notifier


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket, as systemd's notify socket is; yields (socket, path)."""
    path = str(tmp_path / "notify")
    assert len(path) < 100, "AF_UNIX paths are limited to 108 bytes"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2.0)
    yield s, path
    s.close()


def received(s: socket.socket) -> list[str]:
    """Every datagram waiting on ``s``, decoded."""
    out = []
    s.setblocking(False)
    try:
        while True:
            out.append(s.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        s.settimeout(2.0)
    return out


def test_messages_arrive_exactly(manager) -> None:
    s, path = manager
    clock = FakeClock(1234.5678919)
    n = Notifier({"NOTIFY_SOCKET": path}, monotonic=clock)
    assert n.enabled
    assert n.ready()
    assert s.recv(4096) == b"READY=1"
    assert n.reloading()
    assert s.recv(4096) == b"RELOADING=1\nMONOTONIC_USEC=1234567891"
    assert n.status("tick 12 | epoch 2 7cd9a1b2 | slots 16/16")
    assert s.recv(4096) == b"STATUS=tick 12 | epoch 2 7cd9a1b2 | slots 16/16"
    assert n.stopping()
    assert s.recv(4096) == b"STOPPING=1"
    assert n.ready(status="reload ok")
    assert s.recv(4096) == b"READY=1\nSTATUS=reload ok"
    n.close()
    n.close()                                        # idempotent


def test_status_is_one_line_and_not_repeated(manager) -> None:
    s, path = manager
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.status("reload rolled back:\nTraceback ...\n  ValueError: x")
    assert s.recv(4096) == b"STATUS=reload rolled back: Traceback ... ValueError: x"
    assert n.status("reload rolled back: Traceback ... ValueError: x")    # unchanged
    assert n.status("x" * 5000)
    assert received(s) == ["STATUS=" + "x" * 512]
    n.close()


def test_abstract_namespace(tmp_path: Path) -> None:
    name = f"noblink-test-{os.getpid()}-{time.monotonic_ns()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(2.0)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert s.recv(4096) == b"READY=1"
        n.close()
    finally:
        s.close()
    assert not list(tmp_path.iterdir())             # nothing on the file system


def test_watchdog_rate_limited_to_a_quarter_of_watchdog_sec(manager) -> None:
    s, path = manager
    clock = FakeClock()
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000",
                  "WATCHDOG_PID": str(os.getpid())}, monotonic=clock)
    assert n.watchdog_interval() == 30.0
    sent_at = []
    for _ in range(80):                           # 40 s of loop turns, every 0.5 s
        if n.watchdog():
            sent_at.append(clock.t - 1000.0)
        clock.t += 0.5
    assert sent_at == [0.0, 7.5, 15.0, 22.5, 30.0, 37.5]
    assert received(s) == ["WATCHDOG=1"] * 6
    clock.t += 100.0                              # a long stall: the next call sends at once
    assert n.watchdog()
    assert not n.watchdog()
    n.close()


def test_watchdog_pid_mismatch_suppresses(manager) -> None:
    s, path = manager
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}
    n = Notifier(env, getpid=lambda: 4343)       # a child that inherited its parent's env
    assert n.watchdog_interval() is None
    assert not n.watchdog()
    assert n.ready()                             # other messages are not the watchdog's
    assert received(s) == ["READY=1"]
    mine = Notifier(env, getpid=lambda: 4242)
    assert mine.watchdog_interval() == 30.0
    assert mine.watchdog()
    assert received(s) == ["WATCHDOG=1"]
    n.close()
    mine.close()


def test_watchdog_without_watchdog_sec_or_pid(manager) -> None:
    s, path = manager
    assert Notifier({"NOTIFY_SOCKET": path}).watchdog_interval() is None
    assert not Notifier({"NOTIFY_SOCKET": path}).watchdog()
    assert not Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "junk"}).watchdog()
    assert not Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "0"}).watchdog()
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})   # no WATCHDOG_PID
    assert n.watchdog_interval() == 2.0
    assert n.watchdog()
    assert received(s) == ["WATCHDOG=1"]
    n.close()


def test_unset_socket_is_a_no_op(caplog) -> None:
    n = Notifier({"WATCHDOG_USEC": "30000000"})
    with caplog.at_level(logging.DEBUG, logger="supervisor.sdnotify"):
        assert not n.enabled
        assert not n.ready()
        assert not n.reloading()
        assert not n.status("x")
        assert not n.stopping()
        assert not n.watchdog()
    assert n._sock is None                       # not even a socket was made
    assert caplog.records == []
    assert Notifier({}).watchdog_interval() is None


def test_reads_os_environ_by_default(manager, monkeypatch) -> None:
    s, path = manager
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    n = Notifier()
    assert n.ready()
    assert s.recv(4096) == b"READY=1"
    n.close()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not Notifier().enabled


def test_dead_socket_path_does_not_raise_and_warns_once(tmp_path: Path, caplog) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone"), "WATCHDOG_USEC": "1000000"},
                 monotonic=FakeClock())
    with caplog.at_level(logging.DEBUG, logger="supervisor.sdnotify"):
        assert not n.ready()
        assert not n.status("x")
        assert not n.watchdog()
        assert not n.watchdog()                  # a failed keep-alive is retried at once
        assert not n.stopping()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "gone" in warnings[0].getMessage()
    n.close()


def test_socket_that_went_away_after_start(manager, caplog) -> None:
    s, path = manager
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.ready()
    s.close()
    os.unlink(path)
    with caplog.at_level(logging.WARNING, logger="supervisor.sdnotify"):
        assert not n.status("still trading")
    assert len(caplog.records) == 1
    n.close()


def test_full_receiver_never_blocks(manager) -> None:
    """A manager that stops reading must not stall the supervisor's loop."""
    _s, path = manager
    n = Notifier({"NOTIFY_SOCKET": path})
    t0 = time.monotonic()
    results = [n.status(f"tick {i} " + "x" * 200) for i in range(5000)]
    assert time.monotonic() - t0 < 5.0
    assert not all(results)                      # the queue filled up and sends were dropped
    n.close()


def test_unsupported_address_is_a_no_op(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="supervisor.sdnotify"):
        n = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
        assert not n.enabled
        assert not n.ready()
        assert not n.watchdog()
    assert len(caplog.records) == 1
    assert not Notifier({"NOTIFY_SOCKET": "@"}).enabled
