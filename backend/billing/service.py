"""Tariffs (水价): validation, versioned saving and quotes.

**Rules of a version** (the TOML format of ``shuiwu tariff load``, docs/billing.md):
``cycle`` (``month`` | ``year``: the tier cycle), ``tier_limits`` (strictly increasing
m³ per cycle; the last tier is open), ``components`` (``code`` ``water`` | ``resource`` |
``sewage`` | ``other:<name>``, ``name``, one price per tier in yuan/m³ with at most four
places), optional ``household_size`` (``base_persons``, ``extra_m3_per_person``: every
limit grows by that many m³ per person above the base), optional
``minimum_monthly_charge`` (yuan, two places) and optional ``sewage_coefficient``.

**Sewage coefficient** (污水排放系数): the share of the supplied water that is billed as
sewage, a decimal in (0, 1] with at most four places. It multiplies the volume of every
``sewage`` line (the tiers themselves are found on the supplied volume); the line shows the
billed sewage volume, rounded half-up to four places, and its amount is priced on it.
Without it sewage is billed on the full volume.

**Money** (DESIGN.md "Money"): a line's fen are ``round_half_up(volume × price × 100)``
with the line's 4-place volume and the exact 4-place price (``Decimal``), rounded once;
the total is the integer sum of the lines' fen. Yuan strings appear only at the edges.

**Quote**: ``prior_volume`` is what the cycle already used, so the quoted volume fills
tiers from there (annual tiers on a monthly bill or a prepaid deduction). ``persons``
applies the household-size rule; without it no extension applies. A period quote
(``start``..``end``, days inclusive, docs/periods.md) splits the volume over the versions
in force by their days (each part rounded to four places, the last part the remainder),
each part continuing the cycle from the parts before it. The minimum monthly charge: a
quote is one month's charge, so when its total is below the minimum of the version in
force on the quote's last day, a ``minimum`` line tops it up to the minimum.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from itertools import pairwise
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import distinct_on, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.archives.models import CustomerType
from backend.billing.errors import (
    TariffInvalid,
    TariffMoneyPlaces,
    TariffNotInForce,
    TariffPricePlaces,
    TariffTiersMismatch,
    TariffVersionConflict,
)
from backend.billing.models import Tariff, TariffCycle
from backend.errors import DomainError, NotFound
from backend.money import fen_to_yuan

FOUR = Decimal("0.0001")
CYCLES = tuple(cycle.value for cycle in TariffCycle)
MAX_TIERS = 10
MAX_COMPONENTS = 10
MAX_VOLUME = Decimal("1000000000")  # m³; numeric(16,4) holds 12 digits before the point
MAX_PERIOD_DAYS = 366
_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}\Z")
_COMPONENT = re.compile(r"^(water|resource|sewage|other:[a-z0-9_]{1,30})\Z")
_KEYS = {"code", "name", "customer_type", "valid_from", "cycle", "tier_limits", "components",
         "household_size", "minimum_monthly_charge", "sewage_coefficient"}


# --------------------------------------------------------------------------- validation


def _decimal(value: object, *, places: int, error: type[DomainError], field: str, positive: bool = False) -> Decimal:
    """``value`` (a string or an int; never a float, which cannot carry a price exactly)
    as a Decimal with at most ``places`` places, non-negative (positive if asked)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise error(field=field)
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise error(field=field) from None
    if not number.is_finite() or number < 0 or (positive and number == 0) or number >= MAX_VOLUME:
        raise error(field=field)
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    if -exponent > places:
        raise error(field=field)
    return number


