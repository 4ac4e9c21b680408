"""Reading review (抄表审核): ``readingReviews`` and ``prepareReadingReview``,
``approveReading``, ``adjustReading``, ``estimateReading``, ``reopenReadingReview``; each
mutation one transaction with its audit entry under the ``review`` menu. The rules live in
``backend.billing.review``."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.billing import review
from backend.billing.models import ReadingReview, ReviewState
from backend.clock import utcnow
from backend.graphql.errors import UserError
from backend.graphql.mutations import run_mutation
from backend.graphql.pagination import Connection, PageRequest
from backend.graphql.permissions import Requires
from backend.graphql.relay import Node, decode_id, encode_id

READ = [Requires("review:read")]
DECIDE = [Requires("review:decide")]

ReviewStateEnum = strawberry.enum(ReviewState, name="ReviewState", description="待审核 / 已核准 / 已调整 / 已估算")


@strawberry.type(name="ReviewMeter", description="A current meter of the held household and its newest reading.")
class ReviewMeterType:
    meter_id: strawberry.ID
    code: str
    last_read_at: datetime | None
    last_total_m3: Decimal | None = strawberry.field(description="累积流量 of the newest reading (m³).")


@strawberry.type(name="ReviewReading", description="A reading a review decision wrote.")
class ReviewReadingType:
    meter_id: strawberry.ID
    read_at: datetime
    total_m3: Decimal
    quality: str = strawberry.field(description="manual (entered), actual/manual (corrected) or estimated.")
    previous_total_m3: Decimal | None = strawberry.field(description="The total it replaced, if any.")


@strawberry.type(name="ReadingReview", description="抄表审核: a postpaid account's period held for review, why, "
                 "and its decision. Pending ones are not billed.")
class ReadingReviewType(Node):
    account_id: strawberry.ID
    household_id: strawberry.ID
    account_no: str = strawberry.field(description="缴费号 of the household.")
    household_name: str
    period: str = strawberry.field(description="YYYY-MM")
    state: ReviewStateEnum  # type: ignore[valid-type]
    alarm_kinds: list[str] = strawberry.field(description="Meter alarm kinds open in the period (a reason to hold).")
    missing_reading: bool = strawberry.field(
        description="A current meter had no actual or manual reading in the period's last 3 days.")
    meters: list[ReviewMeterType]
    decided_by: str | None
    decided_at: datetime | None
    decision_reason: str | None
    readings: list[ReviewReadingType] = strawberry.field(description="Readings written by the decisions, in order.")
    created_at: datetime

    @classmethod
    def of(cls, row: review.ReviewRow) -> ReadingReviewType:
        r: ReadingReview = row.review
        assert r.id is not None
        return cls(
            id=encode_id("ReadingReview", r.id), account_id=encode_id("Account", r.account_id),
            household_id=encode_id("Household", row.household_id), account_no=row.account_no,
            household_name=row.household_name, period=f"{r.period:%Y-%m}", state=r.state,
            alarm_kinds=list(r.alarm_kinds), missing_reading=r.missing_reading,
            meters=[ReviewMeterType(meter_id=encode_id("Meter", m.meter_id), code=m.code, last_read_at=m.last_read_at,
                                    last_total_m3=m.last_total_m3) for m in row.meters],
            decided_by=r.decided_by, decided_at=r.decided_at, decision_reason=r.decision_reason,
            readings=[_written(w) for w in r.readings], created_at=r.created_at,
        )


def _written(entry: dict[str, Any]) -> ReviewReadingType:
    previous = entry.get("previous_total_m3")
    return ReviewReadingType(meter_id=encode_id("Meter", entry["meter_id"]),
                             read_at=datetime.fromisoformat(entry["read_at"]), total_m3=Decimal(entry["total_m3"]),
                             quality=entry["quality"], previous_total_m3=Decimal(previous) if previous else None)


async def fetch_review(context: Any, pk: int) -> ReadingReviewType | None:
    principal = context.principal
    if principal is None or not principal.has("review:read"):
        return None
    async with context.read() as session:
        found = await review.review_page(session, period=None, review_id=pk, scope_patterns=principal.scope_patterns(),
                                         offset=0, limit=1)
    return ReadingReviewType.of(found.rows[0]) if found.rows else None


@strawberry.type
class ReadingReviewPayload:
    review: ReadingReviewType | None
    errors: list[UserError]


@strawberry.type
class PrepareReadingReviewPayload:
    created: int = strawberry.field(description="Accounts newly held for review (decided rows are never reset).")
    errors: list[UserError]


def _scope(info: Info) -> list[str]:
    return info.context.caller.scope_patterns()  # type: ignore[no-any-return]


def _period(period: str) -> date:
    return review.parse_period(period)


async def _decided(info: Info, action: str, describe: str,
                   decide: Any) -> ReadingReviewPayload:
    """Run one decision and answer with the review as the list shows it."""
    async def work(session: AsyncSession) -> review.ReviewRow:
        decided: ReadingReview = await decide(session)
        await session.flush()
        assert decided.id is not None
        found = await review.review_page(session, period=None, review_id=decided.id, scope_patterns=None,
                                         offset=0, limit=1)
        return found.rows[0]

    def payload(row: review.ReviewRow | None, errors: list[UserError]) -> ReadingReviewPayload:
        return ReadingReviewPayload(review=ReadingReviewType.of(row) if row is not None else None, errors=errors)

    def sentence(row: review.ReviewRow | None) -> str:
        return f"{describe} {row.account_no} {row.review.period:%Y-%m}" if row is not None else describe

    return await run_mutation(info, action=action, describe=sentence, payload=payload, work=work)


@strawberry.type
class Query:
    @strawberry.field(permission_classes=READ, description="抄表审核 list: the period's (YYYY-MM) reviews in your "
                      "scope, of an area subtree and in a state, by account number.")
    async def reading_reviews(self, info: Info, period: str, area_id: strawberry.ID | None = None,
                              state: ReviewStateEnum | None = None,  # type: ignore[valid-type]
                              first: int | None = None, after: str | None = None) -> Connection[ReadingReviewType]:
        page = PageRequest.from_args(first, after)
        async with info.context.read() as session:
            found = await review.review_page(
                session, period=_period(period),
                area_id=decode_id(area_id, "Area", field="areaId") if area_id is not None else None,
                state=ReviewState(state) if state is not None else None, scope_patterns=_scope(info),
                offset=page.offset, limit=page.limit)
        return Connection.from_page([ReadingReviewType.of(row) for row in found.rows], total=found.total,
                                    offset=page.offset)


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=DECIDE, description="Hold the period's (YYYY-MM) postpaid accounts of "
                         "the area's subtree (default: your scope) whose meters had an alarm open in the period or "
                         "no reading in its last 3 days; re-running adds only new ones.")
    async def prepare_reading_review(self, info: Info, period: str,
                                     area_id: strawberry.ID | None = None) -> PrepareReadingReviewPayload:
        async def work(session: AsyncSession) -> int:
            return await review.prepare_review(
                session, period=_period(period),
                area_id=decode_id(area_id, "Area", field="areaId") if area_id is not None else None,
                now=utcnow(), tz=info.context.settings.tz, scope_patterns=_scope(info))

        def payload(created: int | None, errors: list[UserError]) -> PrepareReadingReviewPayload:
            return PrepareReadingReviewPayload(created=created or 0, errors=errors)

        return await run_mutation(info, action="prepareReadingReview",
                                  describe=lambda created: f"生成抄表审核 {period}" + (
                                      f" ({created} 户)" if created is not None else ""),
                                  payload=payload, work=work)

    @strawberry.mutation(permission_classes=DECIDE, description="核准: bill the period's readings as they are. "
                         "REVIEW_DECIDED unless pending.")
    async def approve_reading(self, info: Info, review_id: strawberry.ID,
                              reason: str | None = None) -> ReadingReviewPayload:
        async def decide(session: AsyncSession) -> ReadingReview:
            return await review.approve_review(session, review_id=decode_id(review_id, "ReadingReview", field="reviewId"),
                                               reason=reason, by=info.context.caller.name, now=utcnow(),
                                               scope_patterns=_scope(info))

        return await _decided(info, "approveReading", "核准抄表", decide)

    @strawberry.mutation(permission_classes=DECIDE, description="调整: store the meter's period-end reading "
                         "(readAt: default the period end, inside the period) by hand, with a reason; an actual or "
                         "manual reading there is corrected, else a manual one entered.")
    async def adjust_reading(self, info: Info, review_id: strawberry.ID, meter_id: strawberry.ID, total_m3: Decimal,
                             reason: str, read_at: datetime | None = None,
                             confirm_lower: bool = False) -> ReadingReviewPayload:
        async def decide(session: AsyncSession) -> ReadingReview:
            return await review.adjust_review(
                session, review_id=decode_id(review_id, "ReadingReview", field="reviewId"),
                meter_id=decode_id(meter_id, "Meter", field="meterId"), total_m3=total_m3, read_at=read_at,
                reason=reason, by=info.context.caller.name, now=utcnow(), tz=info.context.settings.tz,
                scope_patterns=_scope(info), confirm_lower=confirm_lower)

        return await _decided(info, "adjustReading", f"调整抄表读数为 {total_m3}", decide)

    @strawberry.mutation(permission_classes=DECIDE, description="估算: an estimated reading on the period's last day "
                         "from each meter's average. NOTHING_TO_ESTIMATE when none can be made.")
    async def estimate_reading(self, info: Info, review_id: strawberry.ID,
                               reason: str | None = None) -> ReadingReviewPayload:
        async def decide(session: AsyncSession) -> ReadingReview:
            return await review.estimate_review(session, review_id=decode_id(review_id, "ReadingReview", field="reviewId"),
                                                reason=reason, by=info.context.caller.name, now=utcnow(),
                                                tz=info.context.settings.tz, scope_patterns=_scope(info))

        return await _decided(info, "estimateReading", "估算抄表读数", decide)

    @strawberry.mutation(permission_classes=DECIDE, description="退回: a decided review back to pending, with a "
                         "reason. REVIEW_NOT_DECIDED for a pending one.")
    async def reopen_reading_review(self, info: Info, review_id: strawberry.ID, reason: str) -> ReadingReviewPayload:
        async def decide(session: AsyncSession) -> ReadingReview:
            return await review.reopen_review(session, review_id=decode_id(review_id, "ReadingReview", field="reviewId"),
                                              reason=reason, by=info.context.caller.name, now=utcnow(),
                                              scope_patterns=_scope(info))

        return await _decided(info, "reopenReadingReview", "退回抄表审核", decide)


NODES = {"ReadingReview": fetch_review}

__all__ = ["NODES", "Mutation", "Query"]
