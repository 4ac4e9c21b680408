"""Remote control's demo step: the demo manager's execution password (执行密码), set
once and printed, so the desk's 远程控制 works out of the box; and one daily patrol task
of the company, disabled (the demo's simulators are started by ``demo run``). A second
load changes nothing."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.auth.models import StaffUser
from backend.domain import DemoPlan
from backend.remote.models import ExecutionPassword, PatrolReading, PatrolTask

# Published like the demo logins (README): change it before going live.
DEMO_EXECUTION_PASSWORD = "Exec@2026"


async def demo_step(session: AsyncSession, plan: DemoPlan) -> None:
    from backend.auth.security import hash_password_off_loop

    username = plan.logins.get("manager")
    manager_id = None
    if username is not None:
        manager_id = (await session.execute(select(col(StaffUser.id)).where(col(StaffUser.username) == username))
                      ).scalar_one_or_none()
    if manager_id is not None and await session.get(ExecutionPassword, manager_id) is None:
        session.add(ExecutionPassword(staff_user_id=manager_id,
                                      password_hash=await hash_password_off_loop(DEMO_EXECUTION_PASSWORD),
                                      failed_attempts=0, set_at=plan.now, updated_at=plan.now))
    if manager_id is not None:
        plan.progress("远程控制")
        # Printed like the demo logins (inside `demo load`'s progress display, rich keeps it above the bar).
        print(f"远程控制 执行密码 (execution password) of {username}: {DEMO_EXECUTION_PASSWORD}")
    if not (await session.execute(select(func.count()).select_from(PatrolTask))).scalar_one():
        company = plan.areas.get("company")
        if company is not None:
            session.add(PatrolTask(name="全公司每日巡测", unit_id=None, area_ids=[company], concentrator_ids=[],
                                   meter_ids=[], schedule="0 2 * * *", reading=PatrolReading.current,
                                   time_limit_s=30, enabled=False, created_at=plan.now, updated_at=plan.now))
    await session.flush()
