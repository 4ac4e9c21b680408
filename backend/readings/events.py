"""The events the readings domain owns (DESIGN.md, "Events"); alarms' are in
``backend/readings/alarms/events.py``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from backend.events.payloads import event_payload


@event_payload("readings.ingested")
@dataclass(frozen=True, slots=True)
class ReadingsIngested:
    """Readings were written: an ingest batch (acquisition, manual entry, imports) that
    stored anything, or a correction of stored readings. ``meter_ids`` are the meters
    whose readings changed; ``first_read_at`` and ``last_read_at`` the earliest and
    latest ``read_at`` written, so a consumer (billing's settlement) can settle every
    cycle a late or backfilled batch touches."""

    batch_id: str
    meter_ids: tuple[int, ...]
    first_read_at: datetime
    last_read_at: datetime
