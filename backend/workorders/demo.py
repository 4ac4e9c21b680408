"""Work orders' demo step: a handful of orders in every state, on the first households,
handled by the demo's 维修员 (the ``repair`` login) where one exists. A second load adds
nothing."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.archives.models import Area, Household
from backend.auth.models import PrincipalKind, StaffUser
from backend.auth.scope import in_scope
from backend.domain import DemoPlan
from backend.workorders import service
from backend.workorders.models import WorkOrder, WorkOrderCategory

# (category, description, how far it got)
_ORDERS = (
    (WorkOrderCategory.leak, "厨房水表后阀门漏水, 地面有积水", "submitted"),
    (WorkOrderCategory.meter_fault, "水表屏幕不显示读数", "assigned"),
    (WorkOrderCategory.no_water, "今早起整栋楼没有水", "in_progress"),
    (WorkOrderCategory.water_quality, "自来水发黄, 有异味", "resolved"),
    (WorkOrderCategory.billing_query, "本月水费比上月高出很多, 请核实", "on_the_way"),
    (WorkOrderCategory.other, "小区门口消防栓被撞, 一直在冒水", "cancelled"),
)


async def demo_step(session: AsyncSession, plan: DemoPlan) -> None:
    from backend.auth.service import load_principal

    plan.progress("报修工单")
    if (await session.execute(select(func.count()).select_from(WorkOrder))).scalar_one():
        return  # loaded before: a demo load is idempotent
    username = plan.logins.get("repair")
    staff = None
    if username is not None:
        user = (await session.execute(select(StaffUser).where(col(StaffUser.username) == username))).scalar_one_or_none()
        if user is not None and user.id is not None:
            staff = await load_principal(session, kind=PrincipalKind.staff, principal_id=user.id)
    # Households the 维修员 reaches (their scope), so they can take the orders.
    chosen = select(Household).join(Area, col(Area.id) == col(Household.area_id)).order_by(col(Household.id))
    if staff is not None:
        chosen = chosen.where(in_scope(col(Area.path), staff.scope_patterns()))
    households = list((await session.execute(chosen.limit(len(_ORDERS)))).scalars())
    tz = ZoneInfo(plan.timezone)
    for index, (household, (category, description, reach)) in enumerate(zip(households, _ORDERS, strict=False)):
        at = plan.now - timedelta(hours=6 * (len(_ORDERS) - index))
        assert household.id is not None
        order = await service.create_work_order(
            session, principal=plan.actor, household_id=household.id, category=category, description=description,
            contact_name=None, contact_phone=household.phone or "13800000000", appointment_at=None, now=at, tz=tz)
        order_id = order.id or 0
        if reach == "cancelled":
            await service.cancel_work_order(session, principal=plan.actor, order_id=order_id, note="重复报修", now=at)
            continue
        if reach == "submitted" or staff is None:
            continue
        step = timedelta(minutes=20)
        await service.take_work_order(session, principal=staff, order_id=order_id, now=at + step)
        if reach == "assigned":
            continue
        if reach == "on_the_way":
            await service.start_travel(session, principal=staff, order_id=order_id, now=at + 2 * step)
            continue
        await service.start_work(session, principal=staff, order_id=order_id, now=at + 2 * step)
        if reach == "in_progress":
            continue
        await service.resolve_work_order(
            session, principal=staff, order_id=order_id, result="已处理: 更换阀门并试水正常",
            materials=[service.Material("阀门", Decimal(1), "只")], now=at + 3 * step)
