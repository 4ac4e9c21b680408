"""Late fees (滞纳金): computed on read from the overdue days, never stored per day.

The arithmetic (this module's pure part, shared by queries, payments and the month-end
posting so "the fee on read" and "the fee posted" can never disagree):

- A bill accrues from the day after its ``due_date``: each day, ``late_fee_rate`` times
  the principal still owed that day. The owed principal changes only when money is
  allocated to the bill, and each allocation first folds the fee accrued so far into
  ``late_fee_carried`` (exact fen, not rounded) and moves ``late_fee_from`` to its day,
  so accrual is exact across partial payments.
- The fee on day ``D`` is ``min(cap, round_half_up(carried + owed × rate × days))``, with
  ``days`` the days from ``max(due_date, late_fee_from)`` to ``D``. A fee on day ``D``
  counts the days up to and including ``D`` that are after the due date: a bill due on
  the 15th owes one day's fee on the 16th.
- A waived bill's fee stops where it stood: ``late_fee_paid_fen + late_fee_waived_fen``.
- What is still owed of the fee is the fee minus what was paid and waived; what a
  posting writes is the fee minus what was posted (and waived).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

__all__ = ["LateFeeState", "accrued_exact", "carry_to", "late_fee_on", "late_fee_owed_on", "late_fee_unposted_on"]


@dataclass(frozen=True, slots=True)
class LateFeeState:
    """The columns of a bill the arithmetic reads (``backend.billing.bills_models.Bill``)."""

    amount_fen: int
    principal_paid_fen: int
    due_date: date
    late_fee_rate: Decimal
    late_fee_cap_fen: int
    late_fee_carried: Decimal
    late_fee_from: date | None
    late_fee_posted_fen: int
    late_fee_paid_fen: int
    late_fee_waived_fen: int
    waived: bool
    voided: bool = False

    @classmethod
    def of(cls, bill: Any) -> LateFeeState:
        """The state of a bill: a model, or a database record with the same names."""
        get = bill.__getitem__ if hasattr(bill, "keys") else (lambda name: getattr(bill, name))
        return cls(
            amount_fen=int(get("amount_fen")),
            principal_paid_fen=int(get("principal_paid_fen")),
            due_date=get("due_date"),
            late_fee_rate=Decimal(get("late_fee_rate")),
            late_fee_cap_fen=int(get("late_fee_cap_fen")),
            late_fee_carried=Decimal(get("late_fee_carried")),
            late_fee_from=get("late_fee_from"),
            late_fee_posted_fen=int(get("late_fee_posted_fen")),
            late_fee_paid_fen=int(get("late_fee_paid_fen")),
            late_fee_waived_fen=int(get("late_fee_waived_fen")),
            waived=get("late_fee_waived_at") is not None,
            voided=str(get("status")) in {"voided", "BillStatus.voided"},
        )


def accrued_exact(state: LateFeeState, day: date) -> Decimal:
    """The fee accrued by the end of ``day`` in exact fen, before the cap and rounding."""
    start = max(state.due_date, state.late_fee_from) if state.late_fee_from else state.due_date
    days = max(0, (day - start).days)
    owed = state.amount_fen - state.principal_paid_fen
    return state.late_fee_carried + owed * state.late_fee_rate * days


def late_fee_on(state: LateFeeState, day: date) -> int:
    """The bill's whole late fee on ``day`` in fen (paid, posted or not): capped, rounded
    half up once; frozen at what was paid and waived once waived; 0 for a voided bill."""
    if state.voided:
        return 0
    if state.waived:
        return state.late_fee_paid_fen + state.late_fee_waived_fen
    exact = accrued_exact(state, day).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return min(state.late_fee_cap_fen, int(exact))


def late_fee_owed_on(state: LateFeeState, day: date) -> int:
    """What the customer still owes of the late fee on ``day``."""
    if state.voided or state.waived:
        return 0
    return late_fee_on(state, day) - state.late_fee_paid_fen


def late_fee_unposted_on(state: LateFeeState, day: date) -> int:
    """What a posting on ``day`` writes as a ``late_fee`` entry: accrued and not posted."""
    if state.voided or state.waived:
        return 0
    return max(0, late_fee_on(state, day) - state.late_fee_posted_fen)


def carry_to(state: LateFeeState, day: date) -> tuple[Decimal, date]:
    """``(late_fee_carried, late_fee_from)`` to store before the owed principal changes on
    ``day`` (an allocation, or its undoing), so later days accrue on the new amount."""
    if day <= state.due_date and state.late_fee_from is None:
        return state.late_fee_carried, state.due_date
    start = max(state.due_date, state.late_fee_from) if state.late_fee_from else state.due_date
    if day <= start:
        return state.late_fee_carried, start
    return accrued_exact(state, day), day
