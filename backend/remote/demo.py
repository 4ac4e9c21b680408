"""Remote control's demo step: the demo manager's execution password (执行密码), set
once and printed, so the desk's 远程控制 works out of the box; one daily patrol task of
the company, disabled (the demo's other buses are addresses nobody answers at); and the
**simulated bus**: one concentrator of the demo, made a transparent DTU on this machine
(``SIMULATED_DTU_HOST:SIMULATED_DTU_PORT``, 127.0.0.1:9188), where ``demo run`` starts a
meter simulator standing in for its meters (``acquisition.demo``) and the acquisition
worker that serves it, with an enabled patrol task reading it every few minutes
(:data:`SIMULATED_PATROL`), so readings arrive while the demo runs.

The simulated bus is the concentrator of the demo's first master-station prepaid
account standing at its close line that is not vulnerable (the one whose valve the
valve policy closed, ``backend.valves.demo``), so a recharge at the counter visibly
reopens a valve; that household's meter is given a valve model if its model has none.
A second load changes nothing."""

from __future__ import annotations

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.archives.models import Concentrator, ConnectionKind, DeviceStatus
from backend.auth.models import StaffUser
from backend.domain import DemoPlan
from backend.remote.models import ExecutionPassword, PatrolReading, PatrolTask

# Published like the demo logins (README): change it before going live.
DEMO_EXECUTION_PASSWORD = "Exec@2026"
# Where ``demo run``'s meter simulator listens as a transparent DTU (module docstring).
SIMULATED_DTU_HOST, SIMULATED_DTU_PORT = "127.0.0.1", 9188
SIMULATED_PATROL = "模拟总线巡测 (每3分钟)"
SIMULATED_PATROL_SCHEDULE = "*/3 * * * *"

# The household the demo's valve story is about, and its meter and concentrator.
_VALVE_HOUSEHOLD = text("""
SELECT m.id AS meter_id, m.concentrator_id FROM accounts a
JOIN meter_assignments ma ON ma.household_id = a.household_id AND ma.valid_to IS NULL
JOIN meters m ON m.id = ma.meter_id AND m.status = 'installed' AND m.concentrator_id IS NOT NULL
WHERE a.status = 'open' AND a.mode = 'prepaid_station'
ORDER BY (a.alert_state = 'close' AND NOT a.vulnerable) DESC, a.id LIMIT 1
""")


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
    await simulated_bus(session, plan)


async def simulated_bus(session: AsyncSession, plan: DemoPlan) -> int | None:
    """Make the valve household's concentrator the simulated DTU and give it its patrol
    (module docstring); the concentrator's id, None in a demo without prepaid meters."""
    found = (await session.execute(select(col(Concentrator.id)).where(
        col(Concentrator.host) == SIMULATED_DTU_HOST, col(Concentrator.port) == SIMULATED_DTU_PORT))).scalar_one_or_none()
    if found is None:
        row = (await session.execute(_VALVE_HOUSEHOLD)).first()
        if row is None:
            return None
        plan.progress("模拟采集总线")
        found = int(row.concentrator_id)
        await session.execute(text(
            "UPDATE meters SET model_id = (SELECT id FROM meter_models WHERE has_valve ORDER BY id LIMIT 1) "
            "WHERE id = :meter AND NOT EXISTS (SELECT FROM meter_models mm WHERE mm.id = meters.model_id AND mm.has_valve)"),
            {"meter": row.meter_id})
        await session.execute(update(Concentrator).where(col(Concentrator.id) == found).values(
            connection=ConnectionKind.dtu_socket, protocol="cjt188", host=SIMULATED_DTU_HOST, port=SIMULATED_DTU_PORT,
            serial_url=f"socket://{SIMULATED_DTU_HOST}:{SIMULATED_DTU_PORT}", baudrate=2400, parity="E", bytesize=8,
            stopbits="1", status=DeviceStatus.active))
    if (await session.execute(select(col(PatrolTask.id)).where(col(PatrolTask.name) == SIMULATED_PATROL))).first() is None:
        session.add(PatrolTask(name=SIMULATED_PATROL, unit_id=None, area_ids=[], concentrator_ids=[found], meter_ids=[],
                               schedule=SIMULATED_PATROL_SCHEDULE, reading=PatrolReading.current, time_limit_s=30,
                               enabled=True, created_at=plan.now, updated_at=plan.now))
        await session.flush()
    return found
