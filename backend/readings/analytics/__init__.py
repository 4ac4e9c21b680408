"""Usage statistics (用水统计), usage ledgers (用水台账) and comparisons (同期/环期对比).

Every figure here is read from the daily rollup ``daily_usage``: summing ``usage_m3``
over whole days equals ``usage.usage_between`` over the same instants
(backend.readings.rollup). The readings are read only where a day is cut: hourly
statistics (any object, at most 31 days) walk them in one statement by the same rule
(:mod:`.hourly`, which also says which hours count as covered), and the day an assignment
starts or ends inside, which a household (or a resident's meter) counts from the
handover instant only, through the same walk as ``usage_between``
(``units._UNIT_DAYS_CTES``); a household's ledger reads the start and end reading of such
a row from them too (one primary-key probe each).

A request names one **object** (:class:`Scope`: an area, a household, a concentrator or a
meter) and the rows are its **child units**:

- an area: each child area (aggregating its whole subtree), plus each household meter
  hanging directly on the area itself;
- a household: each meter that served it during the window (``meter_assignments``; a
  meter counts only while it served the household, to the instant, so a replacement
  shows as two meters that split the replacement day at the replacement, and a meter
  handed over at 10:15 counts for each household on its side of 10:15);
- a concentrator: each of its household meters;
- a meter: the meter itself.

Data scope is applied inside the SQL: the object must lie in the caller's area path
patterns (``scope_patterns``; ``None`` = unrestricted, for system callers), otherwise it
is NOT_FOUND; a resident (``household_ids`` given) may only name one of their own
households or a meter that served one of them, and sees that meter's usage only while it
served them.

Days, months and years are the utility's (``tz``); ``start_day``/``end_day`` are inclusive.
Plain async functions over a session; nothing here writes.

The package is the analytics' one surface: the GraphQL schema, the export screens
(backend.readings.analytics_screens), the bench and the tests import
``backend.readings.analytics`` and call ``analytics.usage_statistics(...)``; this
``__init__`` re-exports every public name, so the split is invisible to them and there is
one place to read what the analytics offer. Inside, one module per thing a reader looks
for: :mod:`.periods` (granularities, date ranges and their limits, period labels),
:mod:`.units` (the object a request names, found within scope, and the SQL of its child
units and of the days their meters count), :mod:`.statistics` (usage per unit per
period), :mod:`.hourly` (hours from the readings, with their coverage), :mod:`.series`
(chart series), :mod:`.ledgers` (用水台账), :mod:`.comparisons` (同比 / 环比 and outliers) and :mod:`.exports` (every row
of a query, streamed or paged, for the Excel exports).
"""

from __future__ import annotations

from backend.readings.analytics.comparisons import (
    DEFAULT_OUTLIER_PERCENT,
    MIN_UNITS_FOR_Z,
    OUTLIER_Z,
    ComparisonBasis,
    ComparisonOrder,
    ComparisonPage,
    ComparisonRow,
    usage_comparison,
)
from backend.readings.analytics.exports import (
    EXPORT_PAGE,
    all_comparison_rows,
    all_ledger_rows,
    all_statistics_rows,
)
from backend.readings.analytics.hourly import (
    MAX_HOURLY_DAYS,
    HourlyNotSupported,
)
from backend.readings.analytics.ledgers import (
    AreaTotal,
    LedgerPage,
    LedgerRow,
    usage_ledger,
)
from backend.readings.analytics.periods import (
    MAX_DAILY_RANGE_DAYS,
    MAX_RANGE_DAYS,
    Granularity,
    InvalidRange,
    RangeTooLong,
    add_months,
    bucket_start,
    period_label,
)
from backend.readings.analytics.series import (
    MAX_SERIES_OBJECTS,
    SeriesPoint,
    UsageSeries,
    usage_series,
)
from backend.readings.analytics.statistics import (
    FOUR_PLACES,
    StatisticsPage,
    StatisticsRow,
    UsageSummary,
    usage_statistics,
)
from backend.readings.analytics.units import (
    Scope,
    ScopeKind,
    Target,
    find_target,
    reach_arguments,
)

__all__ = [
    "DEFAULT_OUTLIER_PERCENT",
    "EXPORT_PAGE",
    "FOUR_PLACES",
    "MAX_DAILY_RANGE_DAYS",
    "MAX_HOURLY_DAYS",
    "MAX_RANGE_DAYS",
    "MAX_SERIES_OBJECTS",
    "MIN_UNITS_FOR_Z",
    "OUTLIER_Z",
    "AreaTotal",
    "ComparisonBasis",
    "ComparisonOrder",
    "ComparisonPage",
    "ComparisonRow",
    "Granularity",
    "HourlyNotSupported",
    "InvalidRange",
    "LedgerPage",
    "LedgerRow",
    "RangeTooLong",
    "Scope",
    "ScopeKind",
    "SeriesPoint",
    "StatisticsPage",
    "StatisticsRow",
    "Target",
    "UsageSeries",
    "UsageSummary",
    "add_months",
    "all_comparison_rows",
    "all_ledger_rows",
    "all_statistics_rows",
    "bucket_start",
    "find_target",
    "period_label",
    "reach_arguments",
    "usage_comparison",
    "usage_ledger",
    "usage_series",
    "usage_statistics",
]
