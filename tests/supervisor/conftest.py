"""The real bot, for the tests that run it: `noblink run` in a subprocess (tests/supervisor/
botctl.py), and at teardown no process and no /dev/shm segment of its run left."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.supervisor.botctl import Bot


@pytest.fixture
def bot(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Bot]:
    """A bot at 30x; a module that waits mostly on the market (trades, windows) can ask
    for another speed with a module-level ``BOT_SPEED``."""
    b = Bot(tmp_path, speed=getattr(request.module, "BOT_SPEED", 30))
    try:
        yield b
    finally:
        b.kill_everything()
    assert not b.leftovers(), "segments left behind"
