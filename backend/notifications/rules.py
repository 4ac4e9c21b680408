"""Events that become messages: the recipients functions of this domain's
:class:`backend.domain.MessageRule` s, and :func:`send_rule`, the handler that runs
every installed domain's rules (``Domain.message_sender``).

A recipients function ``(session, event, now) -> list[Addressed]`` reads the subject's
**current** state (an account that was topped up again before the handler ran gets no
alert; a bill paid or voided since is not announced) and says whom to tell, with which
template values, deep link and dedupe key. The dedupe key is the business fact (the
event's subject and what happened to it, e.g. ``balance:alert:<account>:<event id>``),
so a replay of the event writes and sends nothing.

Decisions (docs/notifications.md):
- ``alarm.opened``: meter alarms on a meter assigned to a household go to the
  household's residents; staff are not messaged (they work from the 异常水表 list and
  its subscription, scoped by area; a message per alarm per manager would duplicate it).
- ``household.bound``: a new pending or active binding tells the residents already
  bound to the household (not the new one); a pending request from a tenant
  (the requester is not proven owner) tells the owners as the ones who approve.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.domain import MessageRule, load
from backend.money import fen_to_yuan
from backend.notifications.kinds import Recipient
from backend.notifications.service import Draft, write_messages

if TYPE_CHECKING:
    from datetime import datetime

    from backend.events.service import Event
    from backend.runtime import Runtime


@dataclass(frozen=True, slots=True)
class Addressed:
    """Whom one message goes to, the values its template is filled with, where it links
    (``data``: the app's deep link) and its dedupe key."""

    recipient: Recipient
    values: Mapping[str, Any]
    dedupe_key: str
    data: Mapping[str, Any] = field(default_factory=dict)


def render(template: str, values: Mapping[str, Any]) -> str:
    return template.format_map(dict(values))


async def send_rule(runtime: Runtime, session: AsyncSession, event: Event, rule: MessageRule) -> None:
    """Run ``rule`` for ``event``: its recipients now, its template, notify set-based."""
    now = runtime.now()
    addressed: list[Addressed] = await load(rule.recipients)(session, event, now)
    if not addressed:
        return
    drafts = [Draft(item.recipient, render(rule.title, item.values), render(rule.body, item.values), item.data,
                    item.dedupe_key) for item in addressed]
    await write_messages(session, kind=rule.kind, drafts=drafts, now=now, timezone=runtime.timezone)


def yuan(fen: int) -> str:
    return fen_to_yuan(fen)


# --------------------------------------------------------------------------- recipients


async def threshold_alert_recipients(session: AsyncSession, event: Event, now: datetime) -> list[Addressed]:
    """account.threshold_crossed to ``alert``: households whose account is still in alert."""
    return await _threshold_recipients(session, event, "alert")


async def threshold_close_recipients(session: AsyncSession, event: Event, now: datetime) -> list[Addressed]:
    """account.threshold_crossed to ``close``: households whose account is still at close."""
    return await _threshold_recipients(session, event, "close")


async def _threshold_recipients(session: AsyncSession, event: Event, state: str) -> list[Addressed]:
    if event.payload.get("to_state") != state:
        return []
    result = await session.execute(text(
        """
        SELECT a.id, a.household_id, a.balance_fen, a.alert_threshold_fen, a.close_threshold_fen, h.account_no
        FROM accounts a JOIN households h ON h.id = a.household_id
        WHERE a.id = ANY(CAST(:ids AS bigint[])) AND a.status = 'open' AND a.alert_state = :state
        ORDER BY a.id
        """), {"ids": list(event.payload["account_ids"]), "state": state})
    return [Addressed(Recipient.household(row.household_id),
                      {"account_no": row.account_no, "balance": yuan(row.balance_fen),
                       "alert_threshold": yuan(row.alert_threshold_fen), "close_threshold": yuan(row.close_threshold_fen)},
                      f"balance:{state}:{row.id}:{event.id}", {"screen": "account", "id": row.household_id})
            for row in result]


async def payment_recipients(session: AsyncSession, event: Event, now: datetime) -> list[Addressed]:
    """payment.succeeded: the paying household (a reversed payment is not announced)."""
    result = await session.execute(text(
        """
        SELECT p.id, p.amount_fen, h.id AS household_id, h.account_no FROM payments p
        JOIN accounts a ON a.id = p.account_id JOIN households h ON h.id = a.household_id
        WHERE p.id = :id AND p.reversed_at IS NULL
        """), {"id": event.payload["payment_id"]})
    return [Addressed(Recipient.household(row.household_id),
                      {"account_no": row.account_no, "amount": yuan(row.amount_fen),
                       "balance": yuan(event.payload["balance_after_fen"])},
                      f"payment:{row.id}", {"screen": "payment", "id": row.id})
            for row in result]


async def bill_recipients(session: AsyncSession, event: Event, now: datetime) -> list[Addressed]:
    """bill.issued: each bill still open (not paid or voided since), amount and due date as now."""
    result = await session.execute(text(
        """
        SELECT b.id, b.household_id, b.amount_fen - b.principal_paid_fen AS owed_fen, b.amount_fen, b.due_date,
               b.period, h.account_no
        FROM bills b JOIN households h ON h.id = b.household_id
        WHERE b.id = ANY(CAST(:ids AS bigint[])) AND b.status = 'open'
        ORDER BY b.id
        """), {"ids": list(event.payload["bill_ids"])})
    return [Addressed(Recipient.household(row.household_id),
                      {"account_no": row.account_no, "amount": yuan(row.owed_fen),
                       "period": f"{row.period.year}年{row.period.month}月",
                       "due_date": f"{row.due_date.year}年{row.due_date.month}月{row.due_date.day}日"},
                      f"bill:{row.id}", {"screen": "bill", "id": row.id})
            for row in result]


async def alarm_recipients(session: AsyncSession, event: Event, now: datetime) -> list[Addressed]:
    """alarm.opened: open meter alarms on a meter assigned to a household (module docstring)."""
    result = await session.execute(text(
        """
        SELECT al.id, al.kind, m.code AS meter_code, h.id AS household_id, h.account_no
        FROM alarms al
        JOIN meters m ON al.subject_kind = 'meter' AND m.id = al.subject_id
        JOIN meter_assignments ma ON ma.meter_id = m.id AND ma.valid_to IS NULL
        JOIN households h ON h.id = ma.household_id
        WHERE al.id = ANY(CAST(:ids AS bigint[])) AND al.status <> 'closed'
        ORDER BY al.id
        """), {"ids": list(event.payload["alarm_ids"])})
    return [Addressed(Recipient.household(row.household_id),
                      {"account_no": row.account_no, "meter_code": row.meter_code,
                       "alarm": ALARM_NAMES.get(row.kind, "异常")},
                      f"alarm:{row.id}", {"screen": "meter", "id": row.household_id})
            for row in result]


# What a resident is told a meter alarm is (backend.alarms.models.AlarmKind values).
ALARM_NAMES: dict[str, str] = {
    "silent": "长时间无读数", "communication_failure": "通讯失败", "reverse_flow": "水表倒流", "zero_use": "长期零用水",
    "high_use": "用水量突增 (可能漏水)", "battery_low": "电池欠压", "valve_abnormal": "阀门异常", "rollover": "表码翻转",
}


async def binding_recipients(session: AsyncSession, event: Event, now: datetime) -> list[Addressed]:
    """household.bound (module docstring): pending and active bindings only."""
    state = event.payload["state"]
    if state not in ("pending", "active"):
        return []
    household_id = event.payload["household_id"]
    resident_id = event.payload["resident_id"]
    result = await session.execute(text(
        """
        SELECT rh.resident_id, rh.is_owner, h.account_no,
               EXISTS (SELECT FROM resident_households o WHERE o.household_id = h.id AND o.resident_id = :resident
                       AND o.is_owner) AS requester_is_owner,
               right(r.phone, 4) AS requester_tail
        FROM households h
        JOIN resident_households rh ON rh.household_id = h.id
        JOIN residents r ON r.id = :resident
        WHERE h.id = :household AND rh.resident_id <> :resident
        ORDER BY rh.resident_id
        """), {"household": household_id, "resident": resident_id})
    addressed: list[Addressed] = []
    for row in result:
        if state == "pending" and not row.is_owner:
            continue  # a request is the owners' to approve; the others hear when it is active
        action = "申请绑定, 请在\"我的户号\"中审核" if state == "pending" and not row.requester_is_owner else "已绑定"
        addressed.append(Addressed(Recipient.resident(row.resident_id),
                                   {"account_no": row.account_no, "phone_tail": row.requester_tail, "action": action},
                                   f"binding:{event.id}", {"screen": "household", "id": household_id}))
    return addressed
