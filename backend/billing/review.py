"""Reading review (抄表审核): before a postpaid period is billed, the accounts whose
readings look wrong or are missing are held for a person to decide.

**Held.** :func:`prepare_review` writes a ``pending`` row of ``reading_reviews`` for every
open postpaid account (of an area subtree) whose household's current meters had a meter
alarm open at any time in the period (opened before its end, not closed before its
start), or had no reading (actual or manual: an estimate is no reading) in the last 3
days of the period ``[end − 3 days, end]``, both in the utility's zone (docs/periods.md).
Both reasons are kept. It is one ``INSERT … SELECT … ON CONFLICT DO NOTHING``: re-running
adds the accounts held since and never touches a row already there, decided or not.

**Decided.** A reviewer approves the readings as they are, adjusts the period-end
reading (through the readings domain: :func:`backend.readings.entry.correct_reading`
when an actual or manual reading stands at that instant, else
:func:`backend.readings.entry.enter_reading`, whose manual reading supersedes an estimate),
or estimates it from the meter's average (:func:`backend.readings.entry.estimate_readings`
for the period's last day). A decided row is REVIEW_DECIDED until :func:`reopen_review`
puts it back to ``pending``. Each decision is one transaction with its audit entry (the
schema's mutations); a refusal writes nothing.

**Billed.** The billing run asks :func:`billable_accounts` (open postpaid accounts without
a pending row for the period or an earlier one: an earlier period is decided and billed
first) and :func:`held_accounts` (those with one, its earliest), or embeds
:data:`NOT_HELD_SQL` in its own statement; it runs :func:`prepare_review` first.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.billing.models import ReadingReview, ReviewState
from backend.billing.scope import area_path_in_scope, patterns_param
from backend.db import custom_plans
from backend.errors import DomainError, ErrorCode, NotFound
from backend.readings.entry import (
    ESTIMATE_TIME,
    checked_reason,
    correct_reading,
    enter_reading,
    estimate_readings,
    stored_reading,
)
from backend.readings.models import ReadingQuality
from backend.readings.partitions import DEFAULT_TIMEZONE, as_zone

__all__ = [
    "MISSING_READING_DAYS", "NOT_HELD_SQL", "HeldAccount", "ReviewDecided", "ReviewMeter", "ReviewNotDecided",
    "ReviewRow", "adjust_review", "approve_review", "billable_accounts", "estimate_review", "held_accounts",
    "parse_period", "period_bounds", "prepare_review", "reopen_review", "review_page",
]

# A meter is held when its last reading before the period end is older than this.
MISSING_READING_DAYS = 3
_PERIOD = re.compile(r"(\d{4})-(\d{2})")


class ReviewDecided(DomainError):
    code = ErrorCode.REVIEW_DECIDED
    message = "该抄表审核已处理; 如需重新处理请先退回"
    message_en = "This review is already decided; reopen it to decide again"


class ReviewNotDecided(DomainError):
    code = ErrorCode.REVIEW_NOT_DECIDED
    message = "该抄表审核尚未处理, 无需退回"
    message_en = "This review is still pending; there is nothing to reopen"


class NothingToEstimate(DomainError):
    code = ErrorCode.NOTHING_TO_ESTIMATE
    message = "无法估算: 期末已有读数, 或表计没有可据以估算的历史读数; 请核准或调整"
    message_en = "Nothing to estimate: the period end has a reading, or the meter has no history to estimate from; " \
                 "approve or adjust instead"


# --------------------------------------------------------------------------- periods


def parse_period(period: str, *, field: str = "period") -> date:
    """'YYYY-MM' as the period's first day; INVALID otherwise."""
    match = _PERIOD.fullmatch(period.strip())
    if match is None or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1:
        raise DomainError("账期格式须为 YYYY-MM", "A period looks like YYYY-MM", field=field, code=ErrorCode.INVALID)
    return date(int(match.group(1)), int(match.group(2)), 1)


