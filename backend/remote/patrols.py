"""Patrol tasks (巡测任务设定) and their runs.

A task names whom to read (areas, concentrators, meters: the union of what lies under
them, installed and on a link), when (a 5-field cron schedule read in the utility's zone)
and what (the current data, or the last months' history). The minute job
``enqueue_due_patrols`` (``backend.remote.jobs``, a PgQueuer cron job: no scheduler of
our own) calls :func:`enqueue_due_patrols`: for each enabled task whose schedule named a
minute in the last few (a late job still fires it), the latest such minute becomes a
``patrol_runs`` row — unique on (task, minute), so two workers or a rerun enqueue it
once — and a read command per meter, issued by the system actor. Missed older minutes
are superseded by the latest: a patrol reads the meters' present, not each missed minute.

A run's counts follow its commands' ends (:func:`count_outcomes`, called by the command
service). Its states:

- ``running`` from the moment it is enqueued;
- ``running`` → ``interrupted`` (:func:`mark_interrupted`) when commands of it that a
  worker had claimed go back to the queue because that worker died — a killed worker's
  lease taken over by another, or the sweep finding the claimant gone;
  ``interruptions`` counts these and ``interrupted_at`` says when the last one happened;
- ``interrupted`` → ``running`` (:func:`resume_runs`) when any worker claims one of its
  commands again: the resumption is that claim, made by ``claim_commands`` in the same
  transaction, and ``resumed_at`` records it;
- → ``finished`` when every meter of it is read or failed, from either state (a run
  whose remaining commands all ran out of attempts finishes without resuming).

A worker that stops cleanly (SIGTERM) gives its unstarted claims back unspent
(``give_back_commands``) and finishes the exchange in hand: its runs are not interrupted.

A task belongs to a unit (its creator's area; null: the company as a whole) and is seen
and changed by those whose scope covers that unit; its targets must lie in the scope of
whoever saves it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter
from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.archives.models import Area, Concentrator, Meter, MeterStatus
from backend.auth.models import StaffUser
from backend.auth.principal import Principal
from backend.auth.scope import in_scope, path_in_scope, require_area_paths, unit_visible
from backend.errors import DomainError, ErrorCode, Forbidden, NotFound, ValidationFailed
from backend.remote import service
from backend.remote.errors import ScheduleInvalid
from backend.remote.models import CommandKind, PatrolReading, PatrolRun, PatrolTask

MANAGE = "patrols:manage"
NAME_MAX = 100
MAX_TARGETS = 500
# How far back the minute job looks for a due minute (a job that ran late still fires it).
LOOKBACK = timedelta(minutes=5)
# A run's commands may wait this long behind each other on their buses (a bus reads one
# meter at a time); what is not read by then counts as failed.
PATROL_WAIT_S = 3600
_COMMAND_OF = {PatrolReading.current: (CommandKind.read_now, {}),
               PatrolReading.history: (CommandKind.backfill, {"months": 1})}


@dataclass(frozen=True, slots=True)
class PatrolTaskFields:
    name: str
    schedule: str
    reading: PatrolReading = PatrolReading.current
    area_ids: tuple[int, ...] = ()
    concentrator_ids: tuple[int, ...] = ()
    meter_ids: tuple[int, ...] = ()
    time_limit_s: int = service.DEFAULT_TIME_LIMIT_S
    enabled: bool = True


def valid_schedule(schedule: str) -> str:
    """``schedule`` trimmed when it is a 5-field cron expression (PATROL_SCHEDULE_INVALID otherwise)."""
    cleaned = " ".join(schedule.split())
    if len(cleaned.split(" ")) != 5 or not croniter.is_valid(cleaned):
        raise ScheduleInvalid()
    return cleaned


def due_minutes(schedule: str, *, after: datetime, until: datetime, tz: ZoneInfo) -> list[datetime]:
    """The minutes ``schedule`` names in ``(after, until]``, read in ``tz`` (the utility's
    zone: "0 2 * * *" is 02:00 Beijing time), as aware datetimes."""
    found: list[datetime] = []
    iterator = croniter(schedule, after.astimezone(tz))
    while True:
        fire: datetime = iterator.get_next(datetime)
        if fire > until:
            return found
        found.append(fire)


async def _check_targets(session: AsyncSession, principal: Principal, fields: PatrolTaskFields) -> None:
    patterns = principal.scope_patterns()
    problems: list[DomainError] = []
    if not (fields.area_ids or fields.concentrator_ids or fields.meter_ids):
        problems.append(DomainError("请选择巡测的区域、集中器或水表", "Choose areas, concentrators or meters to read",
                                    field="areaIds", code=ErrorCode.REQUIRED))
    if len(fields.area_ids) + len(fields.concentrator_ids) + len(fields.meter_ids) > MAX_TARGETS:
        problems.append(DomainError(f"巡测对象最多 {MAX_TARGETS} 个", f"At most {MAX_TARGETS} targets",
                                    field="meterIds", code=ErrorCode.INVALID))
    name = fields.name.strip()
    if not name:
        problems.append(DomainError("请填写任务名称", "The name is required", field="name", code=ErrorCode.REQUIRED))
    elif len(name) > NAME_MAX:
        problems.append(DomainError(f"最多 {NAME_MAX} 个字", f"At most {NAME_MAX} characters", field="name",
                                    code=ErrorCode.TOO_LONG))
    try:
        valid_schedule(fields.schedule)
    except DomainError as error:
        problems.append(error)
    try:
        service._time_limit(fields.time_limit_s)
    except DomainError as error:
        problems.append(error)
    if problems:
        raise ValidationFailed(problems)
    if fields.area_ids:
        try:
            paths = await require_area_paths(session, fields.area_ids, field="areaIds")
        except DomainError:
            raise NotFound(field="areaIds") from None
        if not all(path_in_scope(path, patterns) for path in paths.values()):
            raise NotFound(field="areaIds")
    for ids, table, id_column, area_column, field in (
            (fields.concentrator_ids, Concentrator, col(Concentrator.id), col(Concentrator.area_id), "concentratorIds"),
            (fields.meter_ids, Meter, col(Meter.id), col(Meter.area_id), "meterIds")):
        if ids:
            found = (await session.execute(select(func.count()).select_from(table)
                                           .join(Area, col(Area.id) == area_column)
                                           .where(id_column.in_(set(ids)), in_scope(col(Area.path), patterns)))
                     ).scalar_one()
            if found != len(set(ids)):
                raise NotFound(field=field)


def _apply(task: PatrolTask, fields: PatrolTaskFields, now: datetime) -> None:
    task.name = fields.name.strip()
    task.schedule = valid_schedule(fields.schedule)
    task.reading = fields.reading
    task.area_ids = sorted(set(fields.area_ids))
    task.concentrator_ids = sorted(set(fields.concentrator_ids))
    task.meter_ids = sorted(set(fields.meter_ids))
    task.time_limit_s = fields.time_limit_s
    task.enabled = fields.enabled
    task.updated_at = now


async def create_patrol_task(session: AsyncSession, *, principal: Principal, fields: PatrolTaskFields,
                             now: datetime) -> PatrolTask:
    """A new task of the principal's unit (``patrols:manage``), its targets in their scope."""
    if not principal.has(MANAGE):
        raise Forbidden()
    await _check_targets(session, principal, fields)
    unit_id = None
    if principal.is_staff:
        unit_id = (await session.execute(select(col(StaffUser.area_id)).where(col(StaffUser.id) == principal.id))
                   ).scalar_one_or_none()
    task = PatrolTask(name="", schedule="", reading=fields.reading, unit_id=unit_id, created_by_id=principal.id,
                      created_at=now, updated_at=now)
    _apply(task, fields, now)
    session.add(task)
    await session.flush()
    return task


