"""The alarm workflow for every subject kind (告警): the one writer of the ``alarms`` table
and the only emitter of ``alarm.opened`` / ``alarm.closed``.

- **Open or refresh** (:func:`open_alarms`, :func:`reconcile_alarms`, and
  :class:`AlarmSweep` for an owner that finds its abnormal subjects in SQL, as readings'
  meter rules do): one set-based upsert on the live-alarm index (subject kind, subject,
  kind); a subject already alarmed is refreshed (``last_seen_at``, value, threshold,
  detail, severity), a new one opened, and one ``alarm.opened`` names the ids opened.
- **Auto-close** (:func:`close_cleared_alarms`, and the clearing half of a reconcile or
  a sweep): live alarms whose condition cleared are closed by ``system`` with the reason
  ``condition cleared``, acknowledged ones too; one ``alarm.closed`` names them.
- **People** (:func:`acknowledge_alarm`, :func:`close_alarm`): within the caller's scope,
  NOT_FOUND outside it; closing by hand does not silence the subject, the next check
  opens a new alarm while the condition holds.
- **Views**: the general list (:func:`alarm_page_query`, :func:`alarm_view`,
  :func:`alarms_visible_to`) and the abnormal-meter list (:func:`meter_alarm_page_query`,
  :func:`meter_alarm_view`, the rows ``meterAlarms`` and its export have always had).

Scope: a meter alarm lies in its meter's area (the household the meter serves is masked
when that household's own area lies outside the scope); any other alarm in its
``area_id``, a null one reaching only whole-tree scope.

Plain async functions over a session, keyword arguments after it; the caller commits.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Select,
    Text,
    and_,
    any_,
    bindparam,
    exists,
    func,
    literal,
    literal_column,
    not_,
    or_,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import array
from sqlalchemy.ext.asyncio import AsyncSession

from backend.alarms.errors import AlarmAlreadyAcknowledged, AlarmAlreadyClosed
from backend.alarms.events import AlarmClosed, AlarmOpened
from backend.alarms.models import Alarm, AlarmKind, AlarmSeverity, AlarmStatus, AlarmSubjectKind
from backend.archives.models import Area, Household, Meter, MeterAssignment
from backend.auth.scope import in_scope, unit_visible
from backend.errors import DomainError, ErrorCode, NotFound
from backend.events.service import emit_event
from backend.pagination import PagedQuery

SYSTEM = "system"
CONDITION_CLEARED = "condition cleared"
SUBJECT_NAME_MAX = 200
DETAIL_MAX = 2000


@dataclass(frozen=True, slots=True)
class AlarmChanges:
    """What one open / refresh / close call did: the ids it opened and closed (ascending)
    and how many live alarms it refreshed."""

    opened: tuple[int, ...] = ()
    closed: tuple[int, ...] = ()
    refreshed: int = 0


@dataclass(frozen=True, slots=True)
class AlarmSubject:
    """A subject whose condition holds, as its owner measured it: ``value`` and
    ``threshold`` in the kind's unit (see ``AlarmKind``), ``area_id`` its scope (null:
    whole-tree callers only; ignored for meters, whose meter row scopes them) and
    ``name`` how the lists show it (a concentrator's code and name…)."""

    subject_id: int
    severity: AlarmSeverity = AlarmSeverity.warning
    value: Decimal | None = None
    threshold: Decimal | None = None
    detail: str = ""
    area_id: int | None = None
    name: str = ""


# --------------------------------------------------------------------------- open, refresh, auto-close

_LIVE = "status <> 'closed'"


def live_alarms_from(subject_kind: AlarmSubjectKind, *, kinds: Iterable[AlarmKind] | None = None, alias: str = "a") -> str:
    """SQL ``alarms <alias> WHERE …``: the live alarms of ``subject_kind`` (of ``kinds``),
    for an owner's evaluation that asks which of its subjects have one (``EXISTS
    (SELECT FROM {this} AND <alias>.subject_id = m.id)``). The owner reads the table
    through this, so the alarms domain keeps its name and shape."""
    sql = f"alarms {alias} WHERE {alias}.subject_kind = '{AlarmSubjectKind(subject_kind).value}' AND {alias}.{_LIVE}"
    if kinds is not None:
        sql += f" AND {alias}.kind IN ({_kind_list(kinds)})"
    return sql


def _kind_list(kinds: Iterable[AlarmKind]) -> str:
    # Enum values only (no user text): safe as literals, and a literal keeps the plan specific.
    return ", ".join(f"'{AlarmKind(kind).value}'" for kind in kinds)


class AlarmSweep:
    """One statement that writes what an owner's evaluation found in SQL: built once (at
    import) from the owner's ``hits`` and run by :func:`run_sweep`, so an evaluation
    stays one statement however many subjects it covers.

    ``hits``: the items of a ``WITH`` list (without ``WITH``) whose last one is ``hits
    (subject_id, kind, severity, value, threshold, detail, area_id, subject_name)``, one
    row per (subject, kind) whose condition holds, at most one per pair. ``decides``: a
    condition over the live alarm ``a`` naming those this evaluation decides (``true``:
    every one of ``kinds``); those without a hit are closed as cleared. Binds used by the
    written part: ``:now``, ``:closed_by``, ``:close_reason``.
    """

    def __init__(self, *, subject_kind: AlarmSubjectKind, kinds: Iterable[AlarmKind], hits: str, decides: str) -> None:
        self.subject_kind = AlarmSubjectKind(subject_kind)
        self.kinds = tuple(AlarmKind(kind) for kind in kinds)
        subject = f"'{self.subject_kind.value}'"
        self.statement = text(f"""
WITH {hits}, upserted AS (
    INSERT INTO alarms AS a (subject_kind, subject_id, area_id, subject_name, kind, status, severity, opened_at,
                             last_seen_at, value, threshold, detail)
    SELECT {subject}, subject_id, area_id, coalesce(subject_name, ''), kind, 'open', severity, :now, :now, value,
           threshold, coalesce(detail, '') FROM hits
    ON CONFLICT (subject_kind, subject_id, kind) WHERE {_LIVE} DO UPDATE
    SET last_seen_at = EXCLUDED.last_seen_at, value = EXCLUDED.value, threshold = EXCLUDED.threshold,
        detail = EXCLUDED.detail, severity = EXCLUDED.severity, area_id = EXCLUDED.area_id,
        subject_name = EXCLUDED.subject_name
    RETURNING a.id, a.xmax = 0 AS inserted
), cleared AS (
    UPDATE alarms a
    SET status = 'closed', closed_at = :now, closed_by = :closed_by, close_reason = :close_reason
    WHERE a.subject_kind = {subject} AND a.{_LIVE} AND a.kind IN ({_kind_list(self.kinds)})
      AND ({decides})
      AND NOT EXISTS (SELECT FROM hits h WHERE h.subject_id = a.subject_id AND h.kind = a.kind)
    RETURNING a.id
)
SELECT (SELECT coalesce(array_agg(id ORDER BY id), '{{}}') FROM upserted WHERE inserted) AS opened,
       (SELECT count(*) FROM upserted WHERE NOT inserted) AS refreshed,
       (SELECT coalesce(array_agg(id ORDER BY id), '{{}}') FROM cleared) AS closed
""")


async def run_sweep(
    session: AsyncSession, sweep: AlarmSweep, *, params: Mapping[str, Any], now: datetime, closed_by: str = SYSTEM,
    close_reason: str = CONDITION_CLEARED,
) -> AlarmChanges:
    """Run ``sweep`` with the owner's ``params``: open or refresh the alarms of its hits,
    close the live alarms it decides that have none, and emit one ``alarm.opened`` and
    one ``alarm.closed`` (``by`` = ``closed_by``) when any changed. One statement."""
    result = (await session.execute(sweep.statement, {
        **params, "now": now, "closed_by": closed_by, "close_reason": close_reason,
    })).one()
    changes = AlarmChanges(opened=tuple(result.opened), closed=tuple(result.closed), refreshed=int(result.refreshed))
    await _emit(session, changes, closed_by)
    return changes


async def _emit(session: AsyncSession, changes: AlarmChanges, closed_by: str) -> None:
    if changes.opened:
        await emit_event(session, "alarm.opened", AlarmOpened(changes.opened))
    if changes.closed:
        await emit_event(session, "alarm.closed", AlarmClosed(changes.closed, by=closed_by))


_LISTED_HITS = """listed AS (
    SELECT * FROM unnest(CAST(:subject_ids AS bigint[]), CAST(:severities AS text[]), CAST(:values AS numeric[]),
                         CAST(:thresholds AS numeric[]), CAST(:details AS text[]), CAST(:area_ids AS bigint[]),
                         CAST(:names AS text[]))
        AS h(subject_id, severity, value, threshold, detail, area_id, subject_name)
), hits AS (
    SELECT subject_id, CAST('{kind}' AS text) AS kind, severity, value, threshold, detail, area_id, subject_name
    FROM listed
)"""


@functools.cache
def _listed_sweep(subject_kind: AlarmSubjectKind, kind: AlarmKind, decides: str) -> AlarmSweep:
    return AlarmSweep(subject_kind=subject_kind, kinds=(kind,), hits=_LISTED_HITS.format(kind=AlarmKind(kind).value),
                      decides=decides)


def _listed_params(subject_kind: AlarmSubjectKind, subjects: Sequence[AlarmSubject]) -> dict[str, Any]:
    by_id: dict[int, AlarmSubject] = {}
    for subject in subjects:  # one row per subject: an upsert may not touch a row twice
        if len(subject.name) > SUBJECT_NAME_MAX or len(subject.detail) > DETAIL_MAX:
            raise ValueError(f"alarm subject {subject.subject_id}: name or detail too long")
        by_id[subject.subject_id] = subject
    chosen = [by_id[key] for key in sorted(by_id)]
    meters = subject_kind is AlarmSubjectKind.meter
    return {
        "subject_ids": [s.subject_id for s in chosen],
        "severities": [AlarmSeverity(s.severity).value for s in chosen],
        "values": [s.value for s in chosen],
        "thresholds": [s.threshold for s in chosen],
        "details": [s.detail for s in chosen],
        "area_ids": [None if meters else s.area_id for s in chosen],
        "names": [s.name for s in chosen],
    }


async def open_alarms(
    session: AsyncSession, *, subject_kind: AlarmSubjectKind, kind: AlarmKind, subjects: Sequence[AlarmSubject],
    now: datetime,
) -> AlarmChanges:
    """Open an alarm of ``kind`` for each of ``subjects`` that has no live one, refresh
    the live ones (one statement), and emit one ``alarm.opened`` with the ids opened.
    Closes nothing: see :func:`reconcile_alarms` and :func:`close_cleared_alarms`."""
    return await reconcile_alarms(session, subject_kind=subject_kind, kind=kind, holding=subjects, checked_ids=(),
                                  now=now)


async def reconcile_alarms(
    session: AsyncSession, *, subject_kind: AlarmSubjectKind, kind: AlarmKind, holding: Sequence[AlarmSubject],
    checked_ids: Sequence[int] | None, now: datetime, closed_by: str = SYSTEM,
) -> AlarmChanges:
    """What a periodic check of ``kind`` found, written in one statement: the ``holding``
    subjects' alarms opened or refreshed, and the live alarms of the ``checked_ids``
    subjects (``None``: every subject of the kind) not among them closed as cleared by
    ``closed_by``. One ``alarm.opened`` and one ``alarm.closed`` when any changed."""
    if not holding and checked_ids is not None and not checked_ids:
        return AlarmChanges()
    subject_kind = AlarmSubjectKind(subject_kind)
    decides = "true" if checked_ids is None else "a.subject_id = ANY(CAST(:checked_ids AS bigint[]))"
    params = _listed_params(subject_kind, holding)
    if checked_ids is not None:
        params["checked_ids"] = sorted(set(checked_ids))
    return await run_sweep(session, _listed_sweep(subject_kind, AlarmKind(kind), decides), params=params, now=now,
                           closed_by=closed_by)


async def close_cleared_alarms(
    session: AsyncSession, *, subject_kind: AlarmSubjectKind, kind: AlarmKind, subject_ids: Sequence[int],
    now: datetime, by: str = SYSTEM, reason: str = CONDITION_CLEARED,
) -> tuple[int, ...]:
    """Close the live alarms of ``kind`` of ``subject_ids``, whose condition cleared
    (acknowledged ones too), as ``by``; one ``alarm.closed``. Returns the ids closed."""
    if not subject_ids:
        return ()
    rows = await session.execute(text(f"""
        UPDATE alarms SET status = 'closed', closed_at = :now, closed_by = :by, close_reason = :reason
        WHERE subject_kind = :subject_kind AND kind = :kind AND {_LIVE} AND subject_id = ANY(CAST(:ids AS bigint[]))
        RETURNING id"""), {"now": now, "by": by, "reason": reason, "subject_kind": AlarmSubjectKind(subject_kind).value,
                          "kind": AlarmKind(kind).value, "ids": sorted(set(subject_ids))})
    closed = tuple(sorted(row.id for row in rows))
    await _emit(session, AlarmChanges(closed=closed), by)
    return closed


# --------------------------------------------------------------------------- scope

_alarm = Alarm.__table__.alias("al")  # type: ignore[attr-defined]
_meter = Meter.__table__.alias("m")  # type: ignore[attr-defined]
_area = Area.__table__.alias("ar")  # type: ignore[attr-defined]
_assignment = MeterAssignment.__table__.alias("ma")  # type: ignore[attr-defined]
_household = Household.__table__.alias("h")  # type: ignore[attr-defined]
_household_area = Area.__table__.alias("ha")  # type: ignore[attr-defined]
_METER = AlarmSubjectKind.meter.value


def _in_scope(alarm: Any, scope_patterns: Sequence[str] | None) -> Any:
    """SQL: the alarm row ``alarm`` lies in the scope (see the module docstring)."""
    meter, area = Meter.__table__.alias("scope_m"), Area.__table__.alias("scope_ar")  # type: ignore[attr-defined]
    meter_in_scope = exists().where(meter.c.id == alarm.c.subject_id, area.c.id == meter.c.area_id,
                                    in_scope(area.c.path, scope_patterns))
    return or_(and_(alarm.c.subject_kind == _METER, meter_in_scope),
               and_(alarm.c.subject_kind != _METER, unit_visible(alarm.c.area_id, scope_patterns)))


def _whole_tree(patterns: Any) -> Any:
    """SQL over a bind of LIKE patterns: they cover every root area (and are not empty)."""
    root = Area.__table__.alias("whole_tree_root")  # type: ignore[attr-defined]
    return and_(func.cardinality(patterns) > 0,
                not_(exists().where(root.c.parent_id.is_(None), not_(root.c.path.like(any_(patterns))))))


# --------------------------------------------------------------------------- people


async def _locked_alarm(
    session: AsyncSession, alarm_id: int, scope_patterns: Sequence[str] | None, subject_kind: AlarmSubjectKind | None
) -> Alarm:
    table = Alarm.__table__  # type: ignore[attr-defined]
    statement: Any = select(Alarm).where(Alarm.id == alarm_id, _in_scope(table, scope_patterns)).with_for_update(of=Alarm)  # type: ignore[arg-type]
    if subject_kind is not None:
        statement = statement.where(Alarm.subject_kind == AlarmSubjectKind(subject_kind))  # type: ignore[arg-type]
    alarm = (await session.execute(statement)).scalars().first()
    if alarm is None:
        raise NotFound(field="id")
    return alarm  # type: ignore[no-any-return]


def _note(value: str | None, field: str) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if len(value) > 500:
        raise DomainError("内容过长 (最多 500 字)", "Too long (500 characters at most)", field=field, code=ErrorCode.TOO_LONG)
    return value or None


async def acknowledge_alarm(
    session: AsyncSession, *, alarm_id: int, by: str, note: str | None, now: datetime,
    scope_patterns: Sequence[str] | None, subject_kind: AlarmSubjectKind | None = None,
) -> Alarm:
    """Mark a live alarm as seen by ``by`` (it stays live until its condition clears or
    someone closes it). Closed or already acknowledged alarms are refused; one outside
    the scope (or not of ``subject_kind``, when given) is NOT_FOUND."""
    note = _note(note, "note")
    alarm = await _locked_alarm(session, alarm_id, scope_patterns, subject_kind)
    if alarm.status is AlarmStatus.closed:
        raise AlarmAlreadyClosed(field="id")
    if alarm.status is AlarmStatus.acknowledged:
        raise AlarmAlreadyAcknowledged(field="id")
    alarm.status = AlarmStatus.acknowledged
    alarm.acknowledged_at = now
    alarm.acknowledged_by = by
    alarm.acknowledge_note = note
    await session.flush()
    return alarm


async def close_alarm(
    session: AsyncSession, *, alarm_id: int, by: str, reason: str | None, now: datetime,
    scope_patterns: Sequence[str] | None, subject_kind: AlarmSubjectKind | None = None,
) -> Alarm:
    """Close a live alarm by hand and emit ``alarm.closed`` (``by``); the next check opens
    a new one if the condition still holds. An already closed alarm is refused
    (ALARM_ALREADY_CLOSED); one outside the scope (or not of ``subject_kind``) is NOT_FOUND."""
    reason = _note(reason, "reason")
    alarm = await _locked_alarm(session, alarm_id, scope_patterns, subject_kind)
    if alarm.status is AlarmStatus.closed:
        raise AlarmAlreadyClosed(field="id")
    alarm.status = AlarmStatus.closed
    alarm.closed_at = now
    alarm.closed_by = by
    alarm.close_reason = reason
    await session.flush()
    await emit_event(session, "alarm.closed", AlarmClosed((alarm_id,), by=by))
    return alarm


# --------------------------------------------------------------------------- the abnormal-meter list

# The columns every view row carries from the alarm itself.
ALARM_COLUMNS = (
    "id", "kind", "status", "severity", "opened_at", "last_seen_at", "value", "threshold", "detail",
    "acknowledged_at", "acknowledged_by", "acknowledge_note", "closed_at", "closed_by", "close_reason",
)


def _household_join(household_scope: Any) -> Any:
    """The meter's current household; with ``household_scope`` (LIKE patterns: a bind or
    a list), a household whose own area lies outside it reads as none: a meter serves only
    households in its area's subtree (backend.archives.service), so only a row from before
    that rule is masked."""
    join = _household.c.id == _assignment.c.household_id
    if household_scope is not None:
        join = join & exists().where(_household_area.c.id == _household.c.area_id,
                                     _household_area.c.path.like(any_(household_scope)))
    return join


def _meter_joined(household_scope: Any = None) -> Any:
    """Meter alarms with their meter, its area and the household it serves now (if any)."""
    return (
        _alarm.join(_meter, (_alarm.c.subject_kind == _METER) & (_meter.c.id == _alarm.c.subject_id))
        .join(_area, _area.c.id == _meter.c.area_id)
        .outerjoin(_assignment, (_assignment.c.meter_id == _meter.c.id) & _assignment.c.valid_to.is_(None))
        .outerjoin(_household, _household_join(household_scope))
    )


def _household_columns() -> list[Any]:
    return [
        _household.c.id.label("household_id"), _household.c.name.label("household_name"),
        _household.c.address.label("household_address"), _household.c.account_no.label("account_no"),
    ]


def _meter_view_columns() -> list[Any]:
    return [
        _alarm.c.id, _alarm.c.subject_id.label("meter_id"), *(_alarm.c[name] for name in ALARM_COLUMNS[1:]),
        _meter.c.code.label("meter_code"), _meter.c.name.label("meter_name"), _meter.c.area_id.label("area_id"),
        _area.c.name.label("area_name"), _area.c.path.label("area_path"), *_household_columns(),
    ]


def _opened_between(conditions: list[Any], by_from: bool, by_to: bool) -> None:
    if by_from:
        conditions.append(_alarm.c.opened_at >= bindparam("opened_from"))
    if by_to:
        conditions.append(_alarm.c.opened_at < bindparam("opened_to"))


def _in_area_subtree() -> Any:
    root = Area.__table__.alias("root")  # type: ignore[attr-defined]
    return _area.c.path.like(
        select(root.c.path + literal_column("'%'")).where(root.c.id == bindparam("area_id", type_=BigInteger))
        .scalar_subquery())


@functools.cache
def _meter_alarm_page_query(
    by_status: bool, by_kinds: bool, by_area: bool, by_meter: bool, by_household: bool, by_from: bool, by_to: bool
) -> tuple[Select[Any], Select[Any]]:
    patterns = bindparam("patterns", type_=ARRAY(Text))
    conditions: list[Any] = [_area.c.path.like(any_(patterns))]
    if by_status:
        conditions.append(_alarm.c.status == any_(bindparam("statuses", type_=ARRAY(Text))))
    if by_kinds:
        conditions.append(_alarm.c.kind == any_(bindparam("kinds", type_=ARRAY(Text))))
    if by_area:
        conditions.append(_in_area_subtree())
    if by_meter:
        conditions.append(_alarm.c.subject_id == bindparam("meter_id", type_=BigInteger))
    if by_household:
        conditions.append(_assignment.c.household_id == bindparam("household_id", type_=BigInteger))
    _opened_between(conditions, by_from, by_to)
    rows = (
        select(*_meter_view_columns()).select_from(_meter_joined(patterns)).where(*conditions)
        .order_by(_alarm.c.opened_at.desc(), _alarm.c.id.desc())
        .offset(bindparam("_offset")).limit(bindparam("_limit"))
    )
    count = select(func.count()).select_from(_meter_joined(patterns)).where(*conditions)
    return rows, count


@dataclass(frozen=True, slots=True)
class MeterAlarmFilter:
    statuses: Sequence[AlarmStatus] | None = None
    kinds: Sequence[AlarmKind] | None = None
    area_id: int | None = None
    meter_id: int | None = None
    household_id: int | None = None
    opened_from: datetime | None = None
    opened_to: datetime | None = None


def _choice_params(params: dict[str, Any], statuses: Any, kinds: Any) -> None:
    if statuses:
        params["statuses"] = [AlarmStatus(s).value for s in statuses]
    if kinds:
        params["kinds"] = [AlarmKind(k).value for k in kinds]


def meter_alarm_page_query(*, scope_patterns: Sequence[str], where: MeterAlarmFilter = MeterAlarmFilter()) -> PagedQuery:
    """Alarms of meters in the scope, newest first, each row the alarm's columns (its
    subject as ``meter_id``) plus its meter (``meter_code``, ``meter_name``), area
    (``area_id``, ``area_name``, ``area_path``) and current household (``household_*``,
    ``account_no``; null when the meter serves none). Paths in areas are ids and slashes,
    so no LIKE escaping is needed."""
    rows, count = _meter_alarm_page_query(
        bool(where.statuses), bool(where.kinds), where.area_id is not None, where.meter_id is not None,
        where.household_id is not None, where.opened_from is not None, where.opened_to is not None,
    )
    params: dict[str, Any] = {"patterns": list(scope_patterns)}
    _choice_params(params, where.statuses, where.kinds)
    for name in ("area_id", "meter_id", "household_id", "opened_from", "opened_to"):
        value = getattr(where, name)
        if value is not None:
            params[name] = value
    return PagedQuery(rows=rows, count=count, params=params)


async def meter_alarm_view(session: AsyncSession, *, alarm_id: int, scope_patterns: Sequence[str] | None) -> Any:
    """One meter alarm as the abnormal-meter list shows it, within the scope; NOT_FOUND
    otherwise (an alarm of another subject kind too)."""
    if scope_patterns is None:
        statement = select(*_meter_view_columns()).select_from(_meter_joined()).where(_alarm.c.id == alarm_id)
    else:
        statement = (select(*_meter_view_columns()).select_from(_meter_joined(array(list(scope_patterns) or ["-"])))
                     .where(_alarm.c.id == alarm_id, in_scope(_area.c.path, scope_patterns)))
    row = (await session.execute(statement)).first()
    if row is None:
        raise NotFound(field="id")
    return row


# --------------------------------------------------------------------------- the list of every subject


def _joined(household_scope: Any = None) -> Any:
    """Alarms of every subject; a meter alarm with its meter, the meter's area and current
    household, any other with its own area (if any)."""
    return (
        _alarm.outerjoin(_meter, (_alarm.c.subject_kind == _METER) & (_meter.c.id == _alarm.c.subject_id))
        .outerjoin(_area, _area.c.id == func.coalesce(_meter.c.area_id, _alarm.c.area_id))
        .outerjoin(_assignment, (_assignment.c.meter_id == _meter.c.id) & _assignment.c.valid_to.is_(None))
        .outerjoin(_household, _household_join(household_scope))
    )


def _view_columns() -> list[Any]:
    return [
        _alarm.c.id, _alarm.c.subject_kind, _alarm.c.subject_id,
        func.coalesce(_meter.c.name, _alarm.c.subject_name).label("subject_name"),
        *(_alarm.c[name] for name in ALARM_COLUMNS[1:]),
        _meter.c.code.label("meter_code"), _meter.c.name.label("meter_name"),
        _area.c.id.label("area_id"), _area.c.name.label("area_name"), _area.c.path.label("area_path"),
        *_household_columns(),
    ]


def _scoped(patterns: Any) -> Any:
    """SQL over a bind of LIKE patterns: the row's area is in them, or it is an alarm of a
    subject other than a meter, without an area (or with a vanished one), and the scope is
    the whole tree."""
    return or_(_area.c.path.like(any_(patterns)),
               and_(_alarm.c.subject_kind != _METER, _area.c.id.is_(None), _whole_tree(patterns)))


@functools.cache
def _alarm_page_query(
    by_subject_kinds: bool, by_subject: bool, by_status: bool, by_kinds: bool, by_severities: bool, by_area: bool,
    by_from: bool, by_to: bool,
) -> tuple[Select[Any], Select[Any]]:
    patterns = bindparam("patterns", type_=ARRAY(Text))
    conditions: list[Any] = [_scoped(patterns)]
    if by_subject_kinds:
        conditions.append(_alarm.c.subject_kind == any_(bindparam("subject_kinds", type_=ARRAY(Text))))
    if by_subject:
        conditions.append(_alarm.c.subject_id == bindparam("subject_id", type_=BigInteger))
    if by_status:
        conditions.append(_alarm.c.status == any_(bindparam("statuses", type_=ARRAY(Text))))
    if by_kinds:
        conditions.append(_alarm.c.kind == any_(bindparam("kinds", type_=ARRAY(Text))))
    if by_severities:
        conditions.append(_alarm.c.severity == any_(bindparam("severities", type_=ARRAY(Text))))
    if by_area:
        conditions.append(_in_area_subtree())
    _opened_between(conditions, by_from, by_to)
    rows = (
        select(*_view_columns()).select_from(_joined(patterns)).where(*conditions)
        .order_by(_alarm.c.opened_at.desc(), _alarm.c.id.desc())
        .offset(bindparam("_offset")).limit(bindparam("_limit"))
    )
    count = select(func.count()).select_from(_joined(patterns)).where(*conditions)
    return rows, count


@dataclass(frozen=True, slots=True)
class AlarmFilter:
    """The general list's filter. ``subject_id`` narrows to one subject (with one subject
    kind); ``area_id`` to alarms in that area's subtree (alarms without an area are then
    left out)."""

    subject_kinds: Sequence[AlarmSubjectKind] | None = None
    subject_id: int | None = None
    statuses: Sequence[AlarmStatus] | None = None
    kinds: Sequence[AlarmKind] | None = None
    severities: Sequence[AlarmSeverity] | None = None
    area_id: int | None = None
    opened_from: datetime | None = None
    opened_to: datetime | None = None


def alarm_page_query(*, scope_patterns: Sequence[str], where: AlarmFilter = AlarmFilter()) -> PagedQuery:
    """Alarms of every subject in the scope, newest first. Each row: the alarm's columns,
    ``subject_kind``, ``subject_id``, ``subject_name`` (a meter's name, else the name its
    owner gave), ``meter_code`` / ``meter_name`` (meters only), the area it lies in
    (``area_id``, ``area_name``, ``area_path``; null for a subject without one) and, for
    a meter, its current household (``household_*``, ``account_no``)."""
    rows, count = _alarm_page_query(
        bool(where.subject_kinds), where.subject_id is not None, bool(where.statuses), bool(where.kinds),
        bool(where.severities), where.area_id is not None, where.opened_from is not None, where.opened_to is not None,
    )
    params: dict[str, Any] = {"patterns": list(scope_patterns)}
    if where.subject_kinds:
        params["subject_kinds"] = [AlarmSubjectKind(k).value for k in where.subject_kinds]
    _choice_params(params, where.statuses, where.kinds)
    if where.severities:
        params["severities"] = [AlarmSeverity(s).value for s in where.severities]
    for name in ("subject_id", "area_id", "opened_from", "opened_to"):
        value = getattr(where, name)
        if value is not None:
            params[name] = value
    return PagedQuery(rows=rows, count=count, params=params)


def _visible_statement(scope_patterns: Sequence[str] | None) -> Select[Any]:
    if scope_patterns is None:
        return select(*_view_columns()).select_from(_joined())
    patterns = literal(list(scope_patterns), ARRAY(Text))
    return select(*_view_columns()).select_from(_joined(patterns)).where(_scoped(patterns))


async def alarm_view(session: AsyncSession, *, alarm_id: int, scope_patterns: Sequence[str] | None) -> Any:
    """One alarm of any subject as the general list shows it, within the scope (``None``:
    unrestricted); NOT_FOUND otherwise."""
    row = (await session.execute(_visible_statement(scope_patterns).where(_alarm.c.id == alarm_id))).first()
    if row is None:
        raise NotFound(field="id")
    return row


async def alarms_visible_to(
    session: AsyncSession, *, alarm_ids: Sequence[int], scope_patterns: Sequence[str] | None
) -> list[Any]:
    """The alarms of ``alarm_ids`` that lie in the scope (``None``: unrestricted), by id,
    as rows of the general list (:func:`alarm_page_query`'s columns); the others are left
    out, whether missing or out of scope. For a consumer of ``alarm.opened`` /
    ``alarm.closed`` that shows each subscriber what they may see: one statement."""
    if not alarm_ids:
        return []
    statement = _visible_statement(scope_patterns).where(
        _alarm.c.id == any_(literal(sorted(set(alarm_ids)), ARRAY(BigInteger)))).order_by(_alarm.c.id)
    return list((await session.execute(statement)).all())