def _next_month(first: date, months: int = 1) -> date:
    index = first.year * 12 + first.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def period_bounds(period: date, tz: str | tzinfo = DEFAULT_TIMEZONE, *, months: int = 1) -> tuple[datetime, datetime]:
    """The period's instants ``[start, end)``: its first day's and the first day after its
    ``months`` months' midnight in the utility's zone (a bimonthly area's period spans two)."""
    zone = as_zone(tz)
    first = period.replace(day=1)
    return (datetime.combine(first, time(), tzinfo=zone),
            datetime.combine(_next_month(first, months), time(), tzinfo=zone))


def _checked_period(period: date) -> date:
    if period.day != 1:
        raise DomainError("账期须为某月 1 日", "A period is given as its month's first day", field="period",
                          code=ErrorCode.INVALID)
    return period


# --------------------------------------------------------------------------- prepare

# One statement: every open postpaid account of the subtree, its household's current
# meters' alarm kinds open in the period and whether one of them lacks a recent reading;
# held ones become pending rows, and a row already there (decided or not) stays as it is.
_PREPARE = text("""
INSERT INTO reading_reviews (account_id, period, state, alarm_kinds, missing_reading, created_at)
SELECT acc.id, :period, 'pending', held.kinds, held.missing, :now
FROM accounts acc
JOIN households h ON h.id = acc.household_id
JOIN areas a ON a.id = h.area_id
CROSS JOIN LATERAL (
    SELECT ARRAY(
               SELECT DISTINCT CAST(al.kind AS varchar(32)) FROM meter_assignments ma
               JOIN alarms al ON al.subject_kind = 'meter' AND al.subject_id = ma.meter_id
               WHERE ma.household_id = h.id AND ma.valid_to IS NULL
                 AND al.opened_at < :end AND (al.closed_at IS NULL OR al.closed_at >= :start)
               ORDER BY 1
           ) AS kinds,
           EXISTS (
               SELECT FROM meter_assignments ma
               WHERE ma.household_id = h.id AND ma.valid_to IS NULL
                 AND NOT EXISTS (SELECT FROM readings r
                                 WHERE r.meter_id = ma.meter_id AND r.read_at >= :recent AND r.read_at <= :end
                                   AND r.quality <> 'estimated')
           ) AS missing
) held
WHERE acc.status = 'open' AND acc.mode = 'postpaid'
  AND (cardinality(held.kinds) > 0 OR held.missing)
  AND (CAST(:area_path AS text) IS NULL OR a.path LIKE CAST(:area_path AS text) || '%')
  AND (CAST(:patterns AS text[]) IS NULL OR a.path LIKE ANY(CAST(:patterns AS text[])))
  AND (CAST(:account_ids AS bigint[]) IS NULL OR acc.id = ANY(CAST(:account_ids AS bigint[])))
  -- A period a live bill already covers has nothing left to review (a re-run after a
  -- meter was replaced would otherwise judge today's meter on a month already billed).
  AND NOT EXISTS (SELECT FROM bills b WHERE b.account_id = acc.id AND b.status <> 'voided' AND b.period_end >= :end)
ON CONFLICT (account_id, period) DO NOTHING
""")


async def prepare_review(
    session: AsyncSession,
    *,
    period: date,
    area_id: int | None = None,
    now: datetime,
    tz: str | tzinfo = DEFAULT_TIMEZONE,
    scope_patterns: Sequence[str] | None = None,
    months: int = 1,
    account_ids: Sequence[int] | None = None,
) -> int:
    """Hold the period's postpaid accounts whose readings need a look (module docstring);
    returns how many rows were added. ``months`` is the period's length (2 for a bimonthly
    area: alarms over both months, readings in the last 3 days of the second);
    ``account_ids`` narrows it to those accounts (the billing run passes an area cycle's
    accounts). NOT_FOUND for an area outside the scope; the caller commits."""
    period = _checked_period(period)
    patterns = patterns_param(scope_patterns)
    area_path = await area_path_in_scope(session, area_id, scope_patterns) if area_id is not None else None
    zone = as_zone(tz)
    start, end = period_bounds(period, zone, months=months)
    recent = datetime.combine(_next_month(period, months) - timedelta(days=MISSING_READING_DAYS), time(), tzinfo=zone)
    async with custom_plans(session):  # its optional filters make a generic plan walk every account
        result: Any = await session.execute(_PREPARE, {
            "period": period, "now": now, "start": start, "end": end, "recent": recent, "area_path": area_path,
            "patterns": patterns, "account_ids": _ids(account_ids),
        })
    return int(result.rowcount or 0)


