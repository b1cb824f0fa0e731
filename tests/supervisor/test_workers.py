import signal
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.workers import Child, ChildSpec, ChildState, RestartPolicy

# PR_GET_PDEATHSIG: the signal the kernel sends this process when its parent dies (0: none).
READ_PDEATHSIG = ("import ctypes; v = ctypes.c_int(); "
                  "ctypes.CDLL('libc.so.6').prctl(2, ctypes.byref(v)); raise SystemExit(v.value)")


class FakeTime:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def exited_child(tmp_path, code: int, policy: RestartPolicy, now: FakeTime) -> Child:
    c = Child(ChildSpec("t", lambda: ["-c", f"raise SystemExit({code})"], policy=policy),
              tmp_path, now=now)
    c.start()
    assert c.wait(30)
    assert c.poll() == code
    return c


def test_restart_backoff_grows_and_intensity_gives_up(tmp_path) -> None:
    now = FakeTime()
    policy = RestartPolicy(intensity=3, period=60.0, backoff_min=0.5, backoff_max=10.0)
    c = exited_child(tmp_path, 1, policy, now)
    delays = []
    for _ in range(3):
        assert c.plan_restart()
        delays.append(c.next_start_at - now.t)
        assert not c.due()
        now.t = c.next_start_at
        assert c.due()
        c.start()
        assert c.wait(30) and c.poll() == 1
    assert delays == [0.5, 1.0, 2.0]
    assert not c.plan_restart()
    assert c.state == ChildState.FAILED


def test_restarts_outside_the_period_are_forgiven(tmp_path) -> None:
    now = FakeTime()
    c = exited_child(tmp_path, 1, RestartPolicy(intensity=1, period=10.0), now)
    assert c.plan_restart()
    now.t = c.next_start_at
    c.start()
    assert c.wait(30) and c.poll() == 1
    now.t += 11.0
    assert c.plan_restart()


def test_exit_code_4_means_broken_code_and_is_not_restarted(tmp_path) -> None:
    c = exited_child(tmp_path, 4, RestartPolicy(), FakeTime())
    assert not c.plan_restart()
    assert c.state == ChildState.FAILED


def test_terminate_then_kill_after_grace(tmp_path) -> None:
    now = FakeTime()
    code = "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
           "print('ready', flush=True); time.sleep(60)"
    c = Child(ChildSpec("stubborn", lambda: ["-c", code], stop_grace=5.0), tmp_path, now=now)
    c.start()
    log = tmp_path / "stubborn.log"
    import time
    deadline = time.monotonic() + 30
    while "ready" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.02)
    c.terminate()
    assert not c.wait(0.3)              # ignores SIGTERM
    c.enforce_stop()                    # grace not over yet: nothing happens
    assert c.proc.poll() is None
    now.t += 6.0
    c.enforce_stop()
    assert c.wait(30)
    assert c.poll() == -9


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")
def test_child_argv_is_rebuilt_at_each_start(tmp_path) -> None:
    n = iter(range(10))
    c = Child(ChildSpec("argv", lambda: ["-c", f"raise SystemExit({next(n)})"]), tmp_path)
    c.start()
    assert c.wait(30) and c.poll() == 0
    c.fsm.to(ChildState.STARTING)
    c.start()
    assert c.wait(30) and c.poll() == 1


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.parametrize("expected, code", [("os.getppid()", 0), ("os.getpid()", 1)])
def test_die_with_parent_exits_when_the_parent_is_already_gone(expected: str, code: int) -> None:
    """The child re-checks its parent after arming the death signal: a parent that died
    before the prctl (here: any pid but the real parent's) makes it exit 1 at once."""
    prog = ("import os; from supervisor.workers import _die_with_parent; "
            f"_die_with_parent({expected}); raise SystemExit(0)")
    p = subprocess.run([sys.executable, "-c", prog], capture_output=True, timeout=60,
                       cwd=Path(__file__).resolve().parents[2])
    assert p.returncode == code, p.stderr.decode()


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")
def test_started_child_has_the_death_signal_armed(tmp_path) -> None:
    """Child.start wires _die_with_parent with this process's pid: the child runs (the pid
    check passed) and its parent-death signal is SIGTERM (it survives exec)."""
    c = Child(ChildSpec("pdeathsig", lambda: ["-c", READ_PDEATHSIG]), tmp_path)
    c.start()
    assert c.wait(30)
    assert c.poll() == int(signal.SIGTERM)


def test_only_a_child_that_needs_them_gets_the_wallet_secrets(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NOBLINK_PK", "0x" + "ab" * 32)
    monkeypatch.setenv("NOBLINK_FUNDER", "0x" + "cd" * 20)       # public: passed to all
    code = "import os; print(os.environ.get('NOBLINK_PK'), os.environ.get('NOBLINK_FUNDER'))"
    for name, secrets in (("plain", False), ("position", True)):
        c = Child(ChildSpec(name, lambda: ["-c", code], secrets=secrets), tmp_path)
        c.start()
        assert c.wait(30)
        out = (tmp_path / f"{name}.log").read_text().split()
        assert out[0] == ("0x" + "ab" * 32 if secrets else "None")
        assert out[1] == "0x" + "cd" * 20
