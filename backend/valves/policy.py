"""The valve policy: a pure decision over an account's current state, the time and the
calendar, with no I/O (its inputs are read by ``backend.valves.inputs``).

A master-station prepaid account whose balance fell to its close line
(``account.threshold_crossed`` with ``to_state=close``, owned by billing) has its valve
closed, humanely:

- never for a ``vulnerable`` account (特殊困难户), a closed account, or with the policy
  switched off (``SHUIWU_VALVE_ENABLED=false``);
- only once at least ``min_delivered_alerts`` of its balance alerts reached the resident
  (an SMS or a push delivered) since it last went into alert; while fewer have and some
  are still being sent, look again later; when none is on its way, never (staff decide);
- not in quiet hours (default 20:00–08:00 in the utility's zone), and not on a day off:
  Saturdays, Sundays and public holidays are days off, 调休 make-up days are working days
  (``backend.calendar``). Outside that window the decision is to look again at the
  window's next opening.

An account back at ``normal`` or ``alert`` whose valve the policy closed gets it opened
at once, whatever the hour or day and even with the policy switched off: water comes
back as soon as the money does. A valve closed by staff is left to staff.

The decision is made on the account's state when the job runs, not the event's
(DESIGN.md "Contracts": handlers acting outside the database act on current state).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from backend.billing.models import AlertState
from backend.valves.settings import ValveSettings

# How far ahead the policy looks for a working day (春节 with its weekends is ~9 days off).
LOOKAHEAD_DAYS = 21


class ValveAction(StrEnum):
    close_now = "close_now"
    open_now = "open_now"
    retry = "retry"  # look again at ``retry_at``
    never = "never"  # nothing to do for this event


class Reason(StrEnum):
    close = "close"
    reopen = "reopen"
    disabled = "disabled"
    account_closed = "account_closed"
    vulnerable = "vulnerable"
    already_closed = "already_closed"
    above_close_line = "above_close_line"
    alerts_pending = "alerts_pending"
    alerts_undelivered = "alerts_undelivered"
    quiet_hours = "quiet_hours"
    day_off = "day_off"
    no_working_day_ahead = "no_working_day_ahead"


# Chinese and English texts of each reason; {delivered} and {required} are the alert counts.
_TEXTS: dict[Reason, tuple[str, str]] = {
    Reason.close: ("余额已到关阀线，提醒已送达 {delivered} 次，关阀",
                   "balance at the close line and {delivered} alerts delivered: close the valve"),
    Reason.reopen: ("余额已恢复，打开由策略关闭的阀门", "balance restored: open the valve the policy closed"),
    Reason.disabled: ("自动关阀已停用", "automatic valve closing is switched off"),
    Reason.account_closed: ("账户已销户，由销户流程处理阀门", "the account is closed; closing it handles the valve"),
    Reason.vulnerable: ("特殊困难户，不自动关阀", "vulnerable account: its valve is never closed automatically"),
    Reason.already_closed: ("阀门已由策略关闭", "the valve is already closed by the policy"),
    Reason.above_close_line: ("余额未到关阀线，且阀门不是策略关闭的", "balance above the close line and no valve the policy closed"),
    Reason.alerts_pending: ("提醒仅送达 {delivered} 次（需 {required} 次），仍有提醒在发送，稍后再看",
                            "only {delivered} of {required} alerts delivered and some still on their way: look again later"),
    Reason.alerts_undelivered: ("提醒仅送达 {delivered} 次（需 {required} 次），且没有待发送的提醒，请人工处理",
                                "only {delivered} of {required} alerts delivered and none on its way: left to staff"),
    Reason.quiet_hours: ("夜间不关阀，到时再看", "no closing at night: look again when the night ends"),
    Reason.day_off: ("周末和节假日不关阀，下个工作日再看", "no closing on weekends or holidays: look again on the next working day"),
    Reason.no_working_day_ahead: (f"未来 {LOOKAHEAD_DAYS} 天没有工作日，到时再看",
                                  f"no working day in the next {LOOKAHEAD_DAYS} days: look again then"),
}


@dataclass(frozen=True, slots=True)
class ValveDecision:
    action: ValveAction
    reason: Reason
    message: str
    message_en: str
    retry_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class AccountValveState:
    """What the policy needs to know about one account when its job runs."""

    state: AlertState  # the account's alert_state now
    account_open: bool
    vulnerable: bool
    # The policy's own valve-close for this account is in effect (remote_commands: the
    # last valve command for its meters was the policy's close, and it succeeded).
    closed_by_policy: bool
    # Balance alerts that reached the resident since it last went into alert, and those
    # still being sent (backend.valves.inputs.alert_deliveries).
    delivered_alerts: int
    pending_alerts: int


@dataclass(frozen=True, slots=True)
class QuietHours:
    start: time
    end: time

    def contains(self, moment: time) -> bool:
        if self.start == self.end:
            return False
        if self.start < self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end


@dataclass(frozen=True, slots=True)
class ValvePolicy:
    enabled: bool
    quiet_hours: QuietHours
    min_delivered_alerts: int
    delivery_recheck: timedelta

    @classmethod
    def from_settings(cls, settings: ValveSettings) -> ValvePolicy:
        return cls(enabled=settings.enabled, quiet_hours=QuietHours(settings.quiet_start, settings.quiet_end),
                   min_delivered_alerts=settings.min_delivered_alerts,
                   delivery_recheck=timedelta(minutes=settings.delivery_recheck_minutes))


def lookahead(now: datetime, tz: ZoneInfo) -> tuple[date, date]:
    """The days (first and last, both included) whose working-day status
    :func:`decide_valve` needs: from today in the utility's zone, :data:`LOOKAHEAD_DAYS` on
    (a recheck may start tomorrow)."""
    today = now.astimezone(tz).date()
    return today, today + timedelta(days=LOOKAHEAD_DAYS + 1)


def decide_valve(
    account: AccountValveState, *, policy: ValvePolicy, now: datetime, tz: ZoneInfo, working_days: Mapping[date, bool],
) -> ValveDecision:
    """What to do with the account's valve now (module docstring). ``working_days`` holds
    at least the days of :func:`lookahead` (``backend.calendar.service.working_days``)."""
    if account.state is not AlertState.close:
        if account.closed_by_policy and account.account_open:
            return _decision(ValveAction.open_now, Reason.reopen)
        if not account.account_open:
            return _decision(ValveAction.never, Reason.account_closed)
        return _decision(ValveAction.never, Reason.above_close_line)
    for refused, reason in ((not account.account_open, Reason.account_closed),
                            (account.closed_by_policy, Reason.already_closed),
                            (account.vulnerable, Reason.vulnerable),
                            (not policy.enabled, Reason.disabled)):
        if refused:
            return _decision(ValveAction.never, reason)
    counts = {"delivered": account.delivered_alerts, "required": policy.min_delivered_alerts}
    if account.delivered_alerts < policy.min_delivered_alerts:
        if account.pending_alerts == 0:
            return _decision(ValveAction.never, Reason.alerts_undelivered, counts)
        later = next_close_window(now + policy.delivery_recheck, policy=policy, tz=tz, working_days=working_days)
        return _decision(ValveAction.retry, Reason.alerts_pending, counts,
                         retry_at=later or _after_lookahead(now, tz, working_days))
    window = next_close_window(now, policy=policy, tz=tz, working_days=working_days)
    if window is None:
        return _decision(ValveAction.retry, Reason.no_working_day_ahead, retry_at=_after_lookahead(now, tz, working_days))
    if window == now:
        return _decision(ValveAction.close_now, Reason.close, counts)
    today = now.astimezone(tz).date()
    reason = Reason.quiet_hours if working_days.get(today, True) else Reason.day_off
    return _decision(ValveAction.retry, reason, retry_at=window)


def next_close_window(
    at: datetime, *, policy: ValvePolicy, tz: ZoneInfo, working_days: Mapping[date, bool],
) -> datetime | None:
    """The first instant from ``at`` on that is on a working day and outside quiet hours
    (``at`` itself when it is); None when ``working_days`` runs out first."""
    local = at.astimezone(tz)
    day, moment, candidate = local.date(), local.time(), at
    while day in working_days:
        if working_days[day]:
            if not policy.quiet_hours.contains(moment):
                return candidate
            if policy.quiet_hours.end > moment:  # quiet ends later this same day (the morning after a night)
                return datetime.combine(day, policy.quiet_hours.end, tzinfo=tz)
        day, moment = day + timedelta(days=1), time(0, 0)
        candidate = datetime.combine(day, moment, tzinfo=tz)
    return None


def _after_lookahead(now: datetime, tz: ZoneInfo, working_days: Mapping[date, bool]) -> datetime:
    last = max((day for day in working_days), default=now.astimezone(tz).date())
    return datetime.combine(last + timedelta(days=1), time(0, 0), tzinfo=tz)


def _decision(action: ValveAction, reason: Reason, counts: Mapping[str, int] | None = None, *,
              retry_at: datetime | None = None) -> ValveDecision:
    message, message_en = _TEXTS[reason]
    values = counts or {}
    return ValveDecision(action, reason, message.format(**values), message_en.format(**values), retry_at)