# --------------------------------------------------------------------------- for the billing run

# The condition a billing statement adds for an account ``acc`` and the bound :period.
# Any pending review up to and including the period holds it: the reviewer decides an
# earlier period first, or the later bill would take its usage and the earlier one bill it
# again (bills' module docstring).
_COVERED = ("EXISTS (SELECT FROM bills b WHERE b.account_id = rr.account_id AND b.status <> 'voided' "
            "AND b.period >= rr.period)")
NOT_HELD_SQL = ("NOT EXISTS (SELECT FROM reading_reviews rr WHERE rr.account_id = acc.id "
                f"AND rr.period <= :period AND rr.state = 'pending' AND NOT {_COVERED})")

_BILLABLE = text(f"""
SELECT acc.id FROM accounts acc
WHERE acc.status = 'open' AND acc.mode = 'postpaid'
  AND (CAST(:account_ids AS bigint[]) IS NULL OR acc.id = ANY(CAST(:account_ids AS bigint[])))
  AND {NOT_HELD_SQL}
ORDER BY acc.id
""")

# One row per account: its earliest pending period up to :period, with its reasons.
_HELD = text(f"""
SELECT DISTINCT ON (rr.account_id) rr.account_id, rr.id AS review_id, rr.alarm_kinds, rr.missing_reading
FROM reading_reviews rr
JOIN accounts acc ON acc.id = rr.account_id
WHERE rr.period <= :period AND rr.state = 'pending' AND acc.status = 'open' AND acc.mode = 'postpaid'
  AND NOT {_COVERED}
  AND (CAST(:account_ids AS bigint[]) IS NULL OR rr.account_id = ANY(CAST(:account_ids AS bigint[])))
ORDER BY rr.account_id, rr.period
""")


@dataclass(frozen=True, slots=True)
class HeldAccount:
    """An account the run reports instead of billing, and why it is held."""

    account_id: int
    review_id: int
    alarm_kinds: list[str]
    missing_reading: bool


def _ids(account_ids: Sequence[int] | None) -> list[int] | None:
    return None if account_ids is None else sorted(set(account_ids))


async def billable_accounts(session: AsyncSession, *, period: date,
                            account_ids: Sequence[int] | None = None) -> list[int]:
    """Open postpaid accounts (of ``account_ids``, or all) the period may bill: no review
    pending for this period or an earlier one, in id order (the run's lock order). Run :func:`prepare_review` first: an
    account not yet prepared counts as clean."""
    async with custom_plans(session):
        rows = await session.execute(_BILLABLE, {"period": _checked_period(period), "account_ids": _ids(account_ids)})
    return [row.id for row in rows]


async def held_accounts(session: AsyncSession, *, period: date,
                        account_ids: Sequence[int] | None = None) -> list[HeldAccount]:
    """Open postpaid accounts (of ``account_ids``, or all) with a review pending for the
    period or an earlier one, in id order: one row each, its earliest pending review with
    the reasons."""
    async with custom_plans(session):
        rows = await session.execute(_HELD, {"period": _checked_period(period), "account_ids": _ids(account_ids)})
    return [HeldAccount(row.account_id, row.review_id, list(row.alarm_kinds), row.missing_reading) for row in rows]


# --------------------------------------------------------------------------- decisions

_LOCK_REVIEW = text("""
SELECT rr.id, h.id AS household_id FROM reading_reviews rr
JOIN accounts acc ON acc.id = rr.account_id
JOIN households h ON h.id = acc.household_id
JOIN areas a ON a.id = h.area_id
WHERE rr.id = :review_id AND (CAST(:patterns AS text[]) IS NULL OR a.path LIKE ANY(CAST(:patterns AS text[])))
FOR UPDATE OF rr
""")

