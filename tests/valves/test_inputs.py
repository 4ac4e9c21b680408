"""What the valve policy counts: the account's balance alerts that reached the resident
(an SMS or a push sent) since it last went into alert; and the decision over an account's
current state (backend.valves.inputs)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.domain import message_handlers
from backend.domains import installed
from backend.valves.inputs import MESSAGE_HANDLERS, AlertDeliveries, alert_deliveries, valve_decision
from backend.valves.policy import Reason, ValveAction, ValvePolicy
from backend.valves.settings import ValveSettings
from tests.billing.factories import at, served_household, tariff

ACCOUNT, HOUSEHOLD = 9_001, 8_001
OTHER_ACCOUNT, OTHER_HOUSEHOLD = 9_002, 8_002
NOW = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)


async def crossing(session: AsyncSession, to_state: str, *accounts: tuple[int, int], messaged: bool = True) -> int:
    """An account.threshold_crossed event; ``messaged``: the notifications' message rules
    have run for it (their alerts, if any, are written)."""
    payload = {"account_ids": [a for a, _ in accounts], "household_ids": [h for _, h in accounts], "to_state": to_state}
    event_id = int((await session.execute(text(
        "INSERT INTO domain_events (kind, payload) VALUES ('account.threshold_crossed', CAST(:p AS jsonb)) RETURNING id"),
        {"p": json.dumps(payload)})).scalar_one())
    if messaged:
        await session.execute(text(
            "INSERT INTO handled_events (event_id, handler, handled_at) SELECT :e, h, now() FROM unnest(CAST(:h AS text[])) h"),
            {"e": event_id, "h": list(MESSAGE_HANDLERS.values())})
    return event_id


def key(to_state: str, account: int, event_id: int) -> str:
    return f"balance:{to_state}:{account}:{event_id}"


async def sms(session: AsyncSession, household: int, dedupe_key: str, state: str) -> None:
    await session.execute(text(
        "INSERT INTO sms_deliveries (household_id, kind, text, dedupe_key, state, attempts, next_attempt_at, created_at,"
        " sent_at) VALUES (:h, 'balance_alert', '余额不足', :k, :s, 1, :now, :now, :sent_at)"),
        {"h": household, "k": dedupe_key, "s": state, "now": NOW, "sent_at": NOW if state == "sent" else None})


async def push(session: AsyncSession, household: int, dedupe_key: str, state: str) -> None:
    message_id = (await session.execute(text(
        "INSERT INTO messages (recipient_kind, recipient_id, household_id, kind, title, body, data, dedupe_key, created_at)"
        " VALUES ('resident', 1, :h, 'close_warning', '关阀预警', '…', '{}', :k, :now) RETURNING id"),
        {"h": household, "k": dedupe_key, "now": NOW})).scalar_one()
    await session.execute(text(
        "INSERT INTO push_deliveries (kind, title, body, extras, registration_ids, message_ids, state, attempts,"
        " next_attempt_at, created_at) VALUES ('close_warning', '关阀预警', '…', '{}', ARRAY['reg-1'], ARRAY[CAST(:m AS bigint)], :s, 1,"
        " :now, :later)"), {"m": message_id, "s": state, "now": NOW, "later": NOW + timedelta(seconds=1)})


async def test_counts_alerts_delivered_by_sms_or_push_since_the_account_last_went_into_alert(
    session: AsyncSession,
) -> None:
    earlier = await crossing(session, "alert", (ACCOUNT, HOUSEHOLD))
    await sms(session, HOUSEHOLD, key("alert", ACCOUNT, earlier), "sent")  # before the recharge: not counted
    await crossing(session, "normal", (ACCOUNT, HOUSEHOLD))
    alert = await crossing(session, "alert", (OTHER_ACCOUNT, OTHER_HOUSEHOLD), (ACCOUNT, HOUSEHOLD))
    await sms(session, HOUSEHOLD, key("alert", ACCOUNT, alert), "sent")
    await sms(session, OTHER_HOUSEHOLD, key("alert", OTHER_ACCOUNT, alert), "sent")  # someone else's
    close = await crossing(session, "close", (ACCOUNT, HOUSEHOLD))
    await push(session, HOUSEHOLD, key("close", ACCOUNT, close), "sent")
    await sms(session, HOUSEHOLD, key("close", ACCOUNT, close), "queued")  # the same alert twice counts once

    assert await alert_deliveries(session, account_id=ACCOUNT, household_id=HOUSEHOLD) == AlertDeliveries(2, 0)


async def test_alerts_failed_or_capped_are_not_delivered_and_queued_ones_are_pending(session: AsyncSession) -> None:
    alert = await crossing(session, "alert", (ACCOUNT, HOUSEHOLD))
    await sms(session, HOUSEHOLD, key("alert", ACCOUNT, alert), "capped")
    close = await crossing(session, "close", (ACCOUNT, HOUSEHOLD))
    await push(session, HOUSEHOLD, key("close", ACCOUNT, close), "queued")  # held by the resident's quiet hours
    again = await crossing(session, "close", (ACCOUNT, HOUSEHOLD))
    await sms(session, HOUSEHOLD, key("close", ACCOUNT, again), "failed")

    assert await alert_deliveries(session, account_id=ACCOUNT, household_id=HOUSEHOLD) == AlertDeliveries(0, 1)


async def test_an_alert_its_message_rule_has_not_written_yet_is_pending(session: AsyncSession) -> None:
    # The job worker runs an event's handlers concurrently: the valve policy may look
    # before the notifications' rule has written the close warning it is about to send.
    alert = await crossing(session, "alert", (ACCOUNT, HOUSEHOLD))
    await sms(session, HOUSEHOLD, key("alert", ACCOUNT, alert), "sent")
    await crossing(session, "close", (ACCOUNT, HOUSEHOLD), messaged=False)

    assert await alert_deliveries(session, account_id=ACCOUNT, household_id=HOUSEHOLD) == AlertDeliveries(1, 1)


def test_the_message_handlers_counted_are_the_installed_rules_of_the_crossing() -> None:
    rules = {handler.name for handler in message_handlers(installed()) if handler.kind == "account.threshold_crossed"}
    assert set(MESSAGE_HANDLERS.values()) == rules


async def test_an_account_without_alerts_has_none(session: AsyncSession) -> None:
    assert await alert_deliveries(session, account_id=ACCOUNT, household_id=HOUSEHOLD) == AlertDeliveries(0, 0)


WORKING_MORNING = datetime(2026, 12, 8, 10, 0, tzinfo=ZoneInfo("Asia/Shanghai"))  # a Tuesday
POLICY = ValvePolicy.from_settings(ValveSettings())


async def _at_close_line(session: AsyncSession, *, vulnerable: bool = False) -> tuple[int, int]:
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1))
    assert served.household.id is not None
    await session.execute(text("UPDATE accounts SET alert_state = 'close', vulnerable = :v WHERE id = :id"),
                          {"v": vulnerable, "id": served.account_id})
    account, household = served.account_id, served.household.id
    alert = await crossing(session, "alert", (account, household))
    await sms(session, household, key("alert", account, alert), "sent")
    close = await crossing(session, "close", (account, household))
    await sms(session, household, key("close", account, close), "sent")
    return account, household


async def test_the_decision_reads_the_account_its_delivered_alerts_and_the_calendar(session: AsyncSession) -> None:
    account, household = await _at_close_line(session)

    decision = await valve_decision(session, account_id=account, household_id=household, closed_by_policy=False,
                                    policy=POLICY, now=WORKING_MORNING, tz=ZoneInfo("Asia/Shanghai"))

    assert (decision.action, decision.reason) == (ValveAction.close_now, Reason.close)


async def test_the_decision_never_closes_a_vulnerable_account(session: AsyncSession) -> None:
    account, household = await _at_close_line(session, vulnerable=True)

    decision = await valve_decision(session, account_id=account, household_id=household, closed_by_policy=False,
                                    policy=POLICY, now=WORKING_MORNING, tz=ZoneInfo("Asia/Shanghai"))

    assert (decision.action, decision.reason) == (ValveAction.never, Reason.vulnerable)


async def test_the_decision_leaves_an_account_no_longer_open_to_the_closing(session: AsyncSession) -> None:
    account, household = await _at_close_line(session)
    await session.execute(text("UPDATE accounts SET status = 'closed', closed_at = now() WHERE id = :id"), {"id": account})

    decision = await valve_decision(session, account_id=account, household_id=household, closed_by_policy=False,
                                    policy=POLICY, now=WORKING_MORNING, tz=ZoneInfo("Asia/Shanghai"))

    assert (decision.action, decision.reason) == (ValveAction.never, Reason.account_closed)
