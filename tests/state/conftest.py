"""Fixtures for the state tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.state.helpers import Child


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Child]]:
    """Start children; any still running at teardown is killed (and reaped)."""
    children: list[Child] = []

    def start(role: str, **kwargs: object) -> Child:
        child = Child(role, tmp_path, **kwargs)
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()
