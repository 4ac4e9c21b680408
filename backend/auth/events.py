"""The events the auth domain owns (DESIGN.md, "Events")."""

from __future__ import annotations

from dataclasses import dataclass

from backend.auth.models import BindingState
from backend.events.payloads import event_payload


@event_payload("household.bound")
@dataclass(frozen=True, slots=True)
class HouseholdBound:
    """A resident's binding to a household changed state (requested, approved, rejected
    or unbound): one event per change, keyed ``household:<id>``."""

    household_id: int
    resident_id: int
    state: BindingState
