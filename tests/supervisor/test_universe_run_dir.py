"""A run directory remembers its universe: another one is refused with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import OperatorError
from core.universe import DEFAULT
from supervisor.arbiter import _check_universe


def test_the_same_universe_or_none_recorded_is_accepted(tmp_path: Path) -> None:
    _check_universe(tmp_path, {})
    _check_universe(tmp_path, {"universe": DEFAULT.to_dict()})


def test_another_universe_is_refused_naming_both(tmp_path: Path) -> None:
    two = DEFAULT.select(["btc", "eth"]).to_dict()
    with pytest.raises(OperatorError) as e:
        _check_universe(tmp_path, {"universe": two})
    msg = str(e.value)
    assert "the universe changed (assets btc 5m/15m, eth 5m/15m" in msg
    assert "a new universe is a new layout" in msg and "fresh run dir" in msg
    assert f"--config {tmp_path}/universe.json" in msg


def test_a_run_dir_from_before_universes_is_read_as_the_old_eight_assets(tmp_path: Path
                                                                         ) -> None:
    """No universe in run.json: fine while nothing in the run dir numbers slots; with a
    journal or a saved strategy state it was made with btc..link, so refused."""
    _check_universe(tmp_path, {"run_id": "x"})
    (tmp_path / "journal.sqlite").write_bytes(b"")
    with pytest.raises(OperatorError) as e:
        _check_universe(tmp_path, {"run_id": "x"})
    assert "ada 5m/15m, link 5m/15m" in str(e.value)
    assert "predates configurable universes" in str(e.value)
