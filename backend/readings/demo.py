"""Demo readings for ``shuiwu demo load``: 13 months of a utility's meter data, ending at
``now``, written through the real ingest path, with a handful of planted anomalies.

What is generated (deterministic from the demo seed and ``now``):

- **Household meters**: a sample (2 % of the households, at least
  :data:`HOURLY_MINIMUM`) reports every hour, on the hour, like NB-IoT meters; the rest
  report once a day late in the evening (a fixed minute per meter), like concentrator
  patrols. Usage follows a residential day (low at night, peaks 6–9 and 18–22), a week
  (more at weekends), a year (more in summer) and the household's size (≈0.1 m³ per
  person a day: a household of three uses ≈10 m³ a month), with a little noise;
  non-residential and special customers use more. Registers start at the meter's
  initial reading plus what the meter has run since it was installed, and only grow;
  batteries decline slowly from 3.6 V (0.025 V a year); valves (on models that have
  one) stay open. ``status_bits`` carries the CJ/T 188 ST byte: bits 0–1 the valve
  (00 open, 11 abnormal), bit 2 low battery.
- **Monitoring points** (东/南/西/北干管): the flow meter reports hourly with ``flow_rate``
  in m³/h (a night minimum around 03:00, morning and evening peaks) and its register;
  the pressure gauge hourly with ``pressure`` 0.27–0.40 MPa (lowest at peak demand).
- **Replacements**: an old meter reports until its ``replaced_at``, ending exactly at the
  replacement's final reading; the new one from its initial reading on. The two swap
  readings are ``manual`` (the crew reads them), and are not sent again where
  ``replace_meter`` already stored them.

Planted anomalies (:class:`DemoAnomalies` returns their meter ids), on residential
meters that have served the same household for the whole window, picked by a hash of
the seed and the meter code:

- ``silent``: three meters stop reporting :data:`SILENT_DAYS` days before ``now``;
- ``reverse_flow``: one meter's newest reading is 0.052 m³ below the one before;
- ``zero_use``: one meter keeps reporting a constant total for the last
  :data:`ZERO_USE_DAYS` days;
- ``high_use``: one hourly meter leaks :data:`LEAK_M3_PER_HOUR` m³/h since the start of
  the day before yesterday (≈20× its daily average);
- ``battery_low``: one meter's battery falls below 3.0 V over the last
  :data:`BATTERY_LOW_DAYS` days (ST bit 2 set);
- ``valve_abnormal``: one meter whose model has a valve reports ``valve_state``
  ``unknown`` (ST bits 11) for the last :data:`VALVE_UNKNOWN_DAYS` days;
- ``rollover``: one meter is moved to a 4-digit model (created here,
  :data:`ROLLOVER_MODEL`) and its register wraps past 9999.999 at its newest reading;
- ``replacement``: the latest replacement inside the window (one is made through the
  archives service when the demo has none), with readings on both sides.

Everything goes through :func:`backend.readings.service.ingest_readings` (which keeps
``latest_readings`` and ``daily_usage``) in batches of about :data:`BATCH_SIZE`, never
splitting a meter across batches. Each meter continues from its newest ``demo``
reading, so a second run with the same seed and ``now`` writes nothing, and a later run
(``make demo`` loads every time it starts) tops the registers up to the new ``now``
without a step back. A full alarm evaluation runs at the end.
"""

from __future__ import annotations

import bisect
import math
import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.models import MeterKind, MeterStatus
from backend.archives.service import MeterChanges, MeterModelFields, create_meter, replace_meter, save_meter_model, update_meter
from backend.auth.system import system_actor
from backend.readings.models import ReadingQuality, ValveState
from backend.readings.partitions import DEFAULT_TIMEZONE, as_zone, ensure_partitions_ahead
from backend.readings.service import ReadingIn, ingest_readings

if TYPE_CHECKING:
    from backend.auth.principal import Principal
    from backend.domain import DemoPlan
    from backend.readings.alarms.service import AlarmEvaluation

SOURCE = "demo"
WINDOW_MONTHS = 13
HOURLY_SHARE = 0.02
HOURLY_MINIMUM = 20
BATCH_SIZE = 100_000

