"""The database helpers: COPY inside the session's transaction."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from backend.db import copy_into
from backend.events.models import DomainEvent


@pytest.mark.smoke
async def test_copy_into_joins_the_session_transaction_and_rolls_back_with_it(engine: AsyncEngine) -> None:
    count = select(func.count()).select_from(DomainEvent)
    async with AsyncSession(engine) as session:
        before = (await session.execute(count)).scalar_one()
        await session.commit()

        copied = await copy_into(
            session,
            "domain_events",
            columns=["kind", "payload", "created_at"],
            records=[("test.copied", "{}", datetime.now(UTC)) for _ in range(3)],
        )
        inside = (await session.execute(count)).scalar_one()
        await session.rollback()

        after = (await session.execute(count)).scalar_one()
    assert copied == 3
    assert inside == before + 3
    assert after == before


async def test_copied_rows_are_visible_to_the_session_that_copied_them(session: AsyncSession) -> None:
    await copy_into(session, "domain_events", columns=["kind", "payload", "created_at"],
                    records=[("test.kept", "{}", datetime.now(UTC))])
    kept = await session.execute(text("SELECT count(*) FROM domain_events WHERE kind = 'test.kept'"))
    assert kept.scalar_one() == 1
