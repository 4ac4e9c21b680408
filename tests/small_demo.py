"""The small demo the money tests read: 40 households with 13 months of readings up to
:data:`NOW`, loaded once per run into a database of its own (``small_demo_url`` in
tests/conftest.py) that each module clones (``database_url`` below), so billing's and
payments' demo tests share one load."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 20, 10, 30, tzinfo=SHANGHAI)
HOUSEHOLDS, SEED = 40, 7


@pytest.fixture(scope="module")
def database_url(server_url: str, small_demo_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """This module's own copy of the small demo (what it commits stays in the copy)."""
    from tests.conftest import clone_database, drop_database

    label = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")[:20]
    url = clone_database(server_url, small_demo_url, label)
    yield url
    drop_database(server_url, url)


async def rows(sessions: async_sessionmaker[AsyncSession], statement: str, **params: object) -> list[tuple[object, ...]]:
    async with sessions() as session:
        return [tuple(row) for row in await session.execute(text(statement), params)]


@pytest.fixture(scope="module")
def demo(database_url: str) -> None:
    """The small demo is loaded: the module's database is a copy of it."""