async def patrol_task(session: AsyncSession, *, principal: Principal, task_id: int, lock: bool = False) -> PatrolTask:
    """The task when its unit lies in the principal's scope; NOT_FOUND otherwise."""
    statement = select(PatrolTask).where(col(PatrolTask.id) == task_id,
                                         unit_visible(col(PatrolTask.unit_id), principal.scope_patterns()))
    if lock:
        statement = statement.with_for_update(of=PatrolTask)  # type: ignore[arg-type]
    found = (await session.execute(statement.execution_options(populate_existing=True))).scalar_one_or_none()
    if found is None:
        raise NotFound(field="id")
    return found


async def update_patrol_task(session: AsyncSession, *, principal: Principal, task_id: int, fields: PatrolTaskFields,
                             now: datetime) -> PatrolTask:
    if not principal.has(MANAGE):
        raise Forbidden()
    task = await patrol_task(session, principal=principal, task_id=task_id, lock=True)
    await _check_targets(session, principal, fields)
    _apply(task, fields, now)
    await session.flush()
    return task


async def set_patrol_task_enabled(session: AsyncSession, *, principal: Principal, task_id: int, enabled: bool,
                                  now: datetime) -> PatrolTask:
    """Enable or disable a task; an enabled task fires from the next minute its schedule names."""
    if not principal.has(MANAGE):
        raise Forbidden()
    task = await patrol_task(session, principal=principal, task_id=task_id, lock=True)
    task.enabled, task.updated_at = enabled, now
    await session.flush()
    return task


