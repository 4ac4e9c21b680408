"""The events billing owns (DESIGN.md, "Events"): ``account.threshold_crossed``, emitted
by the ledger, and ``bill.issued``, emitted by every billing run that issued bills (and by
a final bill or a re-issue)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from backend.billing.models import AlertState
from backend.events.payloads import event_payload


@event_payload("account.threshold_crossed")
@dataclass(frozen=True, slots=True)
class AccountThresholdCrossed:
    """Entries moved these master-station prepaid accounts into ``to_state`` (normal,
    alert or close), in either direction: one event per state reached and per posting
    (a settlement of 100k accounts emits at most three). ``account_ids`` and
    ``household_ids`` are parallel. A consumer (messages, the valve) acts on the
    account's state when it runs, which may have moved on since."""

    account_ids: tuple[int, ...]
    household_ids: tuple[int, ...]
    to_state: AlertState


@event_payload("bill.issued")
@dataclass(frozen=True, slots=True)
class BillIssued:
    """Bills were issued for ``period`` (the first day of the period's first month): one
    event per run (or final bill, or re-issue), ``bill_ids`` and ``account_ids`` parallel.
    Consumers (缴费通知 messages) read amounts and due dates by id when they run: a bill
    may have been paid or voided since."""

    bill_ids: tuple[int, ...]
    account_ids: tuple[int, ...]
    period: date
