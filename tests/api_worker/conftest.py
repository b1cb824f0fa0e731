"""Fixtures: a fake run directory, and the API app on it behind aiohttp's test client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from api_worker.app import ApiConfig, build_app
from api_worker.events import StreamConfig
from tests.api_worker.fakerun import FakeRun

TOKEN = "test-token-0123456789abcdefghijklmnopqrstuv"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def run(tmp_path: Path) -> Iterator[FakeRun]:
    r = FakeRun(tmp_path)
    yield r
    r.close()


def make_app(run: FakeRun, *, public_read: bool = False, **stream: float):
    cfg = ApiConfig(run.run_dir, public_read=public_read, ack_poll_s=0.01,
                    stream=StreamConfig(poll_s=0.02, **stream))
    return build_app(cfg, TOKEN)


@pytest.fixture
async def client(run: FakeRun) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(make_app(run))) as c:
        yield c
