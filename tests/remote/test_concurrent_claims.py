"""Claims from two transactions at once (a worker's two threads, or two workers in the
moment of a takeover) never take one command twice: SKIP LOCKED, on a committed
database of this module's own."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.auth.system import system_actor
from backend.remote import service
from backend.remote.models import CommandKind
from tests.remote.support import NOW, make_world


async def test_two_open_transactions_claim_disjoint_commands(committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    async with committed_sessions() as session, session.begin():
        world = await make_world(session)
        batch = await service.queue_commands(
            session, selection=service.Selection(concentrator_ids=(world.east_concentrator.id or 0,)),
            kind=CommandKind.read_now, params={}, issued_by=system_actor({"remote:read"}), time_limit_s=600, now=NOW)
        await service.take_leases(session, holder="worker-a", links=[world.east_link], ttl=timedelta(minutes=5),
                                  now=NOW)

    async with committed_sessions() as first, first.begin():
        taken_first = await service.claim_commands(first, holder="worker-a", link_ids=[world.east_link], limit=2,
                                                   now=NOW)
        # The first transaction still holds its rows' locks: the second skips them.
        async with committed_sessions() as second, second.begin():
            # Without SKIP LOCKED it would wait for them: fail instead of hanging.
            await second.execute(text("SET LOCAL lock_timeout = '2s'"))
            taken_second = await service.claim_commands(second, holder="worker-a", link_ids=[world.east_link],
                                                        limit=100, now=NOW)

    first_ids, second_ids = {c.id for c in taken_first}, {c.id for c in taken_second}
    assert len(first_ids) == 2 and not first_ids & second_ids
    assert first_ids | second_ids == set(batch.command_ids)