_CURRENT_METERS = text("""
SELECT meter_id FROM meter_assignments WHERE household_id = :household_id AND valid_to IS NULL ORDER BY meter_id
""")


async def _locked(session: AsyncSession, review_id: int, scope_patterns: Sequence[str] | None,
                  ) -> tuple[ReadingReview, int]:
    """The review row locked, and its household; NOT_FOUND outside the scope."""
    row = (await session.execute(_LOCK_REVIEW, {"review_id": review_id, "patterns": patterns_param(scope_patterns)})
           ).one_or_none()
    if row is None:
        raise NotFound(field="reviewId")
    review = await session.get(ReadingReview, review_id, populate_existing=True)
    assert review is not None  # locked above
    return review, row.household_id


async def _pending(session: AsyncSession, review_id: int, scope_patterns: Sequence[str] | None,
                   ) -> tuple[ReadingReview, int]:
    review, household_id = await _locked(session, review_id, scope_patterns)
    if review.state is not ReviewState.pending:
        raise ReviewDecided(field="reviewId")
    return review, household_id


def _optional_reason(reason: str | None) -> str | None:
    return checked_reason(reason) if reason is not None and reason.strip() else None


def _decide(review: ReadingReview, state: ReviewState, *, by: str, now: datetime, reason: str | None,
            written: Sequence[dict[str, Any]] = ()) -> ReadingReview:
    review.state = state
    review.decided_by = by
    review.decided_at = now
    review.decision_reason = reason
    # Every reading a decision wrote, earlier decisions' too (a reopened review keeps them).
    review.readings = [*review.readings, *written]
    return review


def _written(meter_id: int, read_at: datetime, total: Decimal, quality: ReadingQuality,
             previous_total: Decimal | None = None) -> dict[str, Any]:
    entry = {"meter_id": meter_id, "read_at": read_at.isoformat(), "total_m3": str(total), "quality": quality.value}
    if previous_total is not None:
        entry["previous_total_m3"] = str(previous_total)
    return entry


async def approve_review(session: AsyncSession, *, review_id: int, reason: str | None, by: str, now: datetime,
                         scope_patterns: Sequence[str] | None) -> ReadingReview:
    """核准: the period's readings bill as they are. NOT_FOUND outside the scope,
    REVIEW_DECIDED unless pending; the caller commits (and audits)."""
    review, _ = await _pending(session, review_id, scope_patterns)
    return _decide(review, ReviewState.approved, by=by, now=now, reason=_optional_reason(reason))


