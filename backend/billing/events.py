"""The events billing owns (DESIGN.md, "Events"). ``bill.issued`` comes with the bills
(the Postpaid issue); ``account.threshold_crossed`` is emitted here, by the ledger."""

from __future__ import annotations

from dataclasses import dataclass

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