SILENT_DAYS = (4, 6, 9)
ZERO_USE_DAYS = 12
LEAK_M3_PER_HOUR = 0.3
BATTERY_LOW_DAYS = 10
VALVE_UNKNOWN_DAYS = 3
REVERSE_DROP = Decimal("0.052")
ROLLOVER_MODEL = ("宁波水表", "LXS-15D (四位计数器)")
REPLACEMENT_DAYS_AGO = 40

# Share of a day's use in each local hour (mean 1): quiet nights, a morning peak 6–9 and
# an evening peak 18–22. The peak hour stays under 2.3× the mean hour.
_HOUSEHOLD_HOURS = (0.25, 0.15, 0.12, 0.12, 0.15, 0.4, 1.3, 2.2, 2.0, 1.3, 0.9, 1.0,
                    1.2, 0.9, 0.7, 0.7, 0.8, 1.1, 1.7, 2.1, 2.0, 1.8, 1.3, 0.65)
_HOUSEHOLD_PROFILE = tuple(h * 24 / sum(_HOUSEHOLD_HOURS) for h in _HOUSEHOLD_HOURS)
# A trunk main carries many households plus leakage: a smoothed, flattened profile.
_TRUNK_PROFILE = tuple(0.3 + 0.7 * (_HOUSEHOLD_PROFILE[h - 1] + 2 * _HOUSEHOLD_PROFILE[h] + _HOUSEHOLD_PROFILE[(h + 1) % 24]) / 4
                       for h in range(24))
_TRUNK_LOW, _TRUNK_HIGH = min(_TRUNK_PROFILE), max(_TRUNK_PROFILE)
# Mean flow (m³/h) and pressure offset (MPa) of each trunk main, by monitoring point code.
_TRUNK_MAINS = {"EAST": (220.0, 0.0), "SOUTH": (180.0, -0.01), "WEST": (150.0, -0.02), "NORTH": (120.0, -0.03)}
_RESIDENTIAL_M3_PER_PERSON_DAY = 0.105
_M3_PER_DAY_BY_CUSTOMER = {"non_residential": 1.2, "special": 2.5}
_BATTERY_NEW_V = 3.6
_BATTERY_V_PER_YEAR = 0.025
_ST_VALVE_ABNORMAL, _ST_BATTERY_LOW = 0b011, 0b100


@dataclass(frozen=True, slots=True)
class DemoAnomalies:
    """The meters that carry each planted anomaly (see the module docstring)."""

    silent: tuple[int, ...] = ()
    reverse_flow: tuple[int, ...] = ()
    zero_use: tuple[int, ...] = ()
    high_use: tuple[int, ...] = ()
    battery_low: tuple[int, ...] = ()
    valve_abnormal: tuple[int, ...] = ()
    rollover: tuple[int, ...] = ()
    replacement: tuple[int, int] | None = None  # (old meter, new meter); no anomaly, both sides read

    def by_kind(self) -> dict[str, tuple[int, ...]]:
        """Alarm kind -> the meters planted with it."""
        return {"silent": self.silent, "reverse_flow": self.reverse_flow, "zero_use": self.zero_use,
                "high_use": self.high_use, "battery_low": self.battery_low, "valve_abnormal": self.valve_abnormal,
                "rollover": self.rollover}

    def meter_ids(self) -> frozenset[int]:
        """Every meter planted with an anomaly (the replacement's meters are normal)."""
        return frozenset(meter_id for ids in self.by_kind().values() for meter_id in ids)


@dataclass(frozen=True, slots=True)
class DemoReadings:
    """What one run of :func:`load_demo_readings` did."""

    anomalies: DemoAnomalies
    hourly_meter_ids: tuple[int, ...]
    meters: int
    inserted: int
    duplicates: int
    rejected: int
    start: datetime
    alarms: AlarmEvaluation | None = None  # None when the load was asked not to evaluate


@dataclass(slots=True)
class _Meter:
    id: int
    code: str
    name: str
    kind: str
    meter_type: str
    status: str
    address: str
    area_id: int
    model_id: int | None
    concentrator_id: int | None
    install_date: date | None
    initial_reading: Decimal
    has_valve: bool
    has_battery: bool
    register_digits: int | None
    register_decimals: int
    household_id: int | None
    population: int
    customer_type: str | None
    household_status: str | None
    valid_from: datetime | None
    valid_to: datetime | None
    start_reading: Decimal | None
    end_reading: Decimal | None