async def adjust_review(
    session: AsyncSession,
    *,
    review_id: int,
    meter_id: int,
    total_m3: Decimal,
    read_at: datetime | None = None,
    reason: str,
    by: str,
    now: datetime,
    tz: str | tzinfo = DEFAULT_TIMEZONE,
    scope_patterns: Sequence[str] | None,
    confirm_lower: bool = False,
) -> ReadingReview:
    """调整: store ``total_m3`` as the meter's reading at ``read_at`` (default: the period
    end), inside the period's ``(start, end]``. An actual or manual reading standing there is
    corrected (``correct_reading``); otherwise a manual reading is entered (``enter_reading``,
    superseding an estimate). The reason is required. NOT_FOUND for a review outside the
    scope or a meter not currently serving its household; REVIEW_DECIDED unless pending;
    the readings domain's refusals (READING_LOWER_THAN_PREVIOUS unless ``confirm_lower``,
    READ_AT_IN_FUTURE, INVALID_TOTAL) as they are. The caller commits (and audits)."""
    cleaned = checked_reason(reason)
    review, household_id = await _pending(session, review_id, scope_patterns)
    meters = list((await session.execute(_CURRENT_METERS, {"household_id": household_id})).scalars())
    if meter_id not in meters:
        raise NotFound(field="meterId")
    start, end = period_bounds(review.period, tz)
    at = read_at if read_at is not None else end
    if at.tzinfo is None or not start < at <= end:
        raise DomainError("调整的读数时间须在本账期内 (含期末)", "The adjusted reading must lie in the period (its end included)",
                          field="readAt", code=ErrorCode.INVALID_READ_AT)
    stored = await stored_reading(session, meter_id=meter_id, read_at=at)
    # The meter's scope is the review's (checked above): the readings calls run unscoped.
    if stored is not None and stored.quality is not ReadingQuality.estimated:
        correction = await correct_reading(session, meter_id=meter_id, read_at=at, total_m3=total_m3, reason=cleaned,
                                           by=by, now=now, tz=tz, scope_patterns=None)
        written = _written(meter_id, at, correction.reading.total_m3, correction.reading.quality,
                           correction.previous_total)
    else:
        await enter_reading(session, meter_id=meter_id, read_at=at, total_m3=total_m3, by=by, now=now, tz=tz,
                            scope_patterns=None, confirm_lower=confirm_lower)
        entered = await stored_reading(session, meter_id=meter_id, read_at=at)
        assert entered is not None and entered.quality is ReadingQuality.manual
        written = _written(meter_id, at, entered.total_m3, entered.quality,
                           stored.total_m3 if stored is not None else None)
    return _decide(review, ReviewState.adjusted, by=by, now=now, reason=cleaned, written=[written])


_ESTIMATED_AT = text("""
SELECT meter_id, read_at, total_m3 FROM readings
WHERE meter_id = ANY(CAST(:meter_ids AS bigint[])) AND read_at = :read_at AND quality = 'estimated'
ORDER BY meter_id
""")


async def estimate_review(session: AsyncSession, *, review_id: int, reason: str | None, by: str, now: datetime,
                          tz: str | tzinfo = DEFAULT_TIMEZONE, scope_patterns: Sequence[str] | None) -> ReadingReview:
    """估算: an estimated reading on the period's last day for each current meter of the
    household without one, from the meter's average (the readings domain's estimation).
    NOTHING_TO_ESTIMATE when none could be made (the day has a reading, a later reading
    bounds it, the meter has no history, or the day is not over). The caller commits."""
    review, household_id = await _pending(session, review_id, scope_patterns)
    meters = list((await session.execute(_CURRENT_METERS, {"household_id": household_id})).scalars())
    if not meters:
        raise NothingToEstimate(field="reviewId")
    zone = as_zone(tz)
    last_day = _next_month(review.period) - timedelta(days=1)
    estimated = await estimate_readings(session, meter_ids=meters, start=last_day, end=last_day, now=now, tz=zone,
                                        scope_patterns=None)
    if estimated.estimated == 0:
        raise NothingToEstimate(field="reviewId")
    # Where the estimation puts a day's estimate: the day's last second (entry.ESTIMATE_TIME).
    read_at = datetime.combine(last_day, time.fromisoformat(ESTIMATE_TIME), tzinfo=zone)
    rows = (await session.execute(_ESTIMATED_AT, {"meter_ids": meters, "read_at": read_at})).all()
    written = [_written(row.meter_id, row.read_at, row.total_m3, ReadingQuality.estimated) for row in rows]
    return _decide(review, ReviewState.estimated, by=by, now=now, reason=_optional_reason(reason), written=written)


async def reopen_review(session: AsyncSession, *, review_id: int, reason: str, by: str, now: datetime,
                        scope_patterns: Sequence[str] | None) -> ReadingReview:
    """退回: a decided review back to pending (the readings it wrote stay written and
    listed), so it can be decided again; the reason is required and audited.
    REVIEW_NOT_DECIDED for a pending one. The caller commits."""
    checked_reason(reason)
    review, _ = await _locked(session, review_id, scope_patterns)
    if review.state is ReviewState.pending:
        raise ReviewNotDecided(field="reviewId")
    review.state = ReviewState.pending
    review.decided_by = None
    review.decided_at = None
    review.decision_reason = None
    return review


