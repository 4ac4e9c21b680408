"""The handler of ``workorder.changed`` (``workorders.notify``): the messages of a work
order's progress (MessageKind.WORKORDER_UPDATE), through notifications' ``notify_many``
(the domain before this one; DESIGN.md "Contracts").

Whom: the household (its bound residents, by inbox and push) when staff or the system
move the order (assigned, on the way, in progress, resolved, closed, cancelled by
staff); the assignee when the resident moves it (confirmed with a rating, reopened,
cancelled). Nothing for the order's creation (its creator knows) or a move by the
recipient themself. The dedupe key is the event's id, so a replayed event sends nothing
twice; the handler's horizon skips old events on a replay of history.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.events.service import Event, payload_of
from backend.notifications import service as notifications
from backend.notifications.kinds import MessageKind, Recipient
from backend.workorders.events import WorkOrderChanged
from backend.workorders.models import CATEGORY_LABELS, STATE_LABELS, WorkOrder, WorkOrderState

if TYPE_CHECKING:
    from backend.runtime import Runtime

_RESIDENT_WORDS = {
    WorkOrderState.assigned: "已有工作人员受理您的报修",
    WorkOrderState.on_the_way: "维修人员已出发",
    WorkOrderState.in_progress: "维修人员正在处理",
    WorkOrderState.resolved: "报修已处理完成, 请确认并评价",
    WorkOrderState.closed: "报修工单已关闭",
    WorkOrderState.cancelled: "报修工单已被取消",
}
_STAFF_WORDS = {
    WorkOrderState.confirmed: "住户已确认并评价",
    WorkOrderState.assigned: "住户要求重新处理",
    WorkOrderState.cancelled: "住户已取消报修",
}


def message_of(order: WorkOrder, state: WorkOrderState, by: str) -> tuple[str, str, Recipient] | None:
    """(title, body, recipient) for a change of ``order`` to ``state`` by ``by``; None
    when nobody is told."""
    if state is WorkOrderState.submitted:
        return None
    title = f"报修进度: {order.number}"
    category = CATEGORY_LABELS[order.category]
    if by.startswith("resident:"):
        if order.assignee_id is None or state not in _STAFF_WORDS:
            return None
        body = f"{category}工单 {order.number}: {_STAFF_WORDS[state]}"
        if state is WorkOrderState.confirmed and order.rating is not None:
            body += f" ({order.rating} 星)"
        return title, body, Recipient.staff(order.assignee_id)
    words = _RESIDENT_WORDS.get(state, STATE_LABELS[state])
    return title, f"{category}工单 {order.number}: {words}", Recipient.household(order.household_id)


async def notify_changed(runtime: Runtime, session: AsyncSession, event: Event) -> None:
    """Send the message of one ``workorder.changed`` (module docstring)."""
    changed = payload_of(event, WorkOrderChanged)
    order = (await session.execute(select(WorkOrder).where(WorkOrder.id == changed.workorder_id))).scalar_one_or_none()  # type: ignore[arg-type]
    if order is None:
        return
    message = message_of(order, WorkOrderState(changed.state), changed.by)
    if message is None:
        return
    title, body, recipient = message
    await notifications.notify_many(session, kind=MessageKind.WORKORDER_UPDATE, recipients=[recipient], title=title, body=body,
                      data={"screen": "workorder", "workOrderId": order.id, "number": order.number,
                            "state": changed.state},
                      dedupe_key=f"workorder.changed:{event.id}", now=runtime.now())