def _text(value: object, *, field: str, max_length: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > max_length:
        raise TariffInvalid(field=field)
    return value.strip()


def _str4(value: Decimal) -> str:
    return str(value.quantize(FOUR))


def canonical_rules(raw: Mapping[str, Any]) -> tuple[str, str, CustomerType, date, dict[str, Any]]:
    """Validate a tariff version (the TOML's mapping, or the GraphQL input made one) and
    return ``(code, name, customer_type, valid_from, rules)`` with ``rules`` in canonical
    form (numbers as 4-place strings, money as fen), so equal content compares equal.
    Raises a typed :class:`DomainError` naming the field at fault."""
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise TariffInvalid(f"未知字段: {unknown[0]}", f"Unknown key: {unknown[0]}", field=unknown[0])
    code = _text(raw.get("code"), field="code", max_length=40)
    if not _CODE.match(code):
        raise TariffInvalid(field="code")
    name = _text(raw.get("name"), field="name", max_length=100)
    try:
        customer_type = CustomerType(str(raw.get("customer_type")))
    except ValueError:
        raise TariffInvalid(field="customer_type") from None
    valid_from = raw.get("valid_from")
    if type(valid_from) is not date or not date(2000, 1, 1) <= valid_from <= date(2100, 1, 1):
        raise TariffInvalid(field="valid_from")
    cycle = raw.get("cycle")
    if cycle not in CYCLES:
        raise TariffInvalid(field="cycle")
    limits_raw = raw.get("tier_limits", [])
    if not isinstance(limits_raw, list) or len(limits_raw) >= MAX_TIERS:
        raise TariffInvalid(field="tier_limits")
    limits = [_decimal(v, places=4, error=TariffInvalid, field="tier_limits", positive=True) for v in limits_raw]
    if any(b <= a for a, b in pairwise(limits)):
        raise TariffInvalid("阶梯上限须严格递增", "Tier limits must strictly increase", field="tier_limits")
    components_raw = raw.get("components")
    if not isinstance(components_raw, list) or not components_raw or len(components_raw) > MAX_COMPONENTS:
        raise TariffInvalid(field="components")
    components = []
    seen: set[str] = set()
    for component in components_raw:
        if not isinstance(component, Mapping) or set(component) - {"code", "name", "prices"}:
            raise TariffInvalid(field="components")
        component_code = component.get("code")
        if not isinstance(component_code, str) or not _COMPONENT.match(component_code) or component_code in seen:
            raise TariffInvalid(field="components.code")
        seen.add(component_code)
        prices = component.get("prices")
        if not isinstance(prices, list) or len(prices) != len(limits) + 1:
            raise TariffTiersMismatch(field="components.prices")
        components.append({
            "code": component_code,
            "name": _text(component.get("name"), field="components.name", max_length=100),
            "prices": [_str4(_decimal(p, places=4, error=TariffPricePlaces, field="components.prices")) for p in prices],
        })
    rules: dict[str, Any] = {"cycle": cycle, "tier_limits": [_str4(v) for v in limits], "components": components,
                             "household_size": None, "minimum_monthly_charge_fen": None, "sewage_coefficient": None}
    household = raw.get("household_size")
    if household is not None:
        if not isinstance(household, Mapping) or set(household) != {"base_persons", "extra_m3_per_person"}:
            raise TariffInvalid(field="household_size")
        base = household["base_persons"]
        if isinstance(base, bool) or not isinstance(base, int) or not 1 <= base <= 50:
            raise TariffInvalid(field="household_size.base_persons")
        extra = _decimal(household["extra_m3_per_person"], places=4, error=TariffInvalid,
                         field="household_size.extra_m3_per_person", positive=True)
        rules["household_size"] = {"base_persons": base, "extra_m3_per_person": _str4(extra)}
    minimum = raw.get("minimum_monthly_charge")
    if minimum is not None:
        rules["minimum_monthly_charge_fen"] = int(
            _decimal(minimum, places=2, error=TariffMoneyPlaces, field="minimum_monthly_charge") * 100)
    coefficient = raw.get("sewage_coefficient")
    if coefficient is not None:
        value = _decimal(coefficient, places=4, error=TariffInvalid, field="sewage_coefficient", positive=True)
        if value > 1:
            raise TariffInvalid(field="sewage_coefficient")
        rules["sewage_coefficient"] = _str4(value)
    return code, name, customer_type, valid_from, rules


# --------------------------------------------------------------------------- saving


@dataclass(frozen=True, slots=True)
class SavedTariff:
    tariff: Tariff
    unchanged: bool  # the same (code, valid_from) already held exactly this content


async def save_tariff(session: AsyncSession, *, raw: Mapping[str, Any]) -> SavedTariff:
    """Save one tariff version. The same content for an existing (code, valid_from) is a
    no-op (``unchanged``); different content for it is refused; a later ``valid_from`` is
    a new version. A version keeps the code's tier cycle (TARIFF_INVALID, field ``cycle``):
    settlement and bills count tiers per cycle, and two cycles of one code would overlap;
    a new cycle is a new code. Nothing is written on a refusal. The caller commits."""
    code, name, customer_type, valid_from, rules = canonical_rules(raw)
    other_cycles = (await session.execute(
        select(Tariff.rules["cycle"].astext).where(col(Tariff.code) == code, col(Tariff.valid_from) != valid_from)
    )).scalars().all()
    if any(cycle != rules["cycle"] for cycle in other_cycles):
        raise TariffInvalid("同一水价编码的各版本须使用相同的阶梯周期; 改变周期请使用新编码",
                            "Every version of a tariff code keeps its tier cycle; a new cycle needs a new code",
                            field="cycle")
    # Insert unless the version exists: two loads of one new version at once leave one row
    # (the second waits for the first and then compares with it) and never a 500.
    inserted = (await session.execute(
        insert(Tariff).values(code=code, name=name, customer_type=customer_type, valid_from=valid_from, rules=rules)
        .on_conflict_do_nothing(index_elements=["code", "valid_from"]).returning(col(Tariff.id))
    )).scalar_one_or_none()
    existing = (await session.execute(
        select(Tariff).where(col(Tariff.code) == code, col(Tariff.valid_from) == valid_from)
    )).scalar_one()
    if inserted is not None:
        return SavedTariff(existing, unchanged=False)
    if existing.name == name and existing.customer_type == customer_type and existing.rules == rules:
        return SavedTariff(existing, unchanged=True)
    raise TariffVersionConflict(field="valid_from")


async def tariff_versions(session: AsyncSession, *, code: str | None = None, limit: int | None = None) -> list[Tariff]:
    """Every version (of ``code``, or of all tariffs), by code then valid_from; the first ``limit``."""
    statement = select(Tariff).order_by(col(Tariff.code), col(Tariff.valid_from)).limit(limit)
    if code is not None:
        statement = statement.where(col(Tariff.code) == code)
    return list((await session.execute(statement)).scalars())


async def tariffs_in_force(session: AsyncSession, *, on: date, limit: int | None = None) -> list[Tariff]:
    """The version of each tariff in force on ``on`` (the latest ``valid_from`` ≤ it), by code; the first ``limit``."""
    statement = (select(Tariff).where(col(Tariff.valid_from) <= on)
                 .order_by(col(Tariff.code), col(Tariff.valid_from).desc()).ext(distinct_on(col(Tariff.code))).limit(limit))
    return list((await session.execute(statement)).scalars())


# --------------------------------------------------------------------------- quotes


@dataclass(frozen=True, slots=True)
class QuoteLine:
    component: str
    tier: int  # 1-based; 0 for the minimum-charge line
    volume: Decimal  # 4 places
    price: Decimal  # 4 places
    amount_fen: int
    valid_from: date


@dataclass(frozen=True, slots=True)
class Quote:
    tariff: str
    volume: Decimal
    lines: tuple[QuoteLine, ...]

    @property
    def total_fen(self) -> int:
        return sum(line.amount_fen for line in self.lines)

    def as_json(self) -> dict[str, Any]:
        """The quote as ``shuiwu tariff quote --json`` prints it (yuan with two places,
        volumes and prices with four). A line carries ``valid_from`` only when the quote
        spans more than one version."""
        versions = {line.valid_from for line in self.lines}
        lines = []
        for line in self.lines:
            item: dict[str, Any] = {"component": line.component, "tier": line.tier, "volume": _str4(line.volume),
                                    "price": _str4(line.price), "amount": fen_to_yuan(line.amount_fen)}
            if len(versions) > 1:
                item["valid_from"] = line.valid_from.isoformat()
            lines.append(item)
        return {"tariff": self.tariff, "volume": _str4(self.volume), "lines": lines, "total": fen_to_yuan(self.total_fen)}


def line_fen(volume: Decimal, price: Decimal) -> int:
    """A line's amount in fen: volume × price in yuan, rounded once half-up to the fen."""
    return int((volume * price * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def tier_limits(rules: Mapping[str, Any], *, persons: int | None) -> list[Decimal]:
    """The version's tier limits, grown by the household-size rule when ``persons`` is given."""
    limits = [Decimal(v) for v in rules["tier_limits"]]
    household = rules.get("household_size")
    if persons is not None and household is not None:
        extra = max(0, persons - household["base_persons"]) * Decimal(household["extra_m3_per_person"])
        limits = [limit + extra for limit in limits]
    return limits


def split_into_tiers(limits: list[Decimal], *, prior: Decimal, volume: Decimal) -> list[tuple[int, Decimal]]:
    """``volume`` m³ used after ``prior`` m³ of the cycle, split over the tiers it falls
    in: ``[(tier, m³), …]`` with tiers 1-based, empty parts left out."""
    parts = []
    start, end = prior, prior + volume
    lower = Decimal(0)
    for index, upper in enumerate([*limits, None], start=1):
        low = max(start, lower)
        high = end if upper is None else min(end, upper)
        if high > low:
            parts.append((index, high - low))
        if upper is not None:
            lower = upper
    return parts


def price_version(tariff: Tariff, *, volume: Decimal, prior: Decimal, persons: int | None) -> list[QuoteLine]:
    """The lines of ``volume`` m³ after ``prior`` under one version: per component, per tier."""
    rules = tariff.rules
    parts = split_into_tiers(tier_limits(rules, persons=persons), prior=prior, volume=volume)
    coefficient = Decimal(rules["sewage_coefficient"]) if rules.get("sewage_coefficient") else None
    lines = []
    for component in rules["components"]:
        for tier, part in parts:
            billed = part
            if component["code"] == "sewage" and coefficient is not None:
                billed = (part * coefficient).quantize(FOUR, rounding=ROUND_HALF_UP)
            price = Decimal(component["prices"][tier - 1])
            lines.append(QuoteLine(component["code"], tier, billed, price, line_fen(billed, price), tariff.valid_from))
    return lines


@dataclass(frozen=True, slots=True)
class VersionRates:
    """One tariff version's rules parsed for one household size: the tier limits, and per
    component its code, whether the sewage coefficient applies, and its price per tier."""

    limits: list[Decimal]
    coefficient: Decimal
    components: tuple[tuple[str, bool, tuple[Decimal, ...]], ...]


def version_rates(version: Tariff, persons: int | None) -> VersionRates:
    """``version``'s rules as :func:`price_version` reads them, parsed once for a batch."""
    rules = version.rules
    coefficient = Decimal(rules["sewage_coefficient"]) if rules.get("sewage_coefficient") else None
    return VersionRates(
        limits=tier_limits(rules, persons=persons), coefficient=coefficient or Decimal(1),
        components=tuple((component["code"], component["code"] == "sewage" and coefficient is not None,
                          tuple(Decimal(price) for price in component["prices"])) for component in rules["components"]),
    )


def period_line_pricer(versions: list[Tariff], *, persons: int | None, start: date, end: date,
                       minimum: bool = True) -> Callable[[Decimal, Decimal], tuple[QuoteLine, ...]]:
    """``price_period(versions, volume=v, prior=p, persons=persons, start=start, end=end,
    minimum=minimum)`` as a function of ``(v, p)``, the same lines in the same order: the
    period's segments and each version's rules are worked out once for every account
    sharing them (a billing run's chunk has a handful of groups), not once per account;
    equal ``(v, p)`` are priced once."""
    segments = period_segments(versions, start=start, end=end)
    total_days = sum(days for _, days in segments)
    rated = [(version.valid_from, version_rates(version, persons), days) for version, days in segments]
    last = len(rated) - 1
    floor = segments[-1][0].rules.get("minimum_monthly_charge_fen") if minimum else None
    floor_from = segments[-1][0].valid_from
    priced: dict[tuple[Decimal, Decimal], tuple[QuoteLine, ...]] = {}
    # A full lower tier is the same part for most accounts: its lines (one per component)
    # are made once per (segment, tier, m³).
    tier_lines: dict[tuple[int, int, Decimal], tuple[QuoteLine, ...]] = {}

    def lines_of_part(index: int, tier: int, m3: Decimal) -> tuple[QuoteLine, ...]:
        found = tier_lines.get((index, tier, m3))
        if found is None:
            valid_from, rates, _ = rated[index]
            made = []
            for code, sewage, prices in rates.components:
                billed = (m3 * rates.coefficient).quantize(FOUR, rounding=ROUND_HALF_UP) if sewage else m3
                price = prices[tier - 1]
                made.append(QuoteLine(code, tier, billed, price, line_fen(billed, price), valid_from))
            found = tier_lines[(index, tier, m3)] = tuple(made)
        return found

    def lines(volume: Decimal, prior: Decimal) -> tuple[QuoteLine, ...]:
        found = priced.get((volume, prior))
        if found is not None:
            return found
        made: list[QuoteLine] = []
        used, left = prior, volume
        for index, (_, rates, days) in enumerate(rated):
            part = left if index == last else (volume * days / total_days).quantize(FOUR, ROUND_HALF_UP)
            by_tier = [lines_of_part(index, tier, m3) for tier, m3 in split_into_tiers(rates.limits, prior=used,
                                                                                        volume=part)]
            # price_version's order: per component, then per tier.
            for component in range(len(rates.components)):
                made.extend(tier[component] for tier in by_tier)
            used += part
            left -= part
        if floor is not None:
            charged = sum(line.amount_fen for line in made)
            if charged < floor:
                made.append(QuoteLine("minimum", 0, Decimal(0), Decimal(0), floor - charged, floor_from))
        found = priced[(volume, prior)] = tuple(made)
        return found

    return lines


def _check_volume(value: Decimal, field: str) -> Decimal:
    if not value.is_finite() or value < 0 or value >= MAX_VOLUME or -int(value.as_tuple().exponent) > 4:
        raise TariffInvalid("用水量须为非负数, 最多四位小数", "A volume must be non-negative with at most four places",
                            field=field)
    return value.quantize(FOUR)


async def quote(
    session: AsyncSession,
    *,
    code: str,
    volume: Decimal,
    prior_volume: Decimal = Decimal(0),
    persons: int | None = None,
    on: date | None = None,
    start: date | None = None,
    end: date | None = None,
) -> Quote:
    """Price ``volume`` m³ under tariff ``code`` on day ``on``, or over the days
    ``start``..``end`` (inclusive) prorated across the versions in force (module docstring)."""
    volume = _check_volume(volume, "volume")
    prior_volume = _check_volume(prior_volume, "priorVolume")
    if persons is not None and not 1 <= persons <= 100:
        raise TariffInvalid(field="persons")
    if (on is None) == (start is None or end is None) or (on is not None and (start or end)):
        raise TariffInvalid("须给出 on, 或 from 与 to", "Give either on, or from and to", field="on")
    if on is not None:
        start = end = on
    assert start is not None and end is not None
    if end < start or (end - start).days >= MAX_PERIOD_DAYS:
        raise TariffInvalid("期间须为 1 至 366 天", "The period must be 1 to 366 days", field="to")
    versions = await tariff_versions(session, code=code)
    if not versions:
        raise NotFound(field="tariff")
    lines = price_period(versions, volume=volume, prior=prior_volume, persons=persons, start=start, end=end,
                         day_field="on" if on is not None else "from")
    return Quote(tariff=code, volume=volume, lines=tuple(lines))


def period_segments(versions: list[Tariff], *, start: date, end: date,
                    day_field: str = "from") -> list[tuple[Tariff, int]]:
    """The version in force on each day of ``start``..``end`` as ``(version, days)``
    segments, oldest first (how :func:`price_period` prorates a period across a price
    change). TARIFF_NOT_IN_FORCE (field ``day_field``) for a day before the first version."""
    segments: list[tuple[Tariff, int]] = []
    day = start
    while day <= end:
        in_force = [v for v in versions if v.valid_from <= day]
        if not in_force:
            raise TariffNotInForce(field=day_field)
        version = in_force[-1]
        later = [v.valid_from for v in versions if v.valid_from > day]
        until = min([end, *(d - timedelta(days=1) for d in later)])
        segments.append((version, (until - day).days + 1))
        day = until + timedelta(days=1)
    return segments


def price_period(
    versions: list[Tariff],
    *,
    volume: Decimal,
    prior: Decimal,
    persons: int | None,
    start: date,
    end: date,
    minimum: bool = True,
    day_field: str = "from",
    segments: list[tuple[Tariff, int]] | None = None,
) -> list[QuoteLine]:
    """The lines of ``volume`` m³ after ``prior`` over the days ``start``..``end`` under
    ``versions`` (one tariff's, oldest first): the pure part of :func:`quote`, which
    prepaid settlement calls for every account of a batch with the versions read once.
    ``minimum`` applies the minimum monthly charge (a bill's rule; settlement does not).
    ``segments`` are :func:`period_segments` of the same arguments when the caller worked
    them out once for many volumes (the billing run). TARIFF_NOT_IN_FORCE (field
    ``day_field``) for a day before the first version."""
    if segments is None:
        segments = period_segments(versions, start=start, end=end, day_field=day_field)
    total_days = sum(days for _, days in segments)
    lines: list[QuoteLine] = []
    used = prior
    left = volume
    for index, (version, days) in enumerate(segments):
        part = left if index == len(segments) - 1 else (volume * days / total_days).quantize(FOUR, ROUND_HALF_UP)
        lines.extend(price_version(version, volume=part, prior=used, persons=persons))
        used += part
        left -= part
    last = segments[-1][0]
    floor = last.rules.get("minimum_monthly_charge_fen") if minimum else None
    charged = sum(line.amount_fen for line in lines)
    if floor is not None and charged < floor:
        lines.append(QuoteLine("minimum", 0, Decimal(0), Decimal(0), floor - charged, last.valid_from))
    return lines
