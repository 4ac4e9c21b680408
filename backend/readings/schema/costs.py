"""Cost weights of the readings screens (declared on their fields with
``extensions=[Expensive(weight=...)]``, backend/graphql/limits.py).

A weight is in the cost limit's unit (one field of one row), and grows with what the
database scans: the days of the range times the breadth of the object. An area stands for
many meters (a company for thousands), a concentrator for tens, a household or a meter
for one or a few. With the default limit of 50,000, one year of daily statistics for the
whole company (~9,000) fits, five aliases of it do not; hourly figures count 24 a day, so
31 days of the company's hours (~18,600) fit twice, not three times.
"""

from __future__ import annotations

from typing import Any

from backend.graphql.limits import span_days

AREA_BREADTH = 25
CONCENTRATOR_BREADTH = 5
METERS_PER_BREADTH = 40


def breadth(scope: dict[str, Any] | None) -> int:
    """How many meters an object (``UsageObjectInput`` or a filter) stands for, roughly."""
    if not scope:
        return AREA_BREADTH  # no object: everything in the caller's reach
    if scope.get("areaId"):
        return AREA_BREADTH
    if scope.get("concentratorId"):
        return CONCENTRATOR_BREADTH
    meter_ids = scope.get("meterIds")
    if meter_ids:
        return min(AREA_BREADTH, 1 + len(meter_ids) // METERS_PER_BREADTH)
    if scope.get("householdId") or scope.get("meterId"):
        return 1
    return AREA_BREADTH


# Hourly statistics walk the raw readings, a row per meter and hour: 24 times a day's.
HOURS_A_DAY = 24


def per_hour(arguments: dict[str, Any]) -> int:
    """24 for an hourly granularity, else 1."""
    granularity = arguments.get("granularity")
    return HOURS_A_DAY if getattr(granularity, "name", granularity) == "HOUR" else 1


def over_scope(arguments: dict[str, Any]) -> int:
    """Statistics and ledgers: the range's days (hours) times the object's breadth."""
    return span_days(arguments) * breadth(arguments.get("scope")) * per_hour(arguments)


def comparison(arguments: dict[str, Any]) -> int:
    """同比 / 环比 read two ranges."""
    return 2 * over_scope(arguments)


def series(arguments: dict[str, Any]) -> int:
    """One series per object, twice with last year's."""
    per_year = 2 if arguments.get("withLastYear") else 1
    return (per_year * span_days(arguments) * per_hour(arguments)
            * sum(breadth(item) for item in arguments.get("objects") or [{}]))


def history(arguments: dict[str, Any]) -> int:
    """历史数据: the filter's range over its meters."""
    flt = arguments.get("filter") or {}
    return span_days(flt) * breadth(flt)


def monitoring_history(arguments: dict[str, Any]) -> int:
    return span_days(arguments)


# 数据监测 sums this year's volume of every monitoring point in reach.
MONITORING_POINTS = 366 * CONCENTRATOR_BREADTH


def station_trend(arguments: dict[str, Any]) -> int:
    """A station's few instruments over the range's days (hours read 24 times the rows)."""
    return span_days(arguments) * (4 if "hour" in str(arguments.get("grain", "")).lower() else 1)


def daily_flow_items(arguments: dict[str, Any]) -> int:
    return int(arguments.get("days") or 30)
