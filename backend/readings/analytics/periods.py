"""The time axis of the analytics: granularities, checked date ranges, period starts
and labels, and the SQL series of periods."""

from __future__ import annotations

import calendar
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from backend.clock import check_day
from backend.errors import DomainError, ErrorCode

MAX_RANGE_DAYS = 3700  # about ten years of days
# Daily rows are units x days and an export holds them all: a year of days per request.
MAX_DAILY_RANGE_DAYS = 366


class Granularity(StrEnum):
    hour = "hour"
    day = "day"
    month = "month"
    year = "year"
    period = "period"


class InvalidRange(DomainError):
    code = ErrorCode.INVALID
    message = "开始日期不能晚于结束日期"
    message_en = "The start date must not be after the end date"


class RangeTooLong(DomainError):
    code = ErrorCode.RANGE_TOO_LONG
    message = "查询时间范围过长"
    message_en = "The date range is too long"


def add_months(day: date, months: int) -> date:
    month = day.month - 1 + months
    year = day.year + month // 12
    month = month % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def bucket_start(day: date, granularity: Granularity, start_day: date) -> date:
    """The first day of the period of ``granularity`` that holds ``day``."""
    if granularity is Granularity.month:
        return day.replace(day=1)
    if granularity is Granularity.year:
        return day.replace(month=1, day=1)
    if granularity is Granularity.period:
        return start_day
    return day


def period_label(start: date | datetime, granularity: Granularity, *, end_day: date | None = None) -> str:
    if granularity is Granularity.hour:
        assert isinstance(start, datetime)
        return start.strftime("%Y-%m-%d %H:00")
    if isinstance(start, datetime):
        start = start.date()
    if granularity is Granularity.month:
        return start.strftime("%Y-%m")
    if granularity is Granularity.year:
        return start.strftime("%Y")
    if granularity is Granularity.period:
        return f"{start.isoformat()}~{end_day.isoformat() if end_day else start.isoformat()}"
    return start.isoformat()


def _check_range(start_day: date, end_day: date, granularity: Granularity | None = None) -> None:
    # The scalar bounds every API input; services are also called by exports and the CLI.
    check_day(start_day, field="from")
    check_day(end_day, field="to")
    if start_day > end_day:
        raise InvalidRange(field="from")
    max_days = MAX_DAILY_RANGE_DAYS if granularity is Granularity.day else MAX_RANGE_DAYS
    if (end_day - start_day).days + 1 > max_days:
        raise RangeTooLong(field="to")


_STEP = {Granularity.day: "1 day", Granularity.month: "1 month", Granularity.year: "1 year", Granularity.period: "1 day"}
_BUCKET = {
    Granularity.day: "d.day",
    Granularity.month: "date_trunc('month', d.day)::date",
    Granularity.year: "date_trunc('year', d.day)::date",
    Granularity.period: "CAST(:start_day AS date)",
}


def _periods_params(granularity: Granularity, start_day: date, end_day: date) -> dict[str, Any]:
    first = bucket_start(start_day, granularity, start_day)
    last = first if granularity is Granularity.period else end_day
    return {"first_bucket": first, "last_bucket": last, "step": _STEP[granularity]}


_PERIODS = """
    periods AS (
        SELECT p::date AS period_start
        FROM generate_series(CAST(:first_bucket AS timestamp), CAST(:last_bucket AS timestamp),
                             CAST(CAST(:step AS text) AS interval)) AS p
    )"""