_PLAN = text(
    "SELECT m.id, m.code, m.name, m.kind, m.meter_type, m.status, m.address, m.area_id, m.model_id, m.concentrator_id, "
    "  m.install_date, m.initial_reading, coalesce(mm.has_valve, false), coalesce(mm.has_battery, false), "
    "  mm.register_digits, coalesce(mm.register_decimals, 3), a.household_id, coalesce(h.population, 3), "
    "  h.customer_type, h.status, a.valid_from, a.valid_to, a.start_reading, a.end_reading "
    "FROM meters m LEFT JOIN meter_models mm ON mm.id = m.model_id "
    "LEFT JOIN LATERAL (SELECT s.household_id, s.valid_from, s.valid_to, s.start_reading, s.end_reading "
    "  FROM meter_assignments s WHERE s.meter_id = m.id ORDER BY s.valid_from DESC LIMIT 1) a ON true "
    "LEFT JOIN households h ON h.id = a.household_id "
    "WHERE (m.status = 'installed' AND (m.kind = 'monitoring' OR (a.household_id IS NOT NULL AND a.valid_to IS NULL))) "
    "   OR (m.status = 'retired' AND a.valid_to > :start AND a.end_reading IS NOT NULL) "
    "ORDER BY m.id"
)

_REPLACEMENTS = text(
    "SELECT old_meter_id, new_meter_id FROM meter_replacements WHERE replaced_at > :start AND replaced_at < :now "
    "ORDER BY replaced_at DESC, id DESC"
)


# Each meter's newest demo reading (not the swap readings a replacement records).
_NEWEST_DEMO_READINGS = text(
    "SELECT m.id, r.read_at, r.total_m3 FROM unnest(CAST(:meter_ids AS bigint[])) AS m(id) "
    "CROSS JOIN LATERAL (SELECT read_at, total_m3 FROM readings WHERE meter_id = m.id AND source = :source "
    "  ORDER BY read_at DESC LIMIT 1) r"
)


_STORED_AT = text(
    "SELECT r.meter_id, r.read_at FROM unnest(CAST(:meter_ids AS bigint[]), CAST(:instants AS timestamptz[])) "
    "AS k(meter_id, read_at) JOIN readings r ON r.meter_id = k.meter_id AND r.read_at = k.read_at"
)


async def _swap_readings(session: AsyncSession, meters: list[_Meter], calendar: _Calendar) -> dict[int, frozenset[datetime]]:
    """The readings already stored at the replacements' swaps inside the window (replace_meter
    records them; the demo's own SQL-made replacements do not)."""
    swaps = [(meter.id, instant) for meter in meters for instant in (meter.valid_from, meter.valid_to)
             if instant is not None and calendar.start < instant <= calendar.now]
    if not swaps:
        return {}
    rows = await session.execute(_STORED_AT, {"meter_ids": [s[0] for s in swaps], "instants": [s[1] for s in swaps]})
    found: dict[int, set[datetime]] = {}
    for meter_id, read_at in rows:
        found.setdefault(meter_id, set()).add(read_at)
    return {meter_id: frozenset(instants) for meter_id, instants in found.items()}


async def _plan(session: AsyncSession, start: datetime) -> list[_Meter]:
    rows = await session.execute(_PLAN, {"start": start})
    return [_Meter(*row) for row in rows]


