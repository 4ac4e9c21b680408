"""The latest readings of chosen meters, live (``meterReadings``, staff): fed by
``readings.ingested``, narrowed to the meters asked for that lie in the caller's scope,
and **batched**: each meter goes out at most once per :data:`METER_INTERVAL_S`; readings
of a meter that arrive sooner wait, the newest replacing the older (coalesced), and go
out when its second is up (``backend.graphql.subscriptions.at_most_one_per_key``).

An item's ``eventId`` is the greatest event taken so far, so ids never go down; a reading
still waiting (under a second) when the client disconnects is not replayed on resume past
that id: a client reloads the meters' latest readings through the list query when it
reconnects, as after ``REPLAY_TOO_LONG``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from datetime import datetime
from decimal import Decimal
from typing import Any

import strawberry
from sqlalchemy import text
from strawberry.types import Info

from backend.errors import BadUserInput
from backend.events.service import Event, payload_of
from backend.graphql.context import Context
from backend.graphql.limits import Cost
from backend.graphql.permissions import Requires
from backend.graphql.relay import decode_id, encode_id
from backend.graphql.subscriptions import SubscriptionEvent, at_most_one_per_key, event_items, parse_event_id
from backend.readings.events import ReadingsIngested
from backend.readings.schema.entry import ReadingQualityEnum

# At most one update per meter per this many seconds.
METER_INTERVAL_S = 1.0
# The most meters one subscription follows.
MAX_METERS = 200

_LATEST = text(
    """
    SELECT m.id, m.code, lr.read_at, lr.total_m3, lr.quality
    FROM latest_readings lr JOIN meters m ON m.id = lr.meter_id JOIN areas a ON a.id = m.area_id
    WHERE lr.meter_id = ANY(CAST(:ids AS bigint[])) AND a.path LIKE ANY(CAST(:patterns AS text[]))
    ORDER BY m.id
    """
)


@strawberry.type(name="LiveMeterReading", description="A meter's latest reading.")
class LiveMeterReading:
    meter_id: strawberry.ID
    meter_code: str
    read_at: datetime
    value: Decimal = strawberry.field(description="The register total (m³).")
    quality: ReadingQualityEnum  # type: ignore[valid-type]


@strawberry.type(description="Latest readings of the meters you follow (at most one per meter per second).")
class MeterReadingsEvent(SubscriptionEvent):
    readings: list[LiveMeterReading] = strawberry.field(extensions=[Cost(items=MAX_METERS)])


async def _latest_of(context: Context, event: Event, *, chosen: frozenset[int]) -> tuple[int, list[tuple[int, Any]]] | None:
    written = payload_of(event, ReadingsIngested)
    wanted = sorted(chosen.intersection(written.meter_ids))
    if not wanted:
        return None
    async with context.read() as session:
        rows = (await session.execute(_LATEST, {"ids": wanted,
                                                "patterns": context.caller.scope_patterns()})).all()
    if not rows:
        return None
    return event.id, [(row.id, LiveMeterReading(meter_id=encode_id("Meter", row.id), meter_code=row.code,
                                                read_at=row.read_at, value=row.total_m3, quality=row.quality))
                      for row in rows]


async def _batched(context: Context, chosen: frozenset[int], after: int | None, *, interval_s: float,
                   ) -> AsyncGenerator[MeterReadingsEvent, None]:
    async def visible(context: Context, event: Event) -> Any:
        return await _latest_of(context, event, chosen=chosen)

    updates: AsyncGenerator[Any, None] = event_items(context, kinds=("readings.ingested",), permission="readings:read",
                                                     after=after, visible=visible)
    async for event_id, readings in at_most_one_per_key(updates, interval_s=interval_s, clock=time.monotonic):
        yield MeterReadingsEvent(event_id=strawberry.ID(str(event_id)),
                                 readings=sorted(readings, key=lambda r: r.meter_code))


@strawberry.type
class Subscription:
    @strawberry.subscription(
        permission_classes=[Requires("readings:read")],
        description=f"The latest reading of each of meterIds (at most {MAX_METERS}) in your scope, as readings are "
        f"written: batched, at most one update per meter per second (the newest wins). With afterEventId, the "
        "stored ingests after it come first.")
    async def meter_readings(
        self, info: Info, meter_ids: list[strawberry.ID], after_event_id: strawberry.ID | None = None,
    ) -> AsyncGenerator[MeterReadingsEvent, None]:
        after = parse_event_id(after_event_id)
        if not 0 < len(meter_ids) <= MAX_METERS:
            raise BadUserInput(f"须选择 1-{MAX_METERS} 个水表", f"Follow 1 to {MAX_METERS} meters", field="meterIds")
        chosen = frozenset(decode_id(meter, "Meter", field="meterIds") for meter in meter_ids)
        return _batched(info.context, chosen, after, interval_s=METER_INTERVAL_S)
