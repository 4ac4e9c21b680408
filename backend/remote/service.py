"""Remote commands (远程控制 / 实时数据采集): the one writer of ``remote_commands`` and
``link_leases``, and the only emitter of ``command.changed`` / ``command.finished``.

**Queueing.** :func:`queue_command` (DESIGN.md "Contracts") queues one command for one
meter; :func:`queue_commands` queues one for every meter of a selection, as one batch
(one user action): 范围模式 everything installed under chosen areas or on chosen
concentrators, or 复选模式 a checked list of meters. The caller's data scope narrows
both inside the query; a checked meter outside it is NOT_FOUND. The command's
parameters are checked against the catalog (``backend.remote.catalog``); a valve
command for a meter without a valve, or any command for a meter on no link, is refused
in 复选模式 (REMOTE_METER_HAS_NO_VALVE / REMOTE_METER_UNREACHABLE) and skipped in
范围模式 (a building's meters without valves are no reason to refuse the rest; the
batch says what it skipped).

**Links and leases.** A meter's command travels on its link: ``concentrator:<id>`` (a
bus, a DTU or a terminal that dials in) or ``mqtt`` (NB-IoT meters, through the broker).
A worker takes a lease on the links it serves (:func:`take_leases`, renewed by taking
again or :func:`renew_leases`, :func:`release_leases` at shutdown) and claims only the
queued commands of links it holds (:func:`claim_commands`, ``FOR UPDATE SKIP LOCKED``),
so two workers never claim one command and a link nobody holds keeps its commands
queued. Taking over an expired lease puts the commands its old holder had claimed but
not finished back in the queue (attempts left permitting), as does the sweep.

**States.** queued → sent (claimed on a bus link) → succeeded | failed | timed_out
(past its deadline: the worker's own record, or the sweep's); a claimed command its
worker never started goes back to queued, its attempt returned
(:func:`give_back_commands`, when a bus stops);
NB-IoT commands go queued → pending_delivery (claimed by the broker's holder) → sent
(:func:`mark_sent`, at the device's uplink) → …. :func:`finish_command` records the
result (a failure may go back to the queue while attempts remain); a set_params is read
back by the worker in the same claim, its reply the values the meter then holds (no
follow-up command: the desk sees them on the setting's own row).
:func:`sweep_commands` times out whatever passed its deadline (created at + its time
limit). A patrol run's counts follow its commands' ends (``backend.remote.patrols``).

Execution passwords live in ``backend.remote.passwords``, patrol tasks in
``backend.remote.patrols``. Plain async functions over a session; the caller commits.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.archives.models import Area, Concentrator, Meter, MeterAssignment, MeterModel, MeterStatus
from backend.auth.principal import Principal
from backend.auth.scope import in_scope, path_in_scope, require_area_paths
from backend.errors import DomainError, ErrorCode, Forbidden, NotFound
from backend.events.service import emit_event
from backend.pagination import PagedQuery
from backend.remote.catalog import TargetKind, checked_params, spec_of
from backend.remote.errors import (
    CommandNotHeld,
    MeterHasNoValve,
    MeterUnreachable,
    SelectionEmpty,
    SelectionTooLarge,
    TimeLimitInvalid,
)
from backend.remote.events import CommandChanged, CommandFinished
from backend.remote.models import (
    FINISHED_STATES,
    CommandKind,
    CommandState,
    FailureKind,
    IssuerKind,
    RemoteCommand,
)

DEFAULT_TIME_LIMIT_S = 30
# NB-IoT meters answer at their next uplink (hours apart): their commands wait this long
# (their model's ``uplink_wait_s``, this for a meter without a model) unless a longer
# limit is given.
NB_IOT_TIME_LIMIT_S = 24 * 3600
MAX_TIME_LIMIT_S = 7 * 24 * 3600
DEFAULT_MAX_ATTEMPTS = 3
# One user action reaches at most this many meters (a district at a time, not the company).
MAX_BATCH_METERS = 5000
MQTT_LINK = "mqtt"
_REASON_MAX = 500


def concentrator_link(concentrator_id: int) -> str:
    """The link name of a concentrator (its lease row, its commands' ``link``)."""
    return f"concentrator:{concentrator_id}"


@dataclass(frozen=True, slots=True)
class Selection:
    """Which meters one action is for: 范围模式 (``area_ids`` and/or ``concentrator_ids``:
    every installed meter under them) or 复选模式 (``meter_ids``: exactly these). The
    desk's 全选 / 反选 only change which ids it sends."""

    area_ids: tuple[int, ...] = ()
    concentrator_ids: tuple[int, ...] = ()
    meter_ids: tuple[int, ...] = ()

    @property
    def is_range(self) -> bool:
        return bool(self.area_ids or self.concentrator_ids)


@dataclass(frozen=True, slots=True)
class SkippedMeter:
    meter_id: int
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class QueuedBatch:
    batch_id: uuid.UUID
    command_ids: list[int]
    skipped: list[SkippedMeter] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Candidate:
    meter_id: int
    code: str
    area_path: str
    concentrator_id: int | None
    mqtt_topic: str | None
    has_valve: bool
    uplink_wait_s: int

    @property
    def link(self) -> str | None:
        if self.concentrator_id is not None:
            return concentrator_link(self.concentrator_id)
        return MQTT_LINK if self.mqtt_topic else None


def issuer_of(principal: Principal) -> tuple[IssuerKind, int | None, str]:
    """Who the command's row names: a staff user (id, name) or the system (系统)."""
    if principal.is_staff:
        return IssuerKind.staff, principal.id, principal.name[:100]
    return IssuerKind.system, None, "系统"


def _time_limit(time_limit_s: int | None) -> int | None:
    if time_limit_s is None:
        return None
    if not 1 <= time_limit_s <= MAX_TIME_LIMIT_S:
        raise TimeLimitInvalid(1, MAX_TIME_LIMIT_S)
    return time_limit_s


def _limit_for(candidate: _Candidate, time_limit_s: int | None) -> int:
    if candidate.concentrator_id is None:  # NB-IoT: waits for the uplink, as long as its model says
        return max(time_limit_s or 0, candidate.uplink_wait_s)
    return time_limit_s or DEFAULT_TIME_LIMIT_S


def _candidates_query() -> Any:
    return (select(col(Meter.id), col(Meter.code), col(Area.path), col(Meter.concentrator_id), col(Meter.mqtt_topic),
                   func.coalesce(col(MeterModel.has_valve), False).label("has_valve"),
                   func.coalesce(col(MeterModel.uplink_wait_s), NB_IOT_TIME_LIMIT_S).label("uplink_wait_s"))
            .join(Area, col(Area.id) == col(Meter.area_id))
            .outerjoin(MeterModel, col(MeterModel.id) == col(Meter.model_id)))


async def _selected(session: AsyncSession, selection: Selection, scope_patterns: Sequence[str] | None) -> list[_Candidate]:
    """The meters of ``selection`` within the scope (see the module docstring); refuses an
    area or concentrator or checked meter outside it (NOT_FOUND) and a mixed selection."""
    if selection.is_range and selection.meter_ids:
        raise DomainError("范围模式与复选模式只能选其一", "Choose areas/concentrators or a list of meters, not both",
                          field="selection", code=ErrorCode.INVALID)
    query = _candidates_query().where(in_scope(col(Area.path), scope_patterns))
    if selection.is_range:
        choices = []
        if selection.area_ids:
            try:
                paths = await require_area_paths(session, selection.area_ids, field="areaIds")
            except DomainError:
                raise NotFound(field="areaIds") from None
            if not all(path_in_scope(path, scope_patterns) for path in paths.values()):
                raise NotFound(field="areaIds")
            choices.append(in_scope(col(Area.path), [p + "%" for p in paths.values()]))
        if selection.concentrator_ids:
            wanted = set(selection.concentrator_ids)
            found = (await session.execute(
                select(col(Concentrator.id)).join(Area, col(Area.id) == col(Concentrator.area_id))
                .where(col(Concentrator.id).in_(wanted), in_scope(col(Area.path), scope_patterns)))).scalars().all()
            if set(found) != wanted:
                raise NotFound(field="concentratorIds")
            choices.append(col(Meter.concentrator_id).in_(wanted))
        query = query.where(or_(*choices), col(Meter.status) == MeterStatus.installed)
    else:
        wanted = set(selection.meter_ids)
        if not wanted:
            raise SelectionEmpty()
        if len(wanted) > MAX_BATCH_METERS:
            raise SelectionTooLarge(MAX_BATCH_METERS)
        query = query.where(col(Meter.id).in_(wanted))
    rows = (await session.execute(query.order_by(col(Meter.id)).limit(MAX_BATCH_METERS + 1))).all()
    if len(rows) > MAX_BATCH_METERS:
        raise SelectionTooLarge(MAX_BATCH_METERS)
    candidates = [_Candidate(*row) for row in rows]
    if not selection.is_range and len(candidates) != len(set(selection.meter_ids)):
        raise NotFound(field="meterIds")
    return candidates


_INSERT_COMMANDS = text("""
INSERT INTO remote_commands (batch_id, meter_id, concentrator_id, link, area_path, kind, params, state, attempts,
                             max_attempts, time_limit_s, deadline, issued_by_kind, issued_by_id, issued_by_name,
                             follows_id, patrol_run_id, created_at, updated_at)
SELECT :batch_id, m.meter_id, m.concentrator_id, m.link, m.area_path, :kind, CAST(:params AS jsonb), 'queued', 0,
       :max_attempts, m.time_limit_s, CAST(:now AS timestamptz) + make_interval(secs => m.wait_s),
       :issued_by_kind, :issued_by_id, :issued_by_name, :follows_id, :patrol_run_id, :now, :now
FROM unnest(CAST(:meter_ids AS bigint[]), CAST(:concentrator_ids AS bigint[]), CAST(:links AS text[]),
            CAST(:area_paths AS text[]), CAST(:time_limits AS integer[]), CAST(:waits AS integer[]))
     AS m(meter_id, concentrator_id, link, area_path, time_limit_s, wait_s)
ORDER BY m.meter_id
RETURNING id
""")


async def _insert_commands(
    session: AsyncSession, candidates: Sequence[_Candidate], *, kind: CommandKind, params: Mapping[str, Any],
    issued_by: Principal, time_limit_s: int | None, now: datetime, batch_id: uuid.UUID,
    follows_id: int | None = None, patrol_run_id: int | None = None, wait_s: int | None = None,
) -> list[int]:
    import json

    limits = [_limit_for(c, time_limit_s) for c in candidates]
    issuer_kind, issuer_id, issuer_name = issuer_of(issued_by)
    ids = (await session.execute(_INSERT_COMMANDS, {
        "batch_id": batch_id, "kind": kind.value, "params": json.dumps(dict(params), ensure_ascii=False),
        "max_attempts": DEFAULT_MAX_ATTEMPTS, "now": now, "issued_by_kind": issuer_kind.value,
        "issued_by_id": issuer_id, "issued_by_name": issuer_name, "follows_id": follows_id,
        "patrol_run_id": patrol_run_id,
        "meter_ids": [c.meter_id for c in candidates], "concentrator_ids": [c.concentrator_id for c in candidates],
        "links": [c.link for c in candidates], "area_paths": [c.area_path for c in candidates],
        "time_limits": limits, "waits": [max(limit, wait_s or 0) for limit in limits],
    })).scalars().all()
    command_ids = list(ids)
    if command_ids:
        await emit_event(session, "command.changed", CommandChanged(
            tuple(command_ids), CommandState.queued.value, tuple(sorted({c.link for c in candidates if c.link}))),
                         key=f"batch:{batch_id}")
    return command_ids


def _refusal(candidate: _Candidate, needs_valve: bool) -> DomainError | None:
    if candidate.link is None:
        return MeterUnreachable(candidate.code)
    if needs_valve and not candidate.has_valve:
        return MeterHasNoValve(candidate.code)
    return None


async def queue_commands(
    session: AsyncSession, *, selection: Selection, kind: CommandKind, params: Mapping[str, Any] | None,
    issued_by: Principal, time_limit_s: int | None, now: datetime, batch_id: uuid.UUID | None = None,
    patrol_run_id: int | None = None, wait_s: int | None = None,
) -> QueuedBatch:
    """One ``kind`` command per meter of ``selection`` within ``issued_by``'s scope, as one
    batch (module docstring). ``issued_by`` needs the command's permission (catalog).
    ``time_limit_s`` (命令时限, 1 s to 7 days) defaults to 30 s; NB-IoT meters wait 24 h.
    The deadline is ``now`` plus the time limit (a desk's command is answered in time or
    not at all), or plus ``wait_s`` when that is longer: patrols and automatic commands
    may wait in the queue behind others."""
    spec = spec_of(TargetKind.meter, kind)
    if not issued_by.has(spec.permission):
        raise Forbidden()
    stored_params = checked_params(spec, params)
    limit = _time_limit(time_limit_s)
    candidates = await _selected(session, selection, issued_by.scope_patterns())
    chosen: list[_Candidate] = []
    skipped: list[SkippedMeter] = []
    for candidate in candidates:
        refusal = _refusal(candidate, spec.needs_valve)
        if refusal is None:
            chosen.append(candidate)
        elif selection.is_range:
            skipped.append(SkippedMeter(candidate.meter_id, candidate.code, refusal.message))
        else:
            raise refusal
    if not chosen:
        raise SelectionEmpty()
    batch = batch_id or uuid.uuid4()
    ids = await _insert_commands(session, chosen, kind=kind, params=stored_params, issued_by=issued_by,
                                 time_limit_s=limit, now=now, batch_id=batch, patrol_run_id=patrol_run_id,
                                 wait_s=wait_s)
    return QueuedBatch(batch, ids, skipped)


async def meter_in_scope(session: AsyncSession, *, meter_id: int, principal: Principal) -> None:
    """NOT_FOUND (field meterId) unless meter ``meter_id`` is in ``principal``'s scope."""
    await _selected(session, Selection(meter_ids=(meter_id,)), principal.scope_patterns())


async def valve_meters_of_household(session: AsyncSession, household_id: int) -> list[int]:
    """The meters serving the household now that have a valve and a way to be reached (a
    concentrator or an NB-IoT topic): what an automatic open or close commands."""
    rows = (await session.execute(
        select(col(Meter.id)).join(MeterAssignment, col(MeterAssignment.meter_id) == col(Meter.id))
        .join(MeterModel, col(MeterModel.id) == col(Meter.model_id))
        .where(col(MeterAssignment.household_id) == household_id, col(MeterAssignment.valid_to).is_(None),
               col(MeterModel.has_valve), (col(Meter.concentrator_id).is_not(None)) | (col(Meter.mqtt_topic).is_not(None)))
        .order_by(col(Meter.id)))).scalars().all()
    return [meter_id for meter_id in rows if meter_id is not None]


async def queue_command(
    session: AsyncSession, *, target: int, kind: CommandKind, params: Mapping[str, Any] | None, issued_by: Principal,
    time_limit_s: int | None = None, now: datetime | None = None,
) -> RemoteCommand:
    """One command for meter ``target`` (DESIGN.md "Contracts"): the checked-list form of
    :func:`queue_commands` for one meter. A valve command for a meter without a valve is
    REMOTE_METER_HAS_NO_VALVE, a meter on no link REMOTE_METER_UNREACHABLE, parameters
    outside the catalog REMOTE_PARAMS_INVALID; nothing is written then."""
    from backend.clock import utcnow

    batch = await queue_commands(session, selection=Selection(meter_ids=(target,)), kind=kind, params=params,
                                 issued_by=issued_by, time_limit_s=time_limit_s, now=now or utcnow())
    return await command(session, command_id=batch.command_ids[0])


async def command(session: AsyncSession, *, command_id: int) -> RemoteCommand:
    found = (await session.execute(select(RemoteCommand).where(col(RemoteCommand.id) == command_id)
                                   .execution_options(populate_existing=True))).scalar_one_or_none()
    if found is None:
        raise NotFound(field="id")
    return found


async def commands_by_id(session: AsyncSession, command_ids: Sequence[int]) -> list[RemoteCommand]:
    return list((await session.execute(
        select(RemoteCommand).where(col(RemoteCommand.id).in_(list(command_ids))).order_by(col(RemoteCommand.id))
        .execution_options(populate_existing=True))).scalars())


# --------------------------------------------------------------------------- leases


_TAKE_LEASES = text("""
INSERT INTO link_leases (link, holder, expires_at, taken_at, renewed_at)
SELECT link, :holder, :expires_at, :now, :now FROM unnest(CAST(:links AS text[])) AS wanted(link)
ON CONFLICT (link) DO UPDATE
   SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at, renewed_at = EXCLUDED.renewed_at,
       taken_at = CASE WHEN link_leases.holder = EXCLUDED.holder THEN link_leases.taken_at ELSE EXCLUDED.taken_at END
 WHERE link_leases.holder = EXCLUDED.holder OR link_leases.expires_at <= EXCLUDED.renewed_at
RETURNING link
""")


async def take_leases(session: AsyncSession, *, holder: str, links: Sequence[str], ttl: timedelta,
                      now: datetime) -> list[str]:
    """Take (or renew) the lease of each of ``links`` for ``holder`` until ``now + ttl``:
    those nobody holds, those ``holder`` holds already, and those whose lease expired
    (another worker was killed). Returns the links held now, sorted. The commands an
    expired holder had claimed and not finished go back to the queue."""
    taken = sorted((await session.execute(_TAKE_LEASES, {
        "holder": holder, "expires_at": now + ttl, "now": now, "links": sorted(set(links)),
    })).scalars().all())
    if taken:
        await _requeue_orphans(session, now=now, links=taken)
    return taken


async def renew_leases(session: AsyncSession, *, holder: str, links: Sequence[str], ttl: timedelta,
                       now: datetime) -> list[str]:
    """Extend the leases ``holder`` still holds among ``links`` (not one another worker
    took meanwhile); returns them, sorted. A link missing from the answer is lost."""
    rows = await session.execute(text(
        "UPDATE link_leases SET expires_at = :expires_at, renewed_at = :now "
        "WHERE holder = :holder AND link = ANY(CAST(:links AS text[])) RETURNING link"),
        {"holder": holder, "links": sorted(set(links)), "expires_at": now + ttl, "now": now})
    return sorted(rows.scalars().all())


async def release_leases(session: AsyncSession, *, holder: str, links: Sequence[str] | None = None) -> list[str]:
    """Give up ``holder``'s leases (all of them when ``links`` is None), at shutdown."""
    statement = "DELETE FROM link_leases WHERE holder = :holder"
    values: dict[str, Any] = {"holder": holder}
    if links is not None:
        statement += " AND link = ANY(CAST(:links AS text[]))"
        values["links"] = list(links)
    return sorted((await session.execute(text(statement + " RETURNING link"), values)).scalars().all())


# --------------------------------------------------------------------------- claiming and results


_CLAIM = text("""
WITH held AS (
    SELECT link FROM link_leases
     WHERE holder = :holder AND expires_at > :now AND link = ANY(CAST(:links AS text[]))
), picked AS (
    SELECT c.id FROM remote_commands c
     WHERE c.state = 'queued' AND c.link IN (SELECT link FROM held) AND c.deadline > :now
     ORDER BY c.id
     LIMIT :limit
     FOR UPDATE SKIP LOCKED
)
UPDATE remote_commands c
   SET state = CASE WHEN c.link = :mqtt THEN 'pending_delivery' ELSE 'sent' END,
       attempts = c.attempts + 1, claimed_by = :holder,
       sent_at = CASE WHEN c.link = :mqtt THEN NULL ELSE CAST(:now AS timestamptz) END, updated_at = :now
  FROM picked
 WHERE c.id = picked.id
RETURNING c.id, c.state, c.link, c.patrol_run_id, c.kind
""")


async def claim_commands(session: AsyncSession, *, holder: str, link_ids: Sequence[str], limit: int,
                         now: datetime) -> list[RemoteCommand]:
    """Claim up to ``limit`` queued commands, oldest first, of those of ``link_ids`` whose
    lease ``holder`` holds now (commands of any other link are never claimed). Rows
    another transaction is claiming are skipped (SKIP LOCKED), so concurrent workers never
    claim one command twice. Bus commands become ``sent``, NB-IoT ones
    ``pending_delivery``; each claim counts an attempt. A write_purchase whose payment
    went back meanwhile is cancelled here instead of being returned
    (``backend.remote.purchases``)."""
    if limit <= 0 or not link_ids:
        return []
    rows = (await session.execute(_CLAIM, {"holder": holder, "links": sorted(set(link_ids)), "limit": limit,
                                           "now": now, "mqtt": MQTT_LINK})).all()
    purchase_ids = [row.id for row in rows if row.kind == CommandKind.write_purchase.value]
    if purchase_ids:
        from backend.remote.purchases import purchases_claimed

        cancelled = set(await purchases_claimed(session, await commands_by_id(session, purchase_ids), now))
        rows = [row for row in rows if row.id not in cancelled]
    by_state: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        by_state[row.state].append(row)
    for state, claimed in sorted(by_state.items()):
        await emit_event(session, "command.changed", _changed(claimed, state))
    from backend.remote.patrols import resume_runs

    await resume_runs(session, run_ids={row.patrol_run_id for row in rows if row.patrol_run_id is not None}, now=now)
    return await commands_by_id(session, [row.id for row in rows])


def _changed(rows: Sequence[Any], state: str) -> CommandChanged:
    """The ``command.changed`` payload of these commands (rows with ``id`` and ``link``)."""
    return CommandChanged(tuple(sorted(row.id for row in rows)), state, tuple(sorted({row.link for row in rows})))


_GIVE_BACK = text("""
UPDATE remote_commands
   SET state = 'queued', attempts = GREATEST(attempts - 1, 0), claimed_by = NULL, sent_at = NULL, updated_at = :now
 WHERE id = ANY(CAST(:ids AS bigint[])) AND claimed_by = :holder AND state IN ('sent', 'pending_delivery')
RETURNING id, link
""")


async def give_back_commands(session: AsyncSession, *, holder: str, command_ids: Sequence[int],
                             now: datetime) -> list[int]:
    """Put back in the queue commands ``holder`` claimed but never started (its bus
    stopped: SIGTERM, a lost lease): ``queued`` again with the attempt the claim counted
    returned, since nothing went on the wire. Only those still claimed by ``holder`` and
    unfinished (one taken over meanwhile is its new holder's). Returns their ids, sorted.
    Unlike a lease taken over, this does not interrupt a patrol run: nothing was lost."""
    if not command_ids:
        return []
    rows = (await session.execute(_GIVE_BACK, {"ids": sorted(set(command_ids)), "holder": holder, "now": now})).all()
    if rows:
        await emit_event(session, "command.changed", _changed(rows, CommandState.queued.value))
    return sorted(row.id for row in rows)


async def _held_command(session: AsyncSession, command_id: int, holder: str, states: Sequence[CommandState],
                        now: datetime) -> RemoteCommand:
    """The command, locked, when ``holder`` claimed it, still holds its link, and it is in
    one of ``states``; REMOTE_COMMAND_NOT_HELD otherwise."""
    found = (await session.execute(
        select(RemoteCommand).where(col(RemoteCommand.id) == command_id).with_for_update()
        .execution_options(populate_existing=True))).scalar_one_or_none()
    if found is None or found.claimed_by != holder or found.state not in states:
        raise CommandNotHeld()
    held = (await session.execute(text(
        "SELECT 1 FROM link_leases WHERE link = :link AND holder = :holder AND expires_at > :now"),
        {"link": found.link, "holder": holder, "now": now})).first()
    if held is None:
        raise CommandNotHeld()
    return found


async def mark_sent(session: AsyncSession, *, command_id: int, holder: str, now: datetime) -> RemoteCommand:
    """An NB-IoT command went out at its device's uplink: pending_delivery → sent."""
    found = await _held_command(session, command_id, holder, (CommandState.pending_delivery,), now)
    found.state, found.sent_at, found.updated_at = CommandState.sent, now, now
    await session.flush()
    await emit_event(session, "command.changed", CommandChanged((command_id,), CommandState.sent.value, (found.link,)))
    return found


async def pending_deliveries(session: AsyncSession, *, meter_id: int, holder: str, now: datetime) -> list[RemoteCommand]:
    """The commands of an NB-IoT meter that ``holder`` claimed and that wait for the
    device's next uplink (``pending_delivery``, deadline ahead), oldest first: what the
    broker's holder delivers when the device calls."""
    return list((await session.execute(
        select(RemoteCommand).where(col(RemoteCommand.meter_id) == meter_id,
                                    col(RemoteCommand.state) == CommandState.pending_delivery,
                                    col(RemoteCommand.claimed_by) == holder, col(RemoteCommand.deadline) > now)
        .order_by(col(RemoteCommand.id)).execution_options(populate_existing=True))).scalars())


async def finish_command(
    session: AsyncSession, *, command_id: int, holder: str, succeeded: bool, now: datetime,
    reply: Mapping[str, Any] | None = None, failure_kind: FailureKind | None = None, failure_reason: str | None = None,
    retry: bool = False,
) -> RemoteCommand:
    """Record the result of a command ``holder`` claimed and still holds (else
    REMOTE_COMMAND_NOT_HELD: it timed out or was taken over meanwhile). A failure with
    ``retry`` goes back to the queue while attempts remain and the deadline is ahead; one
    past its deadline (its time limit, 命令时限) that was still worth trying, or that
    failed as a timeout, is ``timed_out``; otherwise it is ``failed``. A succeeded
    set_params queues its read-back."""
    found = await _held_command(session, command_id, holder, (CommandState.sent, CommandState.pending_delivery), now)
    found.reply = dict(reply) if reply is not None else found.reply
    found.updated_at = now
    if succeeded:
        found.state, found.failure_kind, found.failure_reason = CommandState.succeeded, None, None
    else:
        found.failure_kind = failure_kind or FailureKind.device_error
        found.failure_reason = (failure_reason or "")[:_REASON_MAX] or None
        past_deadline = found.deadline <= now
        again = retry and found.attempts < found.max_attempts and not past_deadline
        if again:
            found.state, found.claimed_by = CommandState.queued, None
        elif past_deadline and (retry or found.failure_kind is FailureKind.timeout):
            found.state = CommandState.timed_out  # out of time while still worth trying
        else:
            found.state = CommandState.failed
    if found.state in FINISHED_STATES:
        found.finished_at = now
    await session.flush()
    if found.state is CommandState.queued:
        await emit_event(session, "command.changed",
                         CommandChanged((command_id,), CommandState.queued.value, (found.link,)))
        return found
    await emit_event(session, "command.finished", CommandFinished((command_id,), found.state.value),
                     key=f"batch:{found.batch_id}")
    if found.patrol_run_id is not None:
        from backend.remote.patrols import count_outcomes

        await count_outcomes(session, {found.patrol_run_id: (1, 0) if succeeded else (0, 1)}, now=now)
    return found


_FINISH_SUCCEEDED = text("""
UPDATE remote_commands c
   SET state = 'succeeded', reply = COALESCE(CAST(r.reply AS jsonb), c.reply), failure_kind = NULL,
       failure_reason = NULL, finished_at = :now, updated_at = :now
  FROM unnest(CAST(:ids AS bigint[]), CAST(:replies AS text[])) AS r(id, reply)
 WHERE c.id = r.id AND c.claimed_by = :holder AND c.state IN ('sent', 'pending_delivery') AND c.kind <> 'set_params'
   AND EXISTS (SELECT 1 FROM link_leases l WHERE l.link = c.link AND l.holder = :holder AND l.expires_at > :now)
RETURNING c.id, c.batch_id, c.patrol_run_id
""")


async def finish_succeeded_commands(session: AsyncSession, *, holder: str,
                                    replies: Mapping[int, Mapping[str, Any] | None], now: datetime) -> list[int]:
    """Record many commands as ``succeeded`` at once (``{command id: reply}``): what
    :func:`finish_command` does for each, in three statements — the update, one
    ``command.finished`` per batch, the runs' counts. Only commands ``holder`` claimed and
    still holds are finished (their ids are returned, sorted); a set_params (its reply the
    read-back the worker made) is left to :func:`finish_command`."""
    import json

    if not replies:
        return []
    ids = sorted(replies)
    rows = (await session.execute(_FINISH_SUCCEEDED, {
        "ids": ids, "replies": [None if replies[i] is None else json.dumps(dict(replies[i] or {}), ensure_ascii=False)
                                for i in ids],
        "holder": holder, "now": now})).all()
    by_batch: dict[uuid.UUID, list[int]] = defaultdict(list)
    by_run: dict[int, int] = defaultdict(int)
    for row in rows:
        by_batch[row.batch_id].append(row.id)
        if row.patrol_run_id is not None:
            by_run[row.patrol_run_id] += 1
    for batch_id, finished in sorted(by_batch.items(), key=lambda item: min(item[1])):
        await emit_event(session, "command.finished", CommandFinished(tuple(sorted(finished)),
                                                                      CommandState.succeeded.value),
                         key=f"batch:{batch_id}")
    if by_run:
        from backend.remote.patrols import count_outcomes

        await count_outcomes(session, {run_id: (read, 0) for run_id, read in by_run.items()}, now=now)
    return sorted(row.id for row in rows)


# --------------------------------------------------------------------------- sweep


@dataclass(frozen=True, slots=True)
class SweepResult:
    timed_out: list[int]
    requeued: list[int]
    failed: list[int]


_TIME_OUT = text("""
UPDATE remote_commands
   SET state = 'timed_out', failure_kind = 'timeout', failure_reason = :reason, finished_at = :now, updated_at = :now
 WHERE state IN ('queued', 'pending_delivery', 'sent') AND deadline <= :now
RETURNING id, patrol_run_id
""")

# Claimed commands whose claimant no longer holds their link (killed, or its lease taken
# over): back to the queue while attempts remain, failed as link_down otherwise.
# A pending_delivery command never went out (the device had not called): it goes back
# without the attempt its claim counted, so restarts of the broker's holder cannot use up
# an NB-IoT command's attempts while it waits a day for its uplink.
_ORPHANS = """
UPDATE remote_commands c
   SET state = CASE WHEN c.attempts < c.max_attempts OR c.state = 'pending_delivery' THEN 'queued' ELSE 'failed' END,
       attempts = CASE WHEN c.state = 'pending_delivery' THEN GREATEST(c.attempts - 1, 0) ELSE c.attempts END,
       claimed_by = CASE WHEN c.attempts < c.max_attempts OR c.state = 'pending_delivery' THEN NULL ELSE c.claimed_by END,
       failure_kind = CASE WHEN c.state = 'pending_delivery' THEN c.failure_kind ELSE 'link_down' END,
       failure_reason = CASE WHEN c.state = 'pending_delivery' THEN c.failure_reason ELSE :reason END,
       finished_at = CASE WHEN c.attempts < c.max_attempts OR c.state = 'pending_delivery' THEN NULL
                          ELSE CAST(:now AS timestamptz) END,
       updated_at = :now
 WHERE c.state IN ('pending_delivery', 'sent') AND c.deadline > :now {links}
   AND NOT EXISTS (SELECT 1 FROM link_leases l
                    WHERE l.link = c.link AND l.holder = c.claimed_by AND l.expires_at > :now)
RETURNING c.id, c.state, c.link, c.patrol_run_id, c.kind
"""


async def _requeue_orphans(session: AsyncSession, *, now: datetime, links: Sequence[str] | None) -> tuple[list[int], list[int]]:
    statement = _ORPHANS.format(links="AND c.link = ANY(CAST(:links AS text[]))" if links is not None else "")
    values: dict[str, Any] = {"now": now, "reason": "采集进程中断, 命令重新排队"}
    if links is not None:
        values["links"] = list(links)
    rows = (await session.execute(text(statement), values)).all()
    requeued = sorted(r.id for r in rows if r.state == CommandState.queued.value)
    failed = sorted(r.id for r in rows if r.state == CommandState.failed.value)
    from backend.remote.patrols import count_outcomes, mark_interrupted

    if requeued:
        await emit_event(session, "command.changed",
                         _changed([r for r in rows if r.state == CommandState.queued.value], CommandState.queued.value))
        await mark_interrupted(session, run_ids={r.patrol_run_id for r in rows if r.patrol_run_id is not None
                                                 and r.state == CommandState.queued.value}, now=now)
    if failed:
        await emit_event(session, "command.finished", CommandFinished(tuple(failed), CommandState.failed.value))
        await count_outcomes(session, _failures_by_run([r for r in rows if r.state == CommandState.failed.value]),
                             now=now)
    return requeued, failed


def _failures_by_run(rows: Sequence[Any]) -> dict[int, tuple[int, int]]:
    """{patrol run: (0 read, n failed)} of these ended commands."""
    counts: dict[int, int] = defaultdict(int)
    for row in rows:
        if row.patrol_run_id is not None:
            counts[row.patrol_run_id] += 1
    return {run_id: (0, failed) for run_id, failed in counts.items()}


async def sweep_commands(session: AsyncSession, *, now: datetime) -> SweepResult:
    """Time out every unfinished command past its deadline (``timed_out``, failure kind
    timeout), and put back in the queue the claimed ones whose worker lost its link."""
    rows = (await session.execute(_TIME_OUT, {"now": now, "reason": "超过命令时限"})).all()
    timed_out = sorted(row.id for row in rows)
    if timed_out:
        await emit_event(session, "command.finished", CommandFinished(tuple(timed_out), CommandState.timed_out.value))
        from backend.remote.patrols import count_outcomes

        await count_outcomes(session, _failures_by_run(rows), now=now)
    requeued, failed = await _requeue_orphans(session, now=now, links=None)
    return SweepResult(timed_out, requeued, failed)


# --------------------------------------------------------------------------- lists


@dataclass(frozen=True, slots=True)
class CommandFilter:
    batch_id: uuid.UUID | None = None
    states: Sequence[CommandState] | None = None
    meter_id: int | None = None
    patrol_run_id: int | None = None


_COMMAND_COLUMNS = """
c.id, c.batch_id, c.meter_id, c.concentrator_id, c.link, c.kind, c.params, c.state, c.attempts, c.max_attempts,
c.time_limit_s, c.deadline, c.issued_by_kind, c.issued_by_name, c.reply, c.failure_kind, c.failure_reason,
c.follows_id, c.patrol_run_id, c.created_at, c.sent_at, c.finished_at, c.updated_at,
m.code AS meter_code, m.name AS meter_name, m.address AS meter_address
"""


def command_page_query(*, principal: Principal, where: CommandFilter = CommandFilter()) -> PagedQuery:
    """The commands in the principal's scope, newest first, narrowed by ``where``; each
    row the command's columns and its meter's code, name and address."""
    conditions = ["c.area_path LIKE ANY(CAST(:patterns AS text[]))"]
    params: dict[str, Any] = {"patterns": principal.scope_patterns()}
    if where.batch_id is not None:
        conditions.append("c.batch_id = :batch_id")
        params["batch_id"] = where.batch_id
    if where.states:
        conditions.append("c.state = ANY(CAST(:states AS text[]))")
        params["states"] = [CommandState(s).value for s in where.states]
    if where.meter_id is not None:
        conditions.append("c.meter_id = :meter_id")
        params["meter_id"] = where.meter_id
    if where.patrol_run_id is not None:
        conditions.append("c.patrol_run_id = :patrol_run_id")
        params["patrol_run_id"] = where.patrol_run_id
    rows, count = _command_statements(tuple(conditions))
    return PagedQuery(rows=rows, count=count, params=params)


_statements: dict[tuple[str, ...], tuple[Any, Any]] = {}


def _command_statements(conditions: tuple[str, ...]) -> tuple[Any, Any]:
    # Long-lived per shape (PagedQuery compiles each once for asyncpg).
    found = _statements.get(conditions)
    if found is None:
        where = " AND ".join(conditions)
        rows = (select(text(_COMMAND_COLUMNS)).select_from(text("remote_commands c JOIN meters m ON m.id = c.meter_id"))
                .where(text(where)).order_by(text("c.id DESC"))
                .offset(bindparam("_offset")).limit(bindparam("_limit")))
        count = select(func.count()).select_from(text("remote_commands c")).where(text(where))
        found = _statements[conditions] = (rows, count)
    return found


async def command_view(session: AsyncSession, *, command_id: int, principal: Principal) -> Any:
    """One command as the list shows it, when in the principal's scope; NOT_FOUND otherwise."""
    row = (await session.execute(text(
        f"SELECT {_COMMAND_COLUMNS} FROM remote_commands c JOIN meters m ON m.id = c.meter_id "
        "WHERE c.id = :id AND c.area_path LIKE ANY(CAST(:patterns AS text[]))"),
        {"id": command_id, "patterns": principal.scope_patterns()})).first()
    if row is None:
        raise NotFound(field="id")
    return row


async def commands_in_scope(session: AsyncSession, *, command_ids: Sequence[int], principal: Principal) -> list[Any]:
    """The listed commands the principal reaches (the subscription's view of an event)."""
    rows = await session.execute(text(
        f"SELECT {_COMMAND_COLUMNS} FROM remote_commands c JOIN meters m ON m.id = c.meter_id "
        "WHERE c.id = ANY(CAST(:ids AS bigint[])) AND c.area_path LIKE ANY(CAST(:patterns AS text[])) ORDER BY c.id"),
        {"ids": list(command_ids), "patterns": principal.scope_patterns()})
    return list(rows.all())

