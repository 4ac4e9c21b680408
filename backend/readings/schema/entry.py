"""Readings people make: ``enterReading`` (抄表录入, the staff app's field reading),
``correctReading`` and ``estimateReadings``, each audited through run_mutation and
requiring readings:write; the service applies the caller's data scope.
(Uploads of manual reads are the plain HTTP route ``POST /imports/readings``.)"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.clock import utcnow
from backend.graphql.context import Context
from backend.graphql.errors import UserError
from backend.graphql.mutations import run_mutation
from backend.graphql.periods import FROM_DAY, TO_DAY
from backend.graphql.permissions import Requires
from backend.graphql.relay import decode_id, encode_id
from backend.readings import entry
from backend.readings.models import ReadingQuality
from backend.readings.service import IngestResult

WRITE = [Requires("readings:write")]
MODULE = "readings"

ReadingQualityEnum = strawberry.enum(
    ReadingQuality, name="ReadingQuality", description="实抄 (actual) / 人工录入 (manual) / 估算 (estimated), best first"
)


@strawberry.type(description="A reading as stored after an entry or a correction.")
class EnteredReading:
    meter_id: strawberry.ID
    read_at: datetime
    total_m3: Decimal = strawberry.field(description="The register total, m³ (4 places).")
    quality: ReadingQualityEnum  # type: ignore[valid-type]
    source: str = strawberry.field(description="Who or what delivered it: manual:<name>, correction:<name>, estimate, …")
    received_at: datetime

    @classmethod
    def from_stored(cls, reading: entry.StoredReading) -> EnteredReading:
        return cls(meter_id=encode_id("Meter", reading.meter_id), read_at=reading.read_at, total_m3=reading.total_m3,
                   quality=reading.quality, source=reading.source, received_at=reading.received_at)


@strawberry.input
class EnterReadingInput:
    meter_id: strawberry.ID
    read_at: datetime
    total_m3: Decimal = strawberry.field(description="The register total, m³, at most 4 places.")
    confirm_lower: bool = strawberry.field(
        default=False, description="Store it even though it is lower than the meter's previous reading."
    )
    photo_id: strawberry.ID | None = strawberry.field(
        default=None, description="The photoId POST /files/photos answered for a photo of the dial the caller uploaded; "
                                  "kept with the entry.")
    idempotency_key: str | None = strawberry.field(
        default=None,
        description="A client key (a UUID, at most 64 characters) so an entry synced twice is stored once: a replay answers "
                    "the stored reading as a duplicate; the key with another meter, time or total is IDEMPOTENCY_CONFLICT.")


@strawberry.type
class EnterReadingPayload:
    reading: EnteredReading | None = strawberry.field(
        description="What is stored for the meter at readAt: the new reading, or the better one already there (a duplicate)."
    )
    inserted: int
    replaced: int
    duplicates: int
    errors: list[UserError]


@strawberry.input
class CorrectReadingInput:
    meter_id: strawberry.ID
    read_at: datetime = strawberry.field(description="The instant of the stored reading to correct.")
    total_m3: Decimal = strawberry.field(description="The correct register total, m³, at most 4 places.")
    reason: str = strawberry.field(description="Why (required, at most 500 characters); kept in the operation log.")


@strawberry.type
class CorrectReadingPayload:
    reading: EnteredReading | None
    previous_total_m3: Decimal | None = strawberry.field(description="The total before the correction.")
    errors: list[UserError]


@strawberry.input
class EstimateReadingsInput:
    meter_ids: list[strawberry.ID] | None = None
    area_id: strawberry.ID | None = strawberry.field(default=None, description="Every installed or faulty meter under this area.")
    from_: date = strawberry.field(name="from", description=FROM_DAY)
    to: date = strawberry.field(description=f"{TO_DAY} Days after yesterday are not estimated.")


@strawberry.type
class EstimateReadingsPayload:
    estimated: int = strawberry.field(description="Estimated readings written (one per meter and silent day).")
    skipped: int = strawberry.field(
        description="Silent meter-days left alone: no earlier reading, or a later reading already bounds the gap."
    )
    errors: list[UserError]


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=WRITE, description="抄表录入: store one manual reading (quality manual).")
    async def enter_reading(self, info: Info, input: EnterReadingInput) -> EnterReadingPayload:
        context: Context = info.context
        principal = context.caller
        tz = context.settings.tz

        async def work(session: AsyncSession) -> tuple[IngestResult, entry.StoredReading | None]:
            meter_id = decode_id(input.meter_id, "Meter", field="meterId")
            photo = (entry.Photo(key=str(input.photo_id), owner_kind=principal.kind.value, owner_id=principal.id)
                     if input.photo_id is not None else None)
            result = await entry.enter_reading(
                session, meter_id=meter_id, read_at=input.read_at, total_m3=input.total_m3,
                by=principal.name, now=utcnow(), tz=tz, scope_patterns=principal.scope_patterns(),
                confirm_lower=input.confirm_lower, idempotency_key=input.idempotency_key, photo=photo,
                files=context.services.get("files"),
            )
            return result, await entry.stored_reading(session, meter_id=meter_id, read_at=input.read_at)

        def payload(done: Any, errors: list[UserError]) -> EnterReadingPayload:
            if done is None:
                return EnterReadingPayload(reading=None, inserted=0, replaced=0, duplicates=0, errors=errors)
            result, reading = done
            return EnterReadingPayload(
                reading=EnteredReading.from_stored(reading) if reading is not None else None,
                inserted=result.inserted, replaced=result.replaced, duplicates=result.duplicates, errors=errors,
            )

        def describe(done: Any) -> str:
            outcome = ""
            if done is not None:
                outcome = " (重复, 未改变)" if done[0].duplicates else ""
            return f"录入读数 {input.total_m3} ({input.read_at.astimezone(tz):%Y-%m-%d %H:%M}){outcome}"

        return await run_mutation(info, module=MODULE, action="enterReading", describe=describe, payload=payload, work=work)

    @strawberry.mutation(permission_classes=WRITE, description="Correct a stored reading's total (audited, old → new).")
    async def correct_reading(self, info: Info, input: CorrectReadingInput) -> CorrectReadingPayload:
        context: Context = info.context
        principal = context.caller
        tz = context.settings.tz

        async def work(session: AsyncSession) -> entry.Correction:
            return await entry.correct_reading(
                session, meter_id=decode_id(input.meter_id, "Meter", field="meterId"), read_at=input.read_at,
                total_m3=input.total_m3, reason=input.reason, by=principal.name, now=utcnow(), tz=tz,
                scope_patterns=principal.scope_patterns(),
            )

        def payload(correction: entry.Correction | None, errors: list[UserError]) -> CorrectReadingPayload:
            if correction is None:
                return CorrectReadingPayload(reading=None, previous_total_m3=None, errors=errors)
            return CorrectReadingPayload(reading=EnteredReading.from_stored(correction.reading),
                                         previous_total_m3=correction.previous_total, errors=errors)

        def describe(correction: entry.Correction | None) -> str:
            when = f"{input.read_at.astimezone(tz):%Y-%m-%d %H:%M:%S}"
            if correction is None:
                return f"更正读数 ({when})"
            return (f"更正读数 ({when}): {correction.previous_total} → {correction.reading.total_m3}, "
                    f"原因: {correction.reason[:200]}")

        return await run_mutation(info, module=MODULE, action="correctReading", describe=describe, payload=payload,
                                  work=work)

    @strawberry.mutation(permission_classes=WRITE,
                         description="Estimate the silent days of meters from their average daily use (quality estimated).")
    async def estimate_readings(self, info: Info, input: EstimateReadingsInput) -> EstimateReadingsPayload:
        context: Context = info.context
        principal = context.caller
        tz = context.settings.tz

        async def work(session: AsyncSession) -> entry.EstimationResult:
            meter_ids = ([decode_id(value, "Meter", field="meterIds") for value in input.meter_ids]
                         if input.meter_ids is not None else None)
            area_id = decode_id(input.area_id, "Area", field="areaId") if input.area_id is not None else None
            return await entry.estimate_readings(
                session, meter_ids=meter_ids, area_id=area_id, start=input.from_, end=input.to, now=utcnow(), tz=tz,
                scope_patterns=principal.scope_patterns(),
            )

        def payload(result: entry.EstimationResult | None, errors: list[UserError]) -> EstimateReadingsPayload:
            if result is None:
                return EstimateReadingsPayload(estimated=0, skipped=0, errors=errors)
            return EstimateReadingsPayload(estimated=result.estimated, skipped=result.skipped, errors=errors)

        def describe(result: entry.EstimationResult | None) -> str:
            counts = f": 估算 {result.estimated} 条, 跳过 {result.skipped}" if result is not None else ""
            return f"估算读数 {input.from_} 至 {input.to}{counts}"

        return await run_mutation(info, module=MODULE, action="estimateReadings", describe=describe, payload=payload,
                                  work=work)
