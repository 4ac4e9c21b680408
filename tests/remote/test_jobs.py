"""The remote domain's minute jobs as the worker runs them (the system actor, the
utility's zone, their own transactions), on a committed database of this module's own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.domain import system_principal
from backend.domains import installed
from backend.remote import patrols
from backend.remote.jobs import enqueue_due_patrols_job, sweep_commands_job
from backend.remote.models import CommandKind
from backend.runtime import Runtime
from backend.settings import Settings
from tests.remote.support import make_world
from tests.workorders.support import staff_member

TWO_AM = datetime(2026, 12, 7, 18, 0, tzinfo=UTC)  # 02:00 in Beijing


def _runtime(sessions: async_sessionmaker[AsyncSession], at: datetime) -> Runtime:
    return Runtime(settings=Settings(), sessions=sessions, actor=system_principal(installed()), clock=lambda: at)


async def test_the_patrol_job_fires_a_task_at_its_beijing_minute_once_and_the_sweep_times_its_reads_out(
        committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    async with committed_sessions() as session, session.begin():
        world = await make_world(session)
        manager = await staff_member(session, permissions={"patrols:manage"}, area=world.tree.east)
        await patrols.create_patrol_task(session, principal=manager.principal, now=TWO_AM - timedelta(hours=1),
                                         fields=patrols.PatrolTaskFields(name="两点巡测", schedule="0 2 * * *",
                                                                         meter_ids=(world.east_valve_meters[0].id or 0,)))

    fired = await enqueue_due_patrols_job(_runtime(committed_sessions, TWO_AM + timedelta(seconds=3)), {})
    again = await enqueue_due_patrols_job(_runtime(committed_sessions, TWO_AM + timedelta(seconds=40)), {})
    # Nobody leases the link: an hour later the run's read times out.
    swept = await sweep_commands_job(_runtime(committed_sessions, TWO_AM + timedelta(hours=1, seconds=3)), {})

    assert (fired, again, swept) == (1, 0, 1)
    async with committed_sessions() as session:
        run = (await session.execute(text("SELECT state, meters_total, meters_failed FROM patrol_runs"))).one()
        command = (await session.execute(text("SELECT kind, state FROM remote_commands"))).one()
    assert tuple(run) == ("finished", 1, 1)
    assert tuple(command) == (CommandKind.read_now.value, "timed_out")