def _months_back(day: date, months: int) -> date:
    month_index = day.year * 12 + day.month - 1 - months
    return date(month_index // 12, month_index % 12 + 1, min(day.day, 28))


def window_start(now: datetime, zone: tzinfo) -> datetime:
    """The first instant of the demo's readings (midnight of the day :data:`WINDOW_MONTHS`
    months before ``now``'s day, in ``zone``): where the demo's accounts open."""
    return datetime.combine(_months_back(now.astimezone(zone).date(), WINDOW_MONTHS), time(), tzinfo=zone)


def _rank(seed: int, meter: _Meter) -> int:
    return zlib.crc32(f"{seed}:{meter.code}".encode())


# --------------------------------------------------------------------------- the calendar


class _Calendar:
    """The window's days and hours in the utility's zone, shared by every meter."""

    def __init__(self, *, now: datetime, zone: tzinfo) -> None:
        self.now, self.zone = now, zone
        today = now.astimezone(zone).date()
        self.start = window_start(now, zone)
        self.first_day = self.start.date()
        self.days = [self.first_day + timedelta(days=n) for n in range((today - self.first_day).days + 1)]
        # Summer (peak mid-July) uses ~20 % more than average, winter ~20 % less; weekends more.
        self.day_factor = [
            (1 + 0.2 * math.cos(2 * math.pi * (d.timetuple().tm_yday - 196) / 365.25)) * (1.08 if d.weekday() >= 5 else 0.97)
            for d in self.days
        ]
        self.hours: list[tuple[datetime, int, int]] = []  # (instant, day index, local hour)
        for index, day in enumerate(self.days):
            for hour in range(24):
                instant = datetime.combine(day, time(hour), tzinfo=zone)
                if instant <= now:
                    self.hours.append((instant, index, hour))
        self._evenings: dict[int, list[datetime]] = {}

    def evening(self, minute: int) -> list[datetime]:
        """The daily read instant of every day of the window at 22:00 + ``minute``."""
        found = self._evenings.get(minute)
        if found is None:
            found = self._evenings[minute] = [
                datetime.combine(day, time(22 + minute // 60, minute % 60), tzinfo=self.zone) for day in self.days
            ]
        return found

    def day_index(self, instant: datetime) -> int:
        return (instant.astimezone(self.zone).date() - self.first_day).days


# --------------------------------------------------------------------------- one meter's series


@dataclass(slots=True)
class _Series:
    """One meter's readings before they become ``ReadingIn``: instants, the use since the
    previous reading (m³) and the day each falls on."""

    instants: list[datetime]
    usage: list[float]
    days: list[int]
    swaps: frozenset[datetime] = frozenset()  # the opening / closing readings of a replacement


def _daily_m3(meter: _Meter, rng: random.Random) -> float:
    if meter.customer_type in _M3_PER_DAY_BY_CUSTOMER:
        base = _M3_PER_DAY_BY_CUSTOMER[meter.customer_type] * rng.uniform(0.7, 1.5)
    else:
        base = _RESIDENTIAL_M3_PER_PERSON_DAY * meter.population * rng.uniform(0.8, 1.2)
    return base * (0.35 if meter.meter_type == "hot_water" else 1.0)


def _series(calendar: _Calendar, rng: random.Random, *, hourly: bool, per_day: float, profile: Sequence[float],
            first: datetime, last: datetime, closing: bool) -> _Series:
    """Readings from ``first`` to ``last`` (inclusive) on the hourly or daily grid. An
    assignment that opens inside the window gets an opening reading at ``first``; a
    ``closing`` one (a replaced meter) a closing reading at ``last``."""
    instants: list[datetime] = []
    usage: list[float] = []
    days: list[int] = []
    factor = calendar.day_factor
    if first > calendar.start:
        instants.append(first)
        usage.append(0.0)
        days.append(calendar.day_index(first))
    if hourly:
        per_hour = per_day / 24
        for instant, day, hour in calendar.hours:
            if first < instant <= last:
                instants.append(instant)
                usage.append(per_hour * profile[hour] * factor[day] * rng.uniform(0.75, 1.25))
                days.append(day)
    else:
        for day, instant in enumerate(calendar.evening(rng.randrange(120))):
            if first <= instant <= last and instant != first:
                instants.append(instant)
                usage.append(per_day * factor[day] * rng.uniform(0.85, 1.15))
                days.append(day)
    if closing and instants and instants[-1] != last:
        instants.append(last)
        usage.append(per_day * (last - instants[-2]).total_seconds() / 86400)
        days.append(calendar.day_index(last))
    if usage:
        usage[0] = 0.0  # the register at the first reading is where the series starts
    swaps = frozenset(([first] if first > calendar.start else []) + ([last] if closing else []))
    return _Series(instants, usage, days, swaps)


def _to_units(value: Decimal | float, unit: int) -> int:
    return round(float(value) * unit)


_Stored = tuple[datetime, Decimal]  # a meter's newest stored reading: (read_at, total_m3)


def _after_stored(instants: list[datetime], totals: list[int], stored: _Stored | None, start_units: int,
                  unit: int) -> tuple[int, list[int]]:
    """The readings still to write: those after the meter's newest stored reading, with
    totals continuing from its total. A later run (``make demo`` loads every time) thus
    tops the demo up to its ``now`` without the register ever stepping back."""
    if stored is None:
        return 0, totals
    skip = bisect.bisect_right(instants, stored[0])
    before = totals[skip - 1] if skip else start_units
    shift = _to_units(stored[1], unit) - before
    return skip, [total + shift for total in totals[skip:]]


class _Decimals:
    """Decimal values from integer units, cached where values repeat (batteries, pressure)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int], Decimal] = {}

    def exact(self, units: int, places: int) -> Decimal:
        return Decimal(units).scaleb(-places)

    def cached(self, units: int, places: int) -> Decimal:
        key = (units, places)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = Decimal(units).scaleb(-places)
        return found


@dataclass(slots=True)
class _Planted:
    silent: dict[int, int] = field(default_factory=dict)  # meter -> days silent
    reverse_flow: set[int] = field(default_factory=set)
    zero_use: set[int] = field(default_factory=set)
    high_use: set[int] = field(default_factory=set)
    battery_low: set[int] = field(default_factory=set)
    valve_abnormal: set[int] = field(default_factory=set)
    rollover: set[int] = field(default_factory=set)


def _household_readings(meter: _Meter, calendar: _Calendar, seed: int, *, hourly: bool, planted: _Planted,
                        stored: _Stored | None, recorded: frozenset[datetime], numbers: _Decimals) -> list[ReadingIn]:
    rng = random.Random(f"{seed}:{meter.code}")
    per_day = _daily_m3(meter, rng)
    opened = meter.valid_from or calendar.start
    first = max(opened, calendar.start)
    last = min(calendar.now, meter.valid_to) if meter.valid_to is not None else calendar.now
    if meter.id in planted.silent:
        last = calendar.now - timedelta(days=planted.silent[meter.id])
    closing = meter.valid_to is not None and meter.valid_to <= calendar.now
    series = _series(calendar, rng, hourly=hourly, per_day=per_day, profile=_HOUSEHOLD_PROFILE, first=first, last=last,
                     closing=closing)
    if not series.instants:
        return []
    usage = series.usage
    now_day = len(calendar.days) - 1
    if meter.id in planted.zero_use:
        for n, day in enumerate(series.days):
            if day > now_day - ZERO_USE_DAYS:
                usage[n] = 0.0
    if meter.id in planted.high_use:  # a leak since the start of the day before yesterday
        leak_from = datetime.combine(calendar.days[now_day - 2], time(), tzinfo=calendar.zone)
        for n in range(1, len(series.instants)):
            instant, previous = series.instants[n], series.instants[n - 1]
            if instant > leak_from:
                usage[n] += LEAK_M3_PER_HOUR * (instant - max(leak_from, previous)).total_seconds() / 3600

    unit = 10 ** min(4, meter.register_decimals)
    places = min(4, meter.register_decimals)
    initial = meter.start_reading if meter.start_reading is not None and meter.valid_from is not None else meter.initial_reading
    start_units = _to_units(initial, unit)
    if opened < calendar.start:  # the register has run since the meter was opened
        start_units += _to_units(per_day * (calendar.start - opened).total_seconds() / 86400, unit)
    totals: list[int] = []
    if closing and meter.end_reading is not None and meter.valid_to is not None:
        # A replaced meter ends exactly at the replacement's final reading.
        end_units = _to_units(meter.end_reading, unit)
        opened_span = max(1.0, (meter.valid_to - opened).total_seconds())
        if opened < calendar.start:
            start_units = _to_units(initial, unit) + int((end_units - _to_units(initial, unit))
                                                         * (calendar.start - opened).total_seconds() / opened_span)
        grown = sum(usage) or 1.0
        scale = (end_units - start_units) / unit / grown
        usage = [u * scale for u in usage]
        running = 0.0
        for u in usage:
            running += u
            totals.append(start_units + round(running * unit))
        totals[-1] = end_units
    else:
        running = 0.0
        for u in usage:
            running += u
            totals.append(start_units + round(running * unit))
    skip, totals = _after_stored(series.instants, totals, stored, start_units, unit)
    if not totals:
        return []
    if meter.register_digits is not None:
        wrap = 10 ** meter.register_digits * unit
        if meter.id in planted.rollover and stored is None and len(totals) > 1:
            # Start the register so it shows 9999.999 at the reading before the newest one.
            totals = [t + wrap - 1 - totals[-2] for t in totals]
        totals = [t % wrap for t in totals]
    if meter.id in planted.reverse_flow:
        before = totals[-2] if len(totals) > 1 else _to_units(stored[1], unit) if stored is not None else totals[-1]
        totals[-1] = before - _to_units(REVERSE_DROP, unit)

    installed = meter.install_date or calendar.first_day
    years = [((calendar.days[d] - installed).days / 365.25) for d in range(len(calendar.days))]
    battery_drop = rng.uniform(-0.01, 0.01)
    readings: list[ReadingIn] = []
    battery_low_from = now_day - BATTERY_LOW_DAYS
    valve_from = now_day - VALVE_UNKNOWN_DAYS
    for instant, total, day in zip(series.instants[skip:], totals, series.days[skip:], strict=True):
        if instant in recorded:
            continue  # the swap reading replace_meter stored; sending it again would only collide
        status = 0
        battery: Decimal | None = None
        if meter.has_battery:
            volts = _BATTERY_NEW_V - _BATTERY_V_PER_YEAR * years[day] + battery_drop
            if meter.id in planted.battery_low and day > battery_low_from:
                volts = 3.2 - 0.04 * (day - battery_low_from)  # 3.16 V … 2.80 V
            if volts < 3.0:
                status |= _ST_BATTERY_LOW
            battery = numbers.cached(round(volts * 100), 2)
        valve: ValveState | None = None
        if meter.has_valve:
            valve = ValveState.open
            if meter.id in planted.valve_abnormal and day > valve_from:
                valve, status = ValveState.unknown, status | _ST_VALVE_ABNORMAL
        # The field crew reads the register at a swap (replace_meter records it the same way).
        quality = ReadingQuality.manual if instant in series.swaps else ReadingQuality.actual
        readings.append(ReadingIn(meter.id, instant, numbers.exact(total, places), quality, None, None,
                                  valve, battery, status))
    return readings


def _monitoring_readings(meter: _Meter, calendar: _Calendar, seed: int, stored: _Stored | None,
                         numbers: _Decimals) -> list[ReadingIn]:
    """A trunk main's flow meter (register and m³/h) or pressure gauge (MPa), hourly."""
    rng = random.Random(f"{seed}:{meter.code}")
    point = meter.code.split("-")[1] if meter.code.count("-") >= 2 else ""
    mean_flow, pressure_offset = _TRUNK_MAINS.get(point, (100.0, -0.02))
    first = max(calendar.start, datetime.combine(meter.install_date, time(), tzinfo=calendar.zone)
                if meter.install_date else calendar.start)
    after = stored[0] if stored is not None else None
    readings: list[ReadingIn] = []
    if meter.meter_type == "pressure_monitor":
        zero = Decimal(0)
        for instant, day, hour in calendar.hours:
            if instant < first or (after is not None and instant <= after):
                continue
            demand = (_TRUNK_PROFILE[hour] - _TRUNK_LOW) / (_TRUNK_HIGH - _TRUNK_LOW)
            mpa = 0.395 + pressure_offset - 0.08 * demand * calendar.day_factor[day] + rng.uniform(-0.004, 0.004)
            readings.append(ReadingIn(meter.id, instant, zero, ReadingQuality.actual, None,
                                      numbers.cached(round(mpa * 1000), 3)))
        return readings
    places = min(4, meter.register_decimals)
    unit = 10 ** places
    installed = datetime.combine(meter.install_date, time(), tzinfo=calendar.zone) if meter.install_date else first
    total = _to_units(meter.initial_reading, unit) + int(mean_flow * 24 * (first - installed).total_seconds() / 86400 * unit)
    if stored is not None:
        total = _to_units(stored[1], unit)
    for instant, day, hour in calendar.hours:
        flow = mean_flow * _TRUNK_PROFILE[hour] * calendar.day_factor[day] * rng.uniform(0.95, 1.05)
        if instant < first or (after is not None and instant <= after):
            continue
        total += round(flow * unit)
        readings.append(ReadingIn(meter.id, instant, numbers.exact(total, places), ReadingQuality.actual,
                                  numbers.exact(round(flow * 100), 2)))
    return readings


# --------------------------------------------------------------------------- picking and archives


async def _rollover_model(session: AsyncSession) -> int:
    vendor, name = ROLLOVER_MODEL
    found = (await session.execute(text("SELECT id FROM meter_models WHERE vendor = :vendor AND name = :name"),
                                   {"vendor": vendor, "name": name})).scalar()
    if found is not None:
        return int(found)
    model = await save_meter_model(session, fields=MeterModelFields(
        vendor=vendor, name=name, caliber=15, register_digits=4, register_decimals=3, has_valve=False, has_battery=True,
    ))
    assert model.id is not None
    return model.id


async def _make_replacement(session: AsyncSession, old: _Meter, calendar: _Calendar) -> None:
    """Replace ``old`` through the archives service, as a field crew would have done
    :data:`REPLACEMENT_DAYS_AGO` days ago, with a final reading at its usual pace."""
    replaced_at = datetime.combine(calendar.days[-1 - REPLACEMENT_DAYS_AGO], time(10), tzinfo=calendar.zone)
    assert old.valid_from is not None
    per_day = _daily_m3(old, random.Random(f"replacement:{old.code}"))
    final = Decimal(round(per_day * (replaced_at - old.valid_from).total_seconds() / 86400, 2)).quantize(Decimal("0.01"))
    new = await create_meter(session, fields=MeterChanges(
        name=old.name, code=f"N{old.code[1:]}", address=f"2027{old.address[4:]}", meter_type=old.meter_type,
        area_id=old.area_id, kind=MeterKind.household, model_id=old.model_id, install_date=replaced_at.date(),
        initial_reading=Decimal(0), status=MeterStatus.in_stock, concentrator_id=old.concentrator_id,
    ))
    assert new.id is not None
    await replace_meter(session, old_meter_id=old.id, new_meter_id=new.id, replaced_at=replaced_at,
                        old_final_reading=final, new_initial_reading=Decimal(0), reason="表计到期轮换", replaced_by="王磊",
                        now=calendar.now, tz=calendar.zone)


@dataclass(slots=True)
class _Picks:
    hourly: set[int]
    planted: _Planted
    anomalies: DemoAnomalies


async def _pick(session: AsyncSession, meters: list[_Meter], calendar: _Calendar, seed: int) -> tuple[_Picks, bool]:
    """Choose the hourly sample and the anomaly meters; returns whether the archives changed
    (then the caller plans again). The choice never depends on what it changes, so a
    second run picks the same meters."""
    replaced = {row[0]: row[1] for row in await session.execute(_REPLACEMENTS, {"start": calendar.start, "now": calendar.now})}
    swapped = set(replaced) | set(replaced.values())
    serving = [m for m in meters if m.kind == "household" and m.status == "installed"]
    households = len({m.household_id for m in serving})
    settled = sorted((m for m in serving if m.valid_from is not None and m.valid_from < calendar.start and m.id not in swapped),
                     key=lambda m: (_rank(seed, m), m.id))
    hourly_count = min(len(settled), max(HOURLY_MINIMUM, round(households * HOURLY_SHARE)))
    hourly = settled[:hourly_count]
    daily = [m for m in settled[hourly_count:] if m.customer_type == "residential" and m.household_status == "active"]
    planted = _Planted()
    leaking = next((m for m in hourly if m.customer_type == "residential" and m.household_status == "active"), None)
    if leaking is not None:
        planted.high_use.add(leaking.id)
    pool = iter(daily)

    def take(accept: Callable[[_Meter], bool] = lambda _: True) -> _Meter | None:
        # A meter skipped here stays normal: it is never picked later.
        return next((meter for meter in pool if accept(meter)), None)

    for days in SILENT_DAYS:
        if (meter := take()) is not None:
            planted.silent[meter.id] = days
    for kind in ("reverse_flow", "zero_use"):
        if (meter := take()) is not None:
            getattr(planted, kind).add(meter.id)
    if (meter := take(lambda m: m.has_battery)) is not None:
        planted.battery_low.add(meter.id)
    changed = False
    rollover = take()
    if rollover is not None:
        planted.rollover.add(rollover.id)
        model_id = await _rollover_model(session)
        if rollover.model_id != model_id:
            await update_meter(session, meter_id=rollover.id, changes=MeterChanges(model_id=model_id))
            changed = True
    if (meter := take(lambda m: m.has_valve)) is not None:
        planted.valve_abnormal.add(meter.id)
    replacement = next(iter(replaced.items()), None)
    if replacement is None and (old := take()) is not None:
        await _make_replacement(session, old, calendar)
        changed = True
        found = (await session.execute(_REPLACEMENTS, {"start": calendar.start, "now": calendar.now})).first()
        replacement = (found[0], found[1]) if found is not None else None
    anomalies = DemoAnomalies(
        silent=tuple(sorted(planted.silent)), reverse_flow=tuple(sorted(planted.reverse_flow)),
        zero_use=tuple(sorted(planted.zero_use)), high_use=tuple(sorted(planted.high_use)),
        battery_low=tuple(sorted(planted.battery_low)), valve_abnormal=tuple(sorted(planted.valve_abnormal)),
        rollover=tuple(sorted(planted.rollover)), replacement=replacement,
    )
    return _Picks({m.id for m in hourly}, planted, anomalies), changed


# --------------------------------------------------------------------------- the loader


async def load_demo_readings(
    session: AsyncSession,
    *,
    seed: int,
    now: datetime,
    tz: str | tzinfo = DEFAULT_TIMEZONE,
    evaluate: bool = True,
    progress: Callable[[str], None] = lambda _: None,
    actor: Principal | None = None,
) -> DemoReadings:
    """Generate and ingest the demo's readings for the 13 months up to ``now`` (see the
    module docstring), then evaluate every alarm rule once when ``evaluate``, as ``actor``
    (the demo passes the system actor; None: a system actor holding what the alarm job
    declares, ``alarms:manage``). The caller
    commits; running again with the same seed and ``now`` writes nothing."""
    zone = as_zone(tz)
    calendar = _Calendar(now=now, zone=zone)
    meters = await _plan(session, calendar.start)
    picks, changed = await _pick(session, meters, calendar, seed)
    if changed:
        meters = await _plan(session, calendar.start)
    stored: dict[int, _Stored] = {meter_id: (read_at, total) for meter_id, read_at, total in await session.execute(
        _NEWEST_DEMO_READINGS, {"meter_ids": [meter.id for meter in meters], "source": SOURCE})}
    recorded = await _swap_readings(session, meters, calendar)
    numbers = _Decimals()
    batch: list[ReadingIn] = []
    inserted = duplicates = rejected = 0
    for done, meter in enumerate(meters, 1):
        if meter.kind == MeterKind.monitoring:
            batch.extend(_monitoring_readings(meter, calendar, seed, stored.get(meter.id), numbers))
        else:
            batch.extend(_household_readings(meter, calendar, seed, hourly=meter.id in picks.hourly,
                                             planted=picks.planted, stored=stored.get(meter.id),
                                             recorded=recorded.get(meter.id, frozenset()), numbers=numbers))
        if len(batch) >= BATCH_SIZE or (done == len(meters) and batch):  # never split a meter across batches
            result = await ingest_readings(session, readings=batch, source=SOURCE, now=now, tz=zone)
            inserted, duplicates = inserted + result.inserted + result.replaced, duplicates + result.duplicates
            rejected += len(result.rejected)
            batch = []
            progress(f"抄表数据 {done}/{len(meters)} 块表, 新写入 {inserted} 条")
    alarms = None
    if evaluate:
        progress("异常水表")
        alarms = await _evaluate_alarms(session, actor=actor or system_actor({"alarms:manage"}), now=now, tz=zone)
    return DemoReadings(picks.anomalies, tuple(sorted(picks.hourly)), len(meters), inserted, duplicates, rejected,
                        calendar.start, alarms)


async def demo_step(session: AsyncSession, plan: DemoPlan) -> None:
    """Readings' demo step (backend.readings.domain): the readings when the demo asks for
    them, and the partitions of this month and the next three, as the daily job keeps
    them (a fresh demo passes ``shuiwu check``)."""
    if plan.readings:
        await load_demo_readings(session, seed=plan.seed, now=plan.now, tz=plan.timezone, progress=plan.progress,
                                 actor=plan.actor)
    await ensure_partitions_ahead(session, now=plan.now, tz=plan.timezone)


async def _evaluate_alarms(session: AsyncSession, *, actor: Principal, now: datetime, tz: tzinfo) -> AlarmEvaluation:
    # Imported here, as readings.service does: the alarms service imports archives.service.
    from backend.readings.alarms.service import evaluate_alarms

    # The demo's sweep is the periodic job's, run once: as the system actor.
    return await evaluate_alarms(session, actor=actor, now=now, tz=tz)