# --------------------------------------------------------------------------- the list


@dataclass(frozen=True, slots=True)
class ReviewMeter:
    """A current meter of the held household, with its newest reading."""

    meter_id: int
    code: str
    last_read_at: datetime | None
    last_total_m3: Decimal | None


@dataclass(frozen=True, slots=True)
class ReviewRow:
    review: ReadingReview
    household_id: int
    account_no: str
    household_name: str
    meters: list[ReviewMeter]


@dataclass(frozen=True, slots=True)
class ReviewPage:
    rows: list[ReviewRow]
    total: int


# The page and the count in one statement; the meters and their newest readings per row
# in a lateral JSON aggregate, so a page of 1000 is still one round trip.
_PAGE = text("""
SELECT rr.*, h.id AS household_id, h.account_no, h.name AS household_name, count(*) OVER () AS total,
       meters.list AS meters
FROM reading_reviews rr
JOIN accounts acc ON acc.id = rr.account_id
JOIN households h ON h.id = acc.household_id
JOIN areas a ON a.id = h.area_id
CROSS JOIN LATERAL (
    SELECT coalesce(json_agg(json_build_object('meter_id', m.id, 'code', m.code, 'read_at', lr.read_at,
                                               'total_m3', CAST(lr.total_m3 AS text)) ORDER BY m.id), '[]') AS list
    FROM meter_assignments ma JOIN meters m ON m.id = ma.meter_id
    LEFT JOIN latest_readings lr ON lr.meter_id = m.id
    WHERE ma.household_id = h.id AND ma.valid_to IS NULL
) meters
WHERE (CAST(:period AS date) IS NULL OR rr.period = CAST(:period AS date))
  AND (CAST(:review_id AS bigint) IS NULL OR rr.id = CAST(:review_id AS bigint))
  AND (CAST(:state AS text) IS NULL OR rr.state = CAST(:state AS text))
  AND (CAST(:area_path AS text) IS NULL OR a.path LIKE CAST(:area_path AS text) || '%')
  AND (CAST(:patterns AS text[]) IS NULL OR a.path LIKE ANY(CAST(:patterns AS text[])))
ORDER BY h.account_no, rr.id
OFFSET :offset LIMIT :limit
""")

_REVIEW_COLUMNS = tuple(ReadingReview.model_fields)


async def review_page(
    session: AsyncSession,
    *,
    period: date | None,
    area_id: int | None = None,
    state: ReviewState | None = None,
    review_id: int | None = None,
    scope_patterns: Sequence[str] | None,
    offset: int,
    limit: int,
) -> ReviewPage:
    """Reviews of the period (of an area subtree, in a state) in the scope, by account
    number, with the household and its meters' newest readings; NOT_FOUND for an area
    outside the scope."""
    patterns = patterns_param(scope_patterns)
    area_path = await area_path_in_scope(session, area_id, scope_patterns) if area_id is not None else None
    result = await session.execute(_PAGE, {
        "period": period, "review_id": review_id, "state": state.value if state is not None else None,
        "area_path": area_path, "patterns": patterns, "offset": offset, "limit": limit,
    })
    rows: list[ReviewRow] = []
    total = 0
    for row in result.mappings():
        total = int(row["total"])
        review = ReadingReview(**{name: row[name] for name in _REVIEW_COLUMNS})
        review.state = ReviewState(row["state"])
        meters = [ReviewMeter(m["meter_id"], m["code"],
                              datetime.fromisoformat(m["read_at"]) if m["read_at"] is not None else None,
                              Decimal(m["total_m3"]) if m["total_m3"] is not None else None)
                  for m in row["meters"]]
        rows.append(ReviewRow(review, row["household_id"], row["account_no"], row["household_name"], meters))
    if not rows and offset > 0:
        # Past the last page: the count still answers (the desk's "共 N 条").
        total = (await review_page(session, period=period, area_id=area_id, state=state, review_id=review_id,
                                   scope_patterns=scope_patterns, offset=0, limit=1)).total
    return ReviewPage(rows, total)
