"""The work orders' demo step (backend.workorders.demo), on a copy of the small demo: one
order per state it walks to, each transition recorded, the orders in the 维修员's scope and
held by them, and a second run adds nothing."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.demo import REPAIR
from backend.domain import DemoPlan, system_principal
from backend.domains import installed
from backend.workorders.demo import demo_step
from tests import small_demo
from tests.small_demo import HOUSEHOLDS, NOW, SEED
from tests.small_demo import rows as _rows

database_url, demo = small_demo.database_url, small_demo.demo


async def test_the_demo_has_an_order_in_each_state_held_by_the_repair_login_and_loads_once(
        demo: None, committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    orders = await _rows(committed_sessions, """
        SELECT w.state, u.username, (SELECT count(*) FROM work_order_transitions t WHERE t.work_order_id = w.id)
        FROM work_orders w LEFT JOIN staff_users u ON u.id = w.assignee_id ORDER BY w.id""")

    assert orders == [("submitted", None, 1), ("assigned", REPAIR.username, 2), ("in_progress", REPAIR.username, 3),
                      ("resolved", REPAIR.username, 4), ("on_the_way", REPAIR.username, 3), ("cancelled", None, 2)]
    plan = DemoPlan(households=HOUSEHOLDS, seed=SEED, readings=True, now=NOW, timezone="Asia/Shanghai",
                    progress=lambda _: None, actor=system_principal(installed()), logins={"repair": REPAIR.username})
    async with committed_sessions() as session, session.begin():
        await demo_step(session, plan)
    assert len(await _rows(committed_sessions, "SELECT id FROM work_orders")) == 6
