"""Helpers for tests that commit events to a database of their own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.db import create_engine, session_factory, to_libpq_url
from backend.events.service import emit_event


@asynccontextmanager
async def committing_sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url, pool_size=2, max_overflow=2)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


async def emit_committed(
    factory: async_sessionmaker[AsyncSession], kind: str, payload: object, key: str | None = None
) -> int:
    async with factory() as session, session.begin():
        return await emit_event(session, kind, payload, key=key)


@asynccontextmanager
async def raw_connection(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(to_libpq_url(database_url))
    try:
        yield connection
    finally:
        await connection.close()
