from __future__ import annotations

from collections.abc import Iterator

import pytest

from state.run import RunPaths
from tests.position_worker.fakes import MarketTable


@pytest.fixture
def markets(run_paths: RunPaths) -> Iterator[MarketTable]:
    m = MarketTable(run_paths)
    yield m
    m.close()
