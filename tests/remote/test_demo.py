"""Remote control's demo step (backend.remote.demo), on a copy of the small demo: the
demo manager's execution password is the published one, a disabled daily patrol task
of the company and the simulated bus's patrol are there, and a second run adds nothing."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.auth.models import PrincipalKind
from backend.auth.service import load_principal
from backend.demo import MANAGER
from backend.domain import DemoPlan, system_principal
from backend.domains import installed
from backend.remote import passwords
from backend.remote.demo import DEMO_EXECUTION_PASSWORD, SIMULATED_PATROL, demo_step
from tests import small_demo
from tests.small_demo import HOUSEHOLDS, NOW, SEED
from tests.small_demo import rows as _rows

database_url, demo = small_demo.database_url, small_demo.demo


async def test_the_demo_manager_can_command_with_the_published_execution_password_and_it_loads_once(
        demo: None, committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    [(manager_id,)] = await _rows(committed_sessions, f"SELECT id FROM staff_users WHERE username = '{MANAGER.username}'")
    assert isinstance(manager_id, int)
    async with committed_sessions() as session:
        manager = await load_principal(session, kind=PrincipalKind.staff, principal_id=manager_id)
        assert manager is not None and manager.has("remote:control")
        await passwords.verify_execution_password(session, user=manager, password=DEMO_EXECUTION_PASSWORD)

    plan = DemoPlan(households=HOUSEHOLDS, seed=SEED, readings=True, now=NOW, timezone="Asia/Shanghai",
                    progress=lambda _: None, actor=system_principal(installed()), logins={"manager": MANAGER.username})
    async with committed_sessions() as session, session.begin():
        await demo_step(session, plan)
    assert await _rows(committed_sessions, "SELECT name, schedule, enabled FROM patrol_tasks ORDER BY id") == [
        ("全公司每日巡测", "0 2 * * *", False), (SIMULATED_PATROL, "*/3 * * * *", True)]
    assert await _rows(committed_sessions, "SELECT count(*) FROM concentrators WHERE host = '127.0.0.1'") == [(1,)]
    assert len(await _rows(committed_sessions, "SELECT staff_user_id FROM execution_passwords")) == 1