async def delete_patrol_task(session: AsyncSession, *, principal: Principal, task_id: int) -> PatrolTask:
    """Delete a task and its run history (its commands stay, as records of what was sent)."""
    if not principal.has(MANAGE):
        raise Forbidden()
    task = await patrol_task(session, principal=principal, task_id=task_id, lock=True)
    await session.execute(delete(PatrolTask).where(col(PatrolTask.id) == task_id))
    return task


def patrol_tasks_query(*, principal: Principal) -> Any:
    return (select(PatrolTask).where(unit_visible(col(PatrolTask.unit_id), principal.scope_patterns()))
            .order_by(col(PatrolTask.id)))


def patrol_runs_query(*, principal: Principal, task_id: int | None = None) -> Any:
    statement = (select(PatrolRun).join(PatrolTask, col(PatrolTask.id) == col(PatrolRun.task_id))
                 .where(unit_visible(col(PatrolTask.unit_id), principal.scope_patterns())))
    if task_id is not None:
        statement = statement.where(col(PatrolRun.task_id) == task_id)
    return statement.order_by(col(PatrolRun.id).desc())


# --------------------------------------------------------------------------- runs


def success_rate(run: PatrolRun) -> float | None:
    """Meters read / meters of the run (None for a run without meters)."""
    return run.meters_read / run.meters_total if run.meters_total else None


async def _meters_of(session: AsyncSession, task: PatrolTask) -> list[int]:
    """The task's installed meters on a link (a meter moved off its link since the task
    was saved is not read, rather than failing the run)."""
    reachable = col(Meter.concentrator_id).is_not(None) | col(Meter.mqtt_topic).is_not(None)
    selection = service.Selection(area_ids=tuple(task.area_ids), concentrator_ids=tuple(task.concentrator_ids))
    chosen: set[int] = set()
    if task.meter_ids:
        chosen |= {i for i in (await session.execute(select(col(Meter.id)).where(
            col(Meter.id).in_(task.meter_ids), col(Meter.status) == MeterStatus.installed, reachable))).scalars()
                   if i is not None}
    if selection.is_range:
        conditions = []
        if task.area_ids:
            paths = (await session.execute(select(col(Area.path)).where(col(Area.id).in_(task.area_ids)))).scalars()
            conditions.append(in_scope(col(Area.path), [p + "%" for p in paths]))
        if task.concentrator_ids:
            conditions.append(col(Meter.concentrator_id).in_(task.concentrator_ids))
        from sqlalchemy import or_

        chosen |= {i for i in (await session.execute(
            select(col(Meter.id)).join(Area, col(Area.id) == col(Meter.area_id))
            .where(or_(*conditions), col(Meter.status) == MeterStatus.installed, reachable))).scalars() if i is not None}
    return sorted(chosen)


