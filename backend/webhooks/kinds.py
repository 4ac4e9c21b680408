"""Which event kinds a third party may subscribe to, what each needs and how each is
narrowed to the client's data scope (docs/webhooks.md, "Event types and scope").

Webhooks is a shared layer placed before every business domain, so it imports none of
them: each kind's narrowing is one SQL statement over the owner's tables (read only),
written here from the payload the owner documents (docs/events.md):

- ``readings.ingested``: ``meter_ids`` keeps the meters whose area is in scope; none left,
  no delivery. ``batch_id``, ``first_read_at`` and ``last_read_at`` are the batch's.
- ``payment.succeeded``: delivered when the payment's household is in scope.
- ``bill.issued``: ``bill_ids`` / ``account_ids`` (parallel) keep the pairs whose
  account's household is in scope; none left, no delivery.
- ``alarm.opened``: ``alarm_ids`` keeps the alarms in scope (a meter alarm through its
  meter's area, another subject through the area its owner gave; one without an area
  only for a client whose scope covers every root area, as the alarms list does).
- ``workorder.changed``: delivered when the work order's household is in scope (the
  workorders domain emits it and declares the fan-out handler for it: a handler needs its
  kind's payload registered, which happens in that domain).

A client also needs the kind's read permission among its scopes, at registration and
when each event is fanned out (a scope taken away stops the deliveries).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

_IN_SCOPE = "a.path LIKE ANY(CAST(:patterns AS text[]))"
_WHOLE_TREE = ("NOT EXISTS (SELECT 1 FROM areas r WHERE r.parent_id IS NULL"
               " AND NOT r.path LIKE ANY(CAST(:patterns AS text[])))")


@dataclass(frozen=True, slots=True)
class WebhookKind:
    kind: str
    # The read permission (an API client scope) a subscriber needs.
    permission: str
    description: str


KINDS: Mapping[str, WebhookKind] = {kind.kind: kind for kind in (
    WebhookKind("readings.ingested", "readings:read", "读数入库 (批次号与写入的水表)"),
    WebhookKind("payment.succeeded", "payments:read", "缴费成功"),
    WebhookKind("bill.issued", "bills:read", "账单已出"),
    WebhookKind("alarm.opened", "alarms:read", "告警产生"),
    WebhookKind("workorder.changed", "workorders:read", "工单变更"),
)}


async def _ids_in_scope(session: AsyncSession, sql: str, ids: Sequence[int], patterns: list[str]) -> list[int]:
    rows = await session.execute(text(sql), {"ids": list(ids), "patterns": patterns})
    return [row[0] for row in rows]


async def _household_in_scope(session: AsyncSession, household_id: int, patterns: list[str]) -> bool:
    found = await session.execute(text(
        f"SELECT 1 FROM households h JOIN areas a ON a.id = h.area_id WHERE h.id = :id AND {_IN_SCOPE}"),
        {"id": household_id, "patterns": patterns})
    return found.first() is not None


async def scoped_data(session: AsyncSession, kind: str, payload: Mapping[str, Any],
                      scope_paths: Sequence[str]) -> dict[str, Any] | None:
    """What of an event's ``payload`` a client scoped to ``scope_paths`` receives as the
    delivery's ``data``, or None when nothing (see the module docstring)."""
    if not scope_paths:
        return None
    patterns = [path + "%" for path in scope_paths]
    data = dict(payload)
    if kind == "readings.ingested":
        meters = await _ids_in_scope(session, "SELECT m.id FROM meters m JOIN areas a ON a.id = m.area_id"
                                     f" WHERE m.id = ANY(CAST(:ids AS bigint[])) AND {_IN_SCOPE} ORDER BY m.id",
                                     payload["meter_ids"], patterns)
        data["meter_ids"] = meters
        return data if meters else None
    if kind == "payment.succeeded":
        return data if await _household_in_scope(session, int(payload["household_id"]), patterns) else None
    if kind == "bill.issued":
        accounts = set(await _ids_in_scope(
            session, "SELECT ac.id FROM accounts ac JOIN households h ON h.id = ac.household_id"
            f" JOIN areas a ON a.id = h.area_id WHERE ac.id = ANY(CAST(:ids AS bigint[])) AND {_IN_SCOPE}",
            payload["account_ids"], patterns))
        pairs = [(bill, account) for bill, account in zip(payload["bill_ids"], payload["account_ids"], strict=True)
                 if account in accounts]
        data["bill_ids"], data["account_ids"] = [b for b, _ in pairs], [a for _, a in pairs]
        return data if pairs else None
    if kind == "alarm.opened":
        alarms = await _ids_in_scope(
            session, "SELECT al.id FROM alarms al"
            " LEFT JOIN meters m ON al.subject_kind = 'meter' AND m.id = al.subject_id"
            " LEFT JOIN areas a ON a.id = coalesce(al.area_id, m.area_id)"
            f" WHERE al.id = ANY(CAST(:ids AS bigint[])) AND ({_IN_SCOPE} OR (a.id IS NULL AND {_WHOLE_TREE}))"
            " ORDER BY al.id", payload["alarm_ids"], patterns)
        data["alarm_ids"] = alarms
        return data if alarms else None
    if kind == "workorder.changed":
        household = await session.execute(text(
            "SELECT household_id FROM work_orders WHERE id = :id"), {"id": int(payload["workorder_id"])})
        row = household.first()
        return data if row is not None and row[0] is not None and await _household_in_scope(
            session, int(row[0]), patterns) else None
    return None
