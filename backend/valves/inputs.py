"""The valve policy's inputs read from the database, and the decision over them
(:func:`valve_decision`, what the handler of ``account.threshold_crossed`` calls): the
account's current state (billing), how many of its balance alerts reached the resident
(:func:`alert_deliveries`) and which days are working days (``backend.calendar``).

An account's balance alerts are the messages the notifications domain writes for each
``account.threshold_crossed`` event that took it to ``alert`` (余额不足提醒) or ``close``
(关阀预警): their dedupe key is ``balance:<state>:<account id>:<event id>``
(``backend.notifications.rules``), the same for the inbox message, its pushes and the
household's SMS. "Since it last went into alert" is after the account's latest crossing
to ``normal``; an account whose crossings were purged by the events' retention counts
those still kept.

A crossing whose message rule has not run yet (``handled_events`` has no row for its
handler, :data:`MESSAGE_HANDLERS`) counts as pending: the job worker runs an event's
handlers concurrently, so the policy's handler may look before the notifications'
handler has written the alert it is about to send. Counting it as neither delivered nor
pending would decide "none on its way: never" and leave the valve to staff although the
alert goes out a moment later (found by tests/acquisition/test_end_to_end.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.billing.accounts import account_of_household
from backend.billing.models import AlertState
from backend.calendar.service import working_days
from backend.valves.policy import AccountValveState, ValveDecision, ValvePolicy, decide_valve, lookahead

_ALERT_DELIVERIES = text(
    """
    WITH crossings AS (
        SELECT e.id, e.payload->>'to_state' AS to_state FROM domain_events e
        WHERE e.kind = 'account.threshold_crossed' AND e.payload->'account_ids' @> to_jsonb(CAST(:account AS bigint))
    ), alerts AS (
        SELECT 'balance:' || c.to_state || ':' || CAST(:account AS bigint) || ':' || c.id AS dedupe_key,
               NOT EXISTS (SELECT FROM handled_events h WHERE h.event_id = c.id
                           AND h.handler = CASE c.to_state WHEN 'alert' THEN :alert_rule ELSE :close_rule END) AS unwritten
        FROM crossings c
        WHERE c.to_state IN ('alert', 'close')
          AND c.id > (SELECT coalesce(max(id), 0) FROM crossings WHERE to_state = 'normal')
    ), states AS (
        SELECT
            bool_or(a.unwritten) AS unwritten,
            bool_or(s.state = 'sent') AS sms_sent, bool_or(s.state = 'queued') AS sms_queued,
            (SELECT bool_or(p.state = 'sent') FROM messages m JOIN push_deliveries p
               ON m.id = ANY(p.message_ids) AND p.kind = m.kind AND p.created_at >= m.created_at
             WHERE m.dedupe_key = a.dedupe_key AND m.household_id = :household) AS push_sent,
            (SELECT bool_or(p.state = 'queued') FROM messages m JOIN push_deliveries p
               ON m.id = ANY(p.message_ids) AND p.kind = m.kind AND p.created_at >= m.created_at
             WHERE m.dedupe_key = a.dedupe_key AND m.household_id = :household) AS push_queued
        FROM alerts a LEFT JOIN sms_deliveries s ON s.household_id = :household AND s.dedupe_key = a.dedupe_key
        GROUP BY a.dedupe_key
    )
    SELECT count(*) FILTER (WHERE coalesce(sms_sent, false) OR coalesce(push_sent, false)) AS delivered,
           count(*) FILTER (WHERE NOT (coalesce(sms_sent, false) OR coalesce(push_sent, false))
                              AND (unwritten OR coalesce(sms_queued, false) OR coalesce(push_queued, false))) AS pending
    FROM states
    """
)


# The handlers that write an account's balance alerts: the notifications domain's message
# rules of account.threshold_crossed (backend/notifications/domain.py, RULES), run as
# ``messages.<rule name>`` (backend.domain.message_handlers), for a crossing to alert and to close.
MESSAGE_HANDLERS = {AlertState.alert: "messages.balance_alert", AlertState.close: "messages.close_warning"}


@dataclass(frozen=True, slots=True)
class AlertDeliveries:
    """Of the account's balance alerts since it last went into alert: how many reached
    the resident (an SMS sent or a push sent: the vendor accepted it), and how many have
    not yet but are still queued (a push held by quiet hours, an SMS to retry) or not
    yet written (its message rule has not run)."""

    delivered: int
    pending: int


async def alert_deliveries(session: AsyncSession, *, account_id: int, household_id: int) -> AlertDeliveries:
    """Count the account's delivered and still-pending balance alerts (module docstring)."""
    row = (await session.execute(_ALERT_DELIVERIES, {
        "account": account_id, "household": household_id, "alert_rule": MESSAGE_HANDLERS[AlertState.alert],
        "close_rule": MESSAGE_HANDLERS[AlertState.close]})).one()
    return AlertDeliveries(delivered=int(row.delivered), pending=int(row.pending))


async def valve_decision(
    session: AsyncSession, *, account_id: int, household_id: int, closed_by_policy: bool, policy: ValvePolicy,
    now: datetime, tz: ZoneInfo,
) -> ValveDecision:
    """The policy's decision for one account of an ``account.threshold_crossed`` event
    (``account_ids`` and ``household_ids`` are parallel), on the account's state now:
    its household's open account (none, or another one: it was closed), the alerts
    delivered, the working days ahead. ``closed_by_policy`` comes from the remote
    domain's commands (the policy's own valve-close for the account is in effect)."""
    account = await account_of_household(session, household_id)
    if account is not None and account.id != account_id:
        account = None  # the event's account was closed and the household opened a new one
    deliveries = await alert_deliveries(session, account_id=account_id, household_id=household_id)
    first, last = lookahead(now, tz)
    state = AccountValveState(
        state=account.alert_state if account is not None else AlertState.normal,
        account_open=account is not None, vulnerable=account is not None and account.vulnerable,
        closed_by_policy=closed_by_policy, delivered_alerts=deliveries.delivered, pending_alerts=deliveries.pending)
    return decide_valve(state, policy=policy, now=now, tz=tz,
                        working_days=await working_days(session, start=first, end=last))