async def enqueue_due_patrols(session: AsyncSession, *, now: datetime, tz: ZoneInfo, actor: Principal,
                              lookback: timedelta = LOOKBACK) -> list[PatrolRun]:
    """The runs due now (module docstring), each with its read commands queued by
    ``actor`` (the system actor); a minute already enqueued for a task is skipped."""
    tasks = (await session.execute(select(PatrolTask).where(col(PatrolTask.enabled)).order_by(col(PatrolTask.id))
                                   )).scalars().all()
    runs: list[PatrolRun] = []
    for task in tasks:
        after = max(now - lookback, task.updated_at)
        minutes = due_minutes(task.schedule, after=after, until=now, tz=tz)
        if not minutes:
            continue
        run_id = (await session.execute(text(
            "INSERT INTO patrol_runs (task_id, due_at, state, meters_total, meters_read, meters_failed, started_at) "
            "VALUES (:task_id, :due_at, 'running', 0, 0, 0, :now) ON CONFLICT (task_id, due_at) DO NOTHING RETURNING id"),
            {"task_id": task.id, "due_at": minutes[-1], "now": now})).scalar_one_or_none()
        if run_id is None:
            continue  # enqueued already (another worker, or a rerun of this minute)
        meter_ids = await _meters_of(session, task)
        kind, params = _COMMAND_OF[task.reading]
        # One batch for the run, queued a user action's worth at a time (a company's patrol
        # is larger than any one desk action).
        batch_id, queued = uuid.uuid4(), 0
        for offset in range(0, len(meter_ids), service.MAX_BATCH_METERS):
            chunk = tuple(meter_ids[offset:offset + service.MAX_BATCH_METERS])
            batch = await service.queue_commands(
                session, selection=service.Selection(meter_ids=chunk), kind=kind, params=params, issued_by=actor,
                time_limit_s=task.time_limit_s, now=now, batch_id=batch_id, patrol_run_id=run_id, wait_s=PATROL_WAIT_S)
            queued += len(batch.command_ids)
        await session.execute(text(
            "UPDATE patrol_runs SET meters_total = :total, "
            "state = CASE WHEN :total = 0 THEN 'finished' ELSE state END, "
            "finished_at = CASE WHEN :total = 0 THEN CAST(:now AS timestamptz) END WHERE id = :id"),
            {"total": queued, "now": now, "id": run_id})
        run = await session.get(PatrolRun, run_id, populate_existing=True)
        assert run is not None
        runs.append(run)
    return runs


async def count_outcomes(session: AsyncSession, outcomes: Mapping[int, tuple[int, int]], *, now: datetime) -> None:
    """Add ``{run id: (read, failed)}`` to the runs' counts (one statement); a run whose
    every meter is accounted for is ``finished``."""
    if not outcomes:
        return
    run_ids = sorted(outcomes)
    await session.execute(text("""
        UPDATE patrol_runs r
           SET meters_read = r.meters_read + o.read, meters_failed = r.meters_failed + o.failed,
               state = CASE WHEN r.meters_read + o.read + r.meters_failed + o.failed >= r.meters_total
                            THEN 'finished' ELSE r.state END,
               finished_at = CASE WHEN r.meters_read + o.read + r.meters_failed + o.failed >= r.meters_total
                                  THEN CAST(:now AS timestamptz) ELSE r.finished_at END
          FROM unnest(CAST(:ids AS bigint[]), CAST(:read AS integer[]), CAST(:failed AS integer[])) AS o(id, read, failed)
         WHERE r.id = o.id
    """), {"ids": run_ids, "read": [outcomes[i][0] for i in run_ids], "failed": [outcomes[i][1] for i in run_ids],
           "now": now})


async def mark_interrupted(session: AsyncSession, *, run_ids: set[int], now: datetime) -> None:
    """running → interrupted, for runs whose commands went back to the queue because
    their worker died (its lease expired and was taken over, or the sweep found it gone);
    each interruption is counted."""
    if run_ids:
        await session.execute(text("UPDATE patrol_runs SET state = 'interrupted', interruptions = interruptions + 1, "
                                   "interrupted_at = :now WHERE id = ANY(CAST(:ids AS bigint[])) AND state = 'running'"),
                              {"ids": sorted(run_ids), "now": now})


async def resume_runs(session: AsyncSession, *, run_ids: set[int], now: datetime) -> None:
    """interrupted → running, when a worker claims a command of the run again: the
    resumption is the claim itself (no scheduler decides it), and ``resumed_at`` says when.
    A run that was not interrupted is left alone."""
    if run_ids:
        await session.execute(text("UPDATE patrol_runs SET state = 'running', resumed_at = :now "
                                   "WHERE id = ANY(CAST(:ids AS bigint[])) AND state = 'interrupted'"),
                              {"ids": sorted(run_ids), "now": now})

