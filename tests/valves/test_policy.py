"""The valve policy (backend.valves.policy): when an account at its close line has its
valve closed, when the policy looks again, and when a valve it closed opens again.

Days come from the chinese-calendar package's 2025 schedule: 国庆节 and 中秋节 are
1–8 October (a Wednesday to a Wednesday), with 调休 working days on Sunday 28 September
and Saturday 11 October."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from backend.billing.models import AlertState
from backend.calendar.service import package_rows, working_by_rows
from backend.domain import read_settings
from backend.settings import SettingsError
from backend.valves.policy import (
    LOOKAHEAD_DAYS,
    AccountValveState,
    QuietHours,
    Reason,
    ValveAction,
    ValveDecision,
    ValvePolicy,
    decide_valve,
    lookahead,
)
from backend.valves.settings import ValveSettings

SHANGHAI = ZoneInfo("Asia/Shanghai")
POLICY = ValvePolicy.from_settings(ValveSettings())
AT_CLOSE_LINE = AccountValveState(state=AlertState.close, account_open=True, vulnerable=False, closed_by_policy=False,
                                  delivered_alerts=2, pending_alerts=0)
_KINDS = {row.day: row.kind for row in package_rows([2025])}


def local(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=SHANGHAI)


def decide(account: AccountValveState, now: datetime, policy: ValvePolicy = POLICY) -> ValveDecision:
    first, last = lookahead(now, SHANGHAI)
    days = {first + timedelta(days=n): working_by_rows(first + timedelta(days=n), _KINDS.get(first + timedelta(days=n)))
            for n in range((last - first).days + 1)}
    return decide_valve(account, policy=policy, now=now, tz=SHANGHAI, working_days=days)


def test_a_working_morning_with_two_delivered_alerts_closes_now() -> None:
    now = local(2025, 10, 15, 10, 30).astimezone(UTC)  # a Wednesday, passed in UTC as a job's clock gives it

    decision = decide(AT_CLOSE_LINE, now)

    assert (decision.action, decision.reason, decision.retry_at) == (ValveAction.close_now, Reason.close, None)
    assert decision.message == "余额已到关阀线，提醒已送达 2 次，关阀"
    assert "2 alerts delivered" in decision.message_en


def test_at_night_it_looks_again_when_the_quiet_hours_end_the_next_morning() -> None:
    decision = decide(AT_CLOSE_LINE, local(2025, 10, 15, 21, 30))

    assert (decision.action, decision.reason) == (ValveAction.retry, Reason.quiet_hours)
    assert decision.retry_at == local(2025, 10, 16, 8, 0)


def test_before_dawn_it_looks_again_at_eight_the_same_day() -> None:
    assert decide(AT_CLOSE_LINE, local(2025, 10, 16, 6, 0)).retry_at == local(2025, 10, 16, 8, 0)


def test_friday_night_waits_for_monday_morning() -> None:
    decision = decide(AT_CLOSE_LINE, local(2025, 10, 17, 20, 0))  # quiet hours start at 20:00 sharp

    assert (decision.action, decision.retry_at) == (ValveAction.retry, local(2025, 10, 20, 8, 0))


def test_on_a_weekend_it_waits_for_the_next_working_morning() -> None:
    decision = decide(AT_CLOSE_LINE, local(2025, 10, 18, 10, 0))  # an ordinary Saturday

    assert (decision.action, decision.reason) == (ValveAction.retry, Reason.day_off)
    assert decision.retry_at == local(2025, 10, 20, 8, 0)


def test_a_make_up_working_saturday_counts_as_working() -> None:
    assert decide(AT_CLOSE_LINE, local(2025, 10, 11, 10, 0)).action is ValveAction.close_now


def test_a_public_holiday_waits_until_the_first_working_day_after_it() -> None:
    decision = decide(AT_CLOSE_LINE, local(2025, 10, 1, 10, 0))  # 国庆节, a Wednesday

    assert (decision.action, decision.reason) == (ValveAction.retry, Reason.day_off)
    assert decision.retry_at == local(2025, 10, 9, 8, 0)


def test_the_day_before_a_holiday_at_night_skips_the_whole_holiday() -> None:
    assert decide(AT_CLOSE_LINE, local(2025, 9, 30, 22, 0)).retry_at == local(2025, 10, 9, 8, 0)


def test_too_few_delivered_alerts_with_one_on_its_way_looks_again_after_the_recheck() -> None:
    waiting = replace(AT_CLOSE_LINE, delivered_alerts=1, pending_alerts=1)

    decision = decide(waiting, local(2025, 10, 15, 10, 0))

    assert (decision.action, decision.reason) == (ValveAction.retry, Reason.alerts_pending)
    assert decision.retry_at == local(2025, 10, 15, 11, 0)
    assert decision.message == "提醒仅送达 1 次（需 2 次），仍有提醒在发送，稍后再看"


def test_a_recheck_that_would_fall_at_night_moves_to_the_next_morning() -> None:
    waiting = replace(AT_CLOSE_LINE, delivered_alerts=0, pending_alerts=2)

    assert decide(waiting, local(2025, 10, 15, 19, 30)).retry_at == local(2025, 10, 16, 8, 0)


def test_too_few_delivered_alerts_and_none_on_its_way_is_left_to_staff() -> None:
    decision = decide(replace(AT_CLOSE_LINE, delivered_alerts=1), local(2025, 10, 15, 10, 0))

    assert (decision.action, decision.reason, decision.retry_at) == (ValveAction.never, Reason.alerts_undelivered, None)


def test_with_no_alerts_required_a_close_needs_none_delivered() -> None:
    policy = replace(POLICY, min_delivered_alerts=0)

    assert decide(replace(AT_CLOSE_LINE, delivered_alerts=0), local(2025, 10, 15, 10, 0), policy).action is ValveAction.close_now


@pytest.mark.parametrize(("account", "policy", "reason"), [
    (replace(AT_CLOSE_LINE, vulnerable=True), POLICY, Reason.vulnerable),
    (AT_CLOSE_LINE, replace(POLICY, enabled=False), Reason.disabled),
    (replace(AT_CLOSE_LINE, closed_by_policy=True), POLICY, Reason.already_closed),
    (replace(AT_CLOSE_LINE, account_open=False), POLICY, Reason.account_closed),
])
def test_an_account_the_policy_must_not_close_is_never_closed(
    account: AccountValveState, policy: ValvePolicy, reason: Reason,
) -> None:
    decision = decide(account, local(2025, 10, 15, 10, 0), policy)

    assert (decision.action, decision.reason) == (ValveAction.never, reason)


@pytest.mark.parametrize("state", [AlertState.normal, AlertState.alert])
def test_back_above_the_close_line_reopens_a_valve_the_policy_closed_at_any_hour_even_switched_off(
    state: AlertState,
) -> None:
    closed = replace(AT_CLOSE_LINE, state=state, closed_by_policy=True)

    decision = decide(closed, local(2025, 10, 1, 23, 0), replace(POLICY, enabled=False))  # a holiday night

    assert (decision.action, decision.reason) == (ValveAction.open_now, Reason.reopen)


@pytest.mark.parametrize("state", [AlertState.normal, AlertState.alert])
def test_back_above_the_close_line_leaves_a_valve_the_policy_did_not_close(state: AlertState) -> None:
    decision = decide(replace(AT_CLOSE_LINE, state=state), local(2025, 10, 15, 10, 0))

    assert (decision.action, decision.reason) == (ValveAction.never, Reason.above_close_line)


def test_with_no_working_day_in_sight_it_looks_again_after_the_days_it_knows() -> None:
    now = local(2025, 10, 15, 10, 0)
    days = {date(2025, 10, 15) + timedelta(days=n): False for n in range(LOOKAHEAD_DAYS + 2)}

    decision = decide_valve(AT_CLOSE_LINE, policy=POLICY, now=now, tz=SHANGHAI, working_days=days)

    assert (decision.action, decision.reason) == (ValveAction.retry, Reason.no_working_day_ahead)
    assert decision.retry_at == local(2025, 11, 7, 0, 0)  # the day after the last one known (6 November)


def test_quiet_hours_may_be_within_one_day_or_switched_off() -> None:
    lunch = QuietHours(time(12, 0), time(14, 0))
    none = QuietHours(time(8, 0), time(8, 0))

    assert [lunch.contains(time(h)) for h in (11, 12, 13, 14)] == [False, True, True, False]
    assert not any(none.contains(time(h)) for h in range(24))
    assert decide(AT_CLOSE_LINE, local(2025, 10, 15, 13, 0), replace(POLICY, quiet_hours=lunch)).retry_at == \
        local(2025, 10, 15, 14, 0)


def test_settings_are_read_from_shuiwu_valve_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHUIWU_VALVE_QUIET_START", "21:30")
    monkeypatch.setenv("SHUIWU_VALVE_MIN_DELIVERED_ALERTS", "3")
    monkeypatch.setenv("SHUIWU_VALVE_ENABLED", "false")

    policy = ValvePolicy.from_settings(read_settings(ValveSettings))

    assert policy.quiet_hours == QuietHours(time(21, 30), time(8, 0))
    assert (policy.min_delivered_alerts, policy.enabled) == (3, False)
    monkeypatch.setenv("SHUIWU_VALVE_MIN_DELIVERED_ALERTS", "-1")
    with pytest.raises(SettingsError, match="SHUIWU_VALVE_MIN_DELIVERED_ALERTS"):
        read_settings(ValveSettings)
