"""GraphQL for remote control (远程控制), real-time reading (实时数据采集) and patrol tasks
(巡测任务设定): thin over ``backend.remote.service``, ``.passwords`` and ``.patrols``.

- Commands for a selection (``RemoteSelectionInput``: 范围模式 ``areaIds`` /
  ``concentratorIds``, or 复选模式 ``meterIds``): ``readNow`` (``remote:read``),
  ``openValves`` / ``closeValves`` (``remote:control``), ``readParams`` / ``setParams`` (with
  its read-back) / ``syncClocks`` (``remote:params``). Each needs the caller's execution
  password too: a wrong one is EXECUTION_PASSWORD_WRONG on ``executionPassword`` and
  counts toward the lock (5 in a row), in a transaction that stands although the command
  is refused. ``timeLimitS`` is 命令时限 (default 30 s).
- ``setExecutionPassword`` (any staff user, with their login password);
  ``resetExecutionPassword`` / ``unlockExecutionPassword`` (``users:manage``).
- Patrol tasks: ``createPatrolTask``, ``updatePatrolTask``, ``enablePatrolTask``,
  ``disablePatrolTask``, ``deletePatrolTask`` (``patrols:manage``); ``patrolTasks`` and
  ``patrolRuns`` (``patrols:read``).
- ``remoteCommands`` (filter by batch, state, meter, patrol run), ``remoteCommand(id)``,
  ``commandCatalog``; the subscription ``remoteCommandChanged`` (command.changed and
  command.finished, the commands in the subscriber's scope).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.scalars import JSON
from strawberry.types import Info

from backend.auth import service as auth
from backend.clock import utcnow
from backend.errors import DomainError, NotFound
from backend.events.service import Event
from backend.graphql.context import Context
from backend.graphql.errors import UserError
from backend.graphql.limits import Cost
from backend.graphql.mutations import run_mutation
from backend.graphql.pagination import Connection, PageRequest, paginate, paginate_query, selects
from backend.graphql.permissions import Authenticated, Requires, RequiresAny
from backend.graphql.relay import Node, decode_id, encode_id
from backend.graphql.subscriptions import SubscriptionEvent, event_id_of, event_subscription
from backend.remote import catalog, passwords, patrols, purchases, service
from backend.remote.errors import ExecutionPasswordWrong
from backend.remote.models import (
    CommandKind,
    CommandState,
    ExecutionPassword,
    FailureKind,
    PatrolReading,
    PatrolRun,
    PatrolRunState,
    PatrolTask,
)

CommandKindEnum = strawberry.enum(CommandKind, name="CommandKind", description="DESIGN.md CommandKind")
CommandStateEnum = strawberry.enum(CommandState, name="CommandState",
                                   description="排队 / 等待上线 (NB-IoT) / 已下发 / 成功 / 失败 / 超时 / "
                                   "已取消 (a purchase whose payment went back before it was sent)")
FailureKindEnum = strawberry.enum(FailureKind, name="CommandFailureKind", description="超时 / 帧错误 / 设备错误 / 链路中断")
PatrolReadingEnum = strawberry.enum(PatrolReading, name="PatrolReading", description="当前数据 / 历史数据")
PatrolRunStateEnum = strawberry.enum(PatrolRunState, name="PatrolRunState", description="执行中 / 已完成 / 已中断")
TargetKindEnum = strawberry.enum(catalog.TargetKind, name="CommandTargetKind", description="水表 / 集中器")
ParamTypeEnum = strawberry.enum(catalog.ParamType, name="CommandParamType")

ANY_REMOTE = ("remote:read", "remote:control", "remote:params")
# A batch payload shows this many of its commands (a district's batch has thousands).
SHOWN_IN_PAYLOAD = 100
MAX_COMMANDS = max(len(specs) for specs in catalog.CATALOG.values())
MAX_PARAMS = max(len(spec.params) for specs in catalog.CATALOG.values() for spec in specs)
MAX_CHOICES = max((len(p.choices) for specs in catalog.CATALOG.values() for spec in specs for p in spec.params), default=1)
READ_COMMANDS = RequiresAny(*ANY_REMOTE)
PATROLS_READ = Requires("patrols:read")
PATROLS_MANAGE = Requires("patrols:manage")


def _json(value: Any) -> Any:
    if isinstance(value, str):
        import json

        return json.loads(value)
    return value


def _value(row: Any, name: str) -> Any:
    mapping = row._mapping if hasattr(row, "_mapping") else row
    return mapping[name]


@strawberry.type(name="RemoteCommand", description="One field command for one meter (远程命令).")
class CommandType(Node):
    batch_id: str = strawberry.field(description="The user action it belongs to (one batch over many meters).")
    meter_id: strawberry.ID
    meter_code: str
    meter_name: str
    meter_address: str
    link: str = strawberry.field(description="concentrator:<id> or mqtt (NB-IoT).")
    kind: CommandKindEnum  # type: ignore[valid-type]
    params: JSON  # type: ignore[valid-type]
    state: CommandStateEnum  # type: ignore[valid-type]
    attempts: int
    max_attempts: int
    time_limit_s: int = strawberry.field(description="命令时限 (秒).")
    deadline: datetime
    issued_by_name: str = strawberry.field(description="The staff member, or 系统.")
    reply: JSON | None = strawberry.field(description="The decoded reply.")  # type: ignore[valid-type]
    failure_kind: FailureKindEnum | None  # type: ignore[valid-type]
    failure_reason: str | None
    follows_id: strawberry.ID | None = strawberry.field(
        description="The command this one checks, if any (a set_params is read back within its own command: its "
                    "reply is the values the meter holds).")
    patrol_run_id: strawberry.ID | None
    created_at: datetime
    sent_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> CommandType:
        def get(name: str) -> Any:
            return _value(row, name)

        follows, run = get("follows_id"), get("patrol_run_id")
        failure = get("failure_kind")
        return cls(
            id=encode_id("RemoteCommand", get("id")), batch_id=str(get("batch_id")),
            meter_id=encode_id("Meter", get("meter_id")), meter_code=get("meter_code"), meter_name=get("meter_name"),
            meter_address=get("meter_address"), link=get("link"), kind=CommandKind(get("kind")),
            params=_json(get("params")), state=CommandState(get("state")), attempts=get("attempts"),
            max_attempts=get("max_attempts"), time_limit_s=get("time_limit_s"), deadline=get("deadline"),
            issued_by_name=get("issued_by_name"), reply=_json(get("reply")),
            failure_kind=FailureKind(failure) if failure else None, failure_reason=get("failure_reason"),
            follows_id=encode_id("RemoteCommand", follows) if follows else None,
            patrol_run_id=encode_id("PatrolRun", run) if run else None, created_at=get("created_at"),
            sent_at=get("sent_at"), finished_at=get("finished_at"),
        )


async def fetch_command(context: Any, pk: int) -> CommandType | None:
    principal = context.principal
    if principal is None or not any(principal.has(p) for p in ANY_REMOTE):
        return None
    async with context.read() as session:
        try:
            row = await service.command_view(session, command_id=pk, principal=principal)
        except NotFound:
            return None
    return CommandType.from_row(row)


@strawberry.type(name="CommandChoice")
class ChoiceType:
    value: str
    title: str


@strawberry.type(name="CommandParam", description="One row of the 名称 / 数据 / 单位 / 说明 form.")
class ParamType:
    name: str = strawberry.field(description="The key in params.")
    title: str = strawberry.field(description="名称")
    type: ParamTypeEnum  # type: ignore[valid-type]
    unit: str = strawberry.field(description="单位")
    description: str = strawberry.field(description="说明: the range in words (1-28).")
    minimum: Decimal | None
    maximum: Decimal | None
    choices: list[ChoiceType] = strawberry.field(extensions=[Cost(items=MAX_CHOICES)])
    required: bool


@strawberry.type(name="CatalogCommand")
class CatalogCommandType:
    code: CommandKindEnum  # type: ignore[valid-type]
    name: str = strawberry.field(description="The command's Chinese name (开阀).")
    permission: str
    needs_valve: bool
    params: list[ParamType] = strawberry.field(extensions=[Cost(items=MAX_PARAMS)])


@strawberry.type(name="CommandTarget", description="The commands of one kind of target (水表, 集中器).")
class CommandTargetType:
    target_kind: TargetKindEnum  # type: ignore[valid-type]
    title: str
    commands: list[CatalogCommandType] = strawberry.field(extensions=[Cost(items=MAX_COMMANDS)])


def _catalog() -> list[CommandTargetType]:
    return [CommandTargetType(target_kind=target, title=catalog.TARGET_TITLES[target], commands=[
        CatalogCommandType(code=spec.kind, name=spec.title, permission=spec.permission, needs_valve=spec.needs_valve,
                           params=[ParamType(name=p.name, title=p.title, type=p.type, unit=p.unit,
                                             description=p.description, minimum=p.minimum, maximum=p.maximum,
                                             choices=[ChoiceType(value=c.value, title=c.title) for c in p.choices],
                                             required=p.required) for p in spec.params])
        for spec in specs]) for target, specs in catalog.CATALOG.items()]


@strawberry.type(name="PatrolTask", description="A patrol task (巡测任务).")
class PatrolTaskType(Node):
    name: str
    schedule: str = strawberry.field(description="5-field cron in the utility's zone (0 2 * * *: 02:00 daily).")
    reading: PatrolReadingEnum  # type: ignore[valid-type]
    area_ids: list[strawberry.ID]
    concentrator_ids: list[strawberry.ID]
    meter_ids: list[strawberry.ID]
    time_limit_s: int
    enabled: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, task: PatrolTask) -> PatrolTaskType:
        return cls(id=encode_id("PatrolTask", task.id or 0), name=task.name, schedule=task.schedule, reading=task.reading,
                   area_ids=[encode_id("Area", i) for i in task.area_ids],
                   concentrator_ids=[encode_id("Concentrator", i) for i in task.concentrator_ids],
                   meter_ids=[encode_id("Meter", i) for i in task.meter_ids], time_limit_s=task.time_limit_s,
                   enabled=task.enabled, created_at=task.created_at, updated_at=task.updated_at)


@strawberry.type(name="PatrolRun", description="One firing of a patrol task (执行记录).")
class PatrolRunType(Node):
    task_id: strawberry.ID
    due_at: datetime = strawberry.field(description="The minute its schedule named.")
    state: PatrolRunStateEnum  # type: ignore[valid-type]
    meters_total: int
    meters_read: int
    meters_failed: int
    success_rate: float | None = strawberry.field(description="Meters read / meters of the run.")
    started_at: datetime
    finished_at: datetime | None
    interruptions: int = strawberry.field(description="How often its worker died under it (the run was then "
                                                      "interrupted until another worker took its commands up).")
    interrupted_at: datetime | None = strawberry.field(description="When it was last interrupted.")
    resumed_at: datetime | None = strawberry.field(description="When a worker last took it up again after an "
                                                               "interruption.")

    @classmethod
    def of(cls, run: PatrolRun) -> PatrolRunType:
        return cls(id=encode_id("PatrolRun", run.id or 0), task_id=encode_id("PatrolTask", run.task_id), due_at=run.due_at,
                   state=run.state, meters_total=run.meters_total, meters_read=run.meters_read,
                   meters_failed=run.meters_failed, success_rate=patrols.success_rate(run), started_at=run.started_at,
                   finished_at=run.finished_at, interruptions=run.interruptions, interrupted_at=run.interrupted_at,
                   resumed_at=run.resumed_at)


@strawberry.input
class RemoteCommandFilter:
    batch_id: str | None = None
    states: list[CommandStateEnum] | None = None  # type: ignore[valid-type]
    meter_id: strawberry.ID | None = None
    patrol_run_id: strawberry.ID | None = None


def _batch_uuid(value: str, field: str = "batchId") -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(field=field) from None


@strawberry.type
class Query:
    @strawberry.field(permission_classes=[READ_COMMANDS], description="Remote commands in your scope, newest first "
                      "(progress of a batch: filter by batchId).")
    async def remote_commands(self, info: Info, filter: RemoteCommandFilter | None = None, first: int | None = None,
                              after: str | None = None, last: int | None = None,
                              before: str | None = None) -> Connection[CommandType]:
        where = service.CommandFilter()
        if filter is not None:
            where = service.CommandFilter(
                batch_id=_batch_uuid(filter.batch_id, "filter.batchId") if filter.batch_id else None,
                states=filter.states, meter_id=decode_id(filter.meter_id, "Meter", field="filter.meterId")
                if filter.meter_id else None,
                patrol_run_id=decode_id(filter.patrol_run_id, "PatrolRun", field="filter.patrolRunId")
                if filter.patrol_run_id else None)
        query = service.command_page_query(principal=info.context.caller, where=where)
        return await paginate_query(info.context, query, PageRequest.from_args(first, after, last, before),
                                    CommandType.from_row, count=selects(info, "totalCount"))

    @strawberry.field(permission_classes=[READ_COMMANDS], description="One remote command in your scope.")
    async def remote_command(self, info: Info, id: strawberry.ID) -> CommandType:
        found = await fetch_command(info.context, decode_id(id, "RemoteCommand"))
        if found is None:
            raise NotFound(field="id")
        return found

    @strawberry.field(permission_classes=[READ_COMMANDS], description="命令目录: per target kind, the commands and "
                      "each parameter's 名称 / 单位 / 说明.", extensions=[Cost(items=len(catalog.CATALOG))])
    def command_catalog(self) -> list[CommandTargetType]:
        return _catalog()

    @strawberry.field(permission_classes=[PATROLS_READ], description="巡测任务 of units in your scope.")
    async def patrol_tasks(self, info: Info, first: int | None = None, after: str | None = None,
                           last: int | None = None, before: str | None = None) -> Connection[PatrolTaskType]:
        async with info.context.read() as session:
            return await paginate(session, patrols.patrol_tasks_query(principal=info.context.caller),
                                  PageRequest.from_args(first, after, last, before), lambda row: PatrolTaskType.of(row[0]))

    @strawberry.field(permission_classes=[PATROLS_READ], description="Patrol runs (执行记录), newest first.")
    async def patrol_runs(self, info: Info, task_id: strawberry.ID | None = None, first: int | None = None,
                          after: str | None = None, last: int | None = None,
                          before: str | None = None) -> Connection[PatrolRunType]:
        task = decode_id(task_id, "PatrolTask", field="taskId") if task_id else None
        async with info.context.read() as session:
            return await paginate(session, patrols.patrol_runs_query(principal=info.context.caller, task_id=task),
                                  PageRequest.from_args(first, after, last, before), lambda row: PatrolRunType.of(row[0]))


# --------------------------------------------------------------------------- command mutations


@strawberry.input(description="范围模式: areaIds and/or concentratorIds (every installed meter under them); "
                  "复选模式: meterIds (exactly these). Not both.")
class RemoteSelectionInput:
    area_ids: list[strawberry.ID] = strawberry.field(default_factory=list)
    concentrator_ids: list[strawberry.ID] = strawberry.field(default_factory=list)
    meter_ids: list[strawberry.ID] = strawberry.field(default_factory=list, description="At most 5000.")


MeterParamEnum = strawberry.enum(catalog.MeterParam, name="MeterParam",
                                 description="What 读取参数 reads: 结算日, 抄表日, 价格表, 密钥版本号, 购入金额.")


@strawberry.input(description="价格表 (CJ/T 188 A010): three prices and the steps between them, written whole.")
class MeterPriceTableInput:
    price1_fen: int = strawberry.field(description="一阶水价 (分/m³), 0-999999")
    step1_m3: int = strawberry.field(description="一阶用量上限 (m³), 1-999999")
    price2_fen: int = strawberry.field(description="二阶水价 (分/m³), 0-999999")
    step2_m3: int = strawberry.field(description="二阶用量上限 (m³), above step1M3")
    price3_fen: int = strawberry.field(description="三阶水价 (分/m³), 0-999999")
    from_day: int = strawberry.field(description="价格启用日 (day of the month), 1-28")


@strawberry.input(description="设置参数: the parameters to write (at least one); each is read back by the "
                  "same command, which fails when the meter does not hold what was written.")
class MeterParamsInput:
    settlement_day: int | None = strawberry.field(default=None, description="结算日, 1-28")
    reading_day: int | None = strawberry.field(default=None, description="抄表日, 1-28")
    price_table: MeterPriceTableInput | None = strawberry.field(default=None, description="价格表")

    def as_params(self) -> dict[str, Any]:
        """The catalog's flat parameters (``backend.remote.catalog``), those given."""
        given: dict[str, Any] = {"settlement_day": self.settlement_day, "reading_day": self.reading_day}
        if self.price_table is not None:
            table = self.price_table
            given |= {"price_1_fen": table.price1_fen, "step_1_m3": table.step1_m3, "price_2_fen": table.price2_fen,
                      "step_2_m3": table.step2_m3, "price_3_fen": table.price3_fen, "prices_from_day": table.from_day}
        return {name: value for name, value in given.items() if value is not None}


@strawberry.type(name="SkippedMeter", description="A meter of a 范围模式 selection the command does not apply to.")
class SkippedMeterType:
    meter_id: strawberry.ID
    code: str
    reason: str


@strawberry.type
class RemoteBatchPayload:
    batch_id: str | None = strawberry.field(description="Follow it with remoteCommands(filter: {batchId}) or "
                                            "remoteCommandChanged.")
    queued: int = strawberry.field(description="Commands queued (one per meter).")
    commands: list[CommandType] = strawberry.field(
        description=f"The first {SHOWN_IN_PAYLOAD} of them; the rest through remoteCommands.",
        extensions=[Cost(items=SHOWN_IN_PAYLOAD)])
    skipped: list[SkippedMeterType] = strawberry.field(
        description=f"范围模式: meters the command does not apply to (the first {SHOWN_IN_PAYLOAD}).",
        extensions=[Cost(items=SHOWN_IN_PAYLOAD)])
    errors: list[UserError]


def _selection(value: RemoteSelectionInput) -> service.Selection:
    return service.Selection(
        area_ids=tuple(decode_id(i, "Area", field="selection.areaIds") for i in value.area_ids),
        concentrator_ids=tuple(decode_id(i, "Concentrator", field="selection.concentratorIds")
                               for i in value.concentrator_ids),
        meter_ids=tuple(decode_id(i, "Meter", field="selection.meterIds") for i in value.meter_ids))


def _batch_payload(result: tuple[service.QueuedBatch, list[Any]] | None, errors: list[UserError]) -> RemoteBatchPayload:
    if result is None:
        return RemoteBatchPayload(batch_id=None, queued=0, commands=[], skipped=[], errors=errors)
    batch, rows = result
    return RemoteBatchPayload(batch_id=str(batch.batch_id), queued=len(batch.command_ids),
                              commands=[CommandType.from_row(r) for r in rows],
                              skipped=[SkippedMeterType(meter_id=encode_id("Meter", s.meter_id), code=s.code,
                                                        reason=s.reason) for s in batch.skipped[:SHOWN_IN_PAYLOAD]],
                              errors=errors)


def _count_wrong_password(info: Info) -> Callable[[AsyncSession, DomainError], Awaitable[None]]:
    context: Context = info.context

    async def count(session: AsyncSession, refusal: DomainError) -> None:
        if isinstance(refusal, ExecutionPasswordWrong):
            await passwords.record_wrong_execution_password(session, user=context.caller, now=utcnow(), ip=context.ip,
                                                            request_id=context.request_id)

    return count


async def _send(info: Info, *, action: str, title: str, kind: CommandKind, selection: RemoteSelectionInput,
                execution_password: str, time_limit_s: int | None, params: dict[str, Any] | None = None,
                ) -> RemoteBatchPayload:
    principal = info.context.caller

    async def work(session: AsyncSession) -> tuple[service.QueuedBatch, list[Any]]:
        chosen = _selection(selection)
        await passwords.verify_execution_password(session, user=principal, password=execution_password)
        batch = await service.queue_commands(session, selection=chosen, kind=kind, params=params,
                                             issued_by=principal, time_limit_s=time_limit_s, now=utcnow())
        shown = batch.command_ids[:SHOWN_IN_PAYLOAD]
        return batch, await service.commands_in_scope(session, command_ids=shown, principal=principal)

    def describe(result: tuple[service.QueuedBatch, list[Any]] | None) -> str:
        return f"{title} {len(result[0].command_ids)} 块水表 (批次 {result[0].batch_id})" if result is not None else title

    return await run_mutation(info, action=action, describe=describe, payload=_batch_payload, work=work,
                              on_refusal=_count_wrong_password(info))


ExecutionPasswordArgument = Annotated[str, strawberry.argument(description="执行密码 (not the login password).")]
TimeLimitArgument = Annotated[int | None, strawberry.argument(
    description="命令时限 (秒), 1-604800; default 30 (NB-IoT meters: 24 h).")]


@strawberry.type
class ExecutionPasswordStatus:
    user_id: strawberry.ID
    is_set: bool
    locked: bool
    failed_attempts: int
    set_at: datetime | None


@strawberry.type
class ExecutionPasswordPayload:
    status: ExecutionPasswordStatus | None
    errors: list[UserError]


def _password_payload(row: ExecutionPassword | None, errors: list[UserError]) -> ExecutionPasswordPayload:
    if row is None:
        return ExecutionPasswordPayload(status=None, errors=errors)
    return ExecutionPasswordPayload(status=ExecutionPasswordStatus(
        user_id=encode_id("StaffUser", row.staff_user_id), is_set=True, locked=row.locked_at is not None,
        failed_attempts=row.failed_attempts, set_at=row.set_at), errors=errors)


@strawberry.input
class PatrolTaskInput:
    name: str = strawberry.field(description="At most 100 characters.")
    schedule: str = strawberry.field(description="5-field cron, the utility's zone: 0 2 * * * (02:00 daily).")
    reading: PatrolReadingEnum = PatrolReading.current  # type: ignore[valid-type]
    area_ids: list[strawberry.ID] = strawberry.field(default_factory=list)
    concentrator_ids: list[strawberry.ID] = strawberry.field(default_factory=list)
    meter_ids: list[strawberry.ID] = strawberry.field(default_factory=list)
    time_limit_s: int = 30
    enabled: bool = True


def _fields(value: PatrolTaskInput) -> patrols.PatrolTaskFields:
    return patrols.PatrolTaskFields(
        name=value.name, schedule=value.schedule, reading=PatrolReading(value.reading),
        area_ids=tuple(decode_id(i, "Area", field="areaIds") for i in value.area_ids),
        concentrator_ids=tuple(decode_id(i, "Concentrator", field="concentratorIds") for i in value.concentrator_ids),
        meter_ids=tuple(decode_id(i, "Meter", field="meterIds") for i in value.meter_ids),
        time_limit_s=value.time_limit_s, enabled=value.enabled)


@strawberry.type
class PatrolTaskPayload:
    patrol_task: PatrolTaskType | None
    errors: list[UserError]


def _task_payload(task: PatrolTask | None, errors: list[UserError]) -> PatrolTaskPayload:
    return PatrolTaskPayload(patrol_task=PatrolTaskType.of(task) if task is not None else None, errors=errors)


def _task_mutation(info: Info, action: str, title: str,
                   step: Callable[[AsyncSession], Awaitable[PatrolTask]]) -> Awaitable[PatrolTaskPayload]:
    return run_mutation(info, action=action, describe=lambda task: f"{title} {task.name if task is not None else ''}",
                        payload=_task_payload, work=step)


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=[Requires("remote:read")], description="实时召测: read the selection's "
                         "meters now.")
    async def read_now(self, info: Info, selection: RemoteSelectionInput, execution_password: ExecutionPasswordArgument,
                       time_limit_s: TimeLimitArgument = None) -> RemoteBatchPayload:
        return await _send(info, action="readNow", title="实时召测", kind=CommandKind.read_now, selection=selection,
                           execution_password=execution_password, time_limit_s=time_limit_s)

    @strawberry.mutation(permission_classes=[Requires("remote:control")], description="开阀 (meters without a valve: "
                         "skipped in 范围模式, refused in 复选模式).")
    async def open_valves(self, info: Info, selection: RemoteSelectionInput, execution_password: ExecutionPasswordArgument,
                          time_limit_s: TimeLimitArgument = None) -> RemoteBatchPayload:
        return await _send(info, action="openValves", title="开阀", kind=CommandKind.valve_open, selection=selection,
                           execution_password=execution_password, time_limit_s=time_limit_s)

    @strawberry.mutation(permission_classes=[Requires("remote:control")], description="关阀 (meters without a valve: "
                         "skipped in 范围模式, refused in 复选模式).")
    async def close_valves(self, info: Info, selection: RemoteSelectionInput, execution_password: ExecutionPasswordArgument,
                           time_limit_s: TimeLimitArgument = None) -> RemoteBatchPayload:
        return await _send(info, action="closeValves", title="关阀", kind=CommandKind.valve_close, selection=selection,
                           execution_password=execution_password, time_limit_s=time_limit_s)

    @strawberry.mutation(permission_classes=[Requires("remote:params")], description="读取参数: the parameters "
                         "named (none: 结算日, 抄表日, 价格表); the command's reply holds what each meter said.")
    async def read_params(self, info: Info, selection: RemoteSelectionInput, execution_password: ExecutionPasswordArgument,
                          names: list[MeterParamEnum] | None = None,  # type: ignore[valid-type]
                          time_limit_s: TimeLimitArgument = None) -> RemoteBatchPayload:
        wanted = [catalog.MeterParam(name).value for name in names or []]
        return await _send(info, action="readParams", title="读取参数", kind=CommandKind.read_params, selection=selection,
                           execution_password=execution_password, time_limit_s=time_limit_s,
                           params={"names": wanted} if wanted else {})

    @strawberry.mutation(permission_classes=[Requires("remote:params")], description="设置参数: written and read "
                         "back by the same command (it fails when the meter holds something else); each success is "
                         "read again by a read_params following it (followsId).")
    async def set_params(self, info: Info, selection: RemoteSelectionInput, params: MeterParamsInput,
                         execution_password: ExecutionPasswordArgument,
                         time_limit_s: TimeLimitArgument = None) -> RemoteBatchPayload:
        return await _send(info, action="setParams", title="设置参数", kind=CommandKind.set_params, selection=selection,
                           execution_password=execution_password, time_limit_s=time_limit_s,
                           params=params.as_params())

    @strawberry.mutation(permission_classes=[Requires("remote:params")], description="校时: set the meters' clocks "
                         "to the station's.")
    async def sync_clocks(self, info: Info, selection: RemoteSelectionInput, execution_password: ExecutionPasswordArgument,
                          time_limit_s: TimeLimitArgument = None) -> RemoteBatchPayload:
        return await _send(info, action="syncClocks", title="校时", kind=CommandKind.sync_clock, selection=selection,
                           execution_password=execution_password, time_limit_s=time_limit_s)

    @strawberry.mutation(permission_classes=[Requires("remote:purchase")], description="核对购水次数 (meter-side "
                         "prepaid): the meter holds purchase count `purchaseCount` (0-255, as read from it): its count "
                         "becomes that, its held meter write goes out again as the next one, and its "
                         "purchase_mismatch alarm closes (docs/remote.md).")
    async def resume_meter_purchases(self, info: Info, meter_id: strawberry.ID, purchase_count: int,
                                     execution_password: ExecutionPasswordArgument) -> RemoteBatchPayload:
        principal = info.context.caller

        async def work(session: AsyncSession) -> tuple[service.QueuedBatch, list[Any]]:
            meter = decode_id(meter_id, "Meter", field="meterId")
            await passwords.verify_execution_password(session, user=principal, password=execution_password)
            now = utcnow()
            queued = await purchases.resume_meter_purchases(session, meter_id=meter, meter_count=purchase_count,
                                                            principal=principal, now=now)
            rows = await service.commands_in_scope(session, command_ids=queued, principal=principal)
            batch_id = rows[0].batch_id if rows else uuid.uuid5(uuid.NAMESPACE_URL, f"resume:{meter}:{now.isoformat()}")
            return service.QueuedBatch(batch_id, queued), rows

        def describe(result: tuple[service.QueuedBatch, list[Any]] | None) -> str:
            return f"核对购水次数 水表 {meter_id} 为 {purchase_count}"

        return await run_mutation(info, action="resumeMeterPurchases", describe=describe, payload=_batch_payload,
                                  work=work, on_refusal=_count_wrong_password(info))

    @strawberry.mutation(permission_classes=[Authenticated], description="设置执行密码 (staff): your own, proven "
                         "by your login password; 6-64 characters, not the login password. Also unlocks it.")
    async def set_execution_password(self, info: Info, login_password: str, new_password: str) -> ExecutionPasswordPayload:
        context: Context = info.context
        principal, now = context.caller, utcnow()
        # The login password is checked against the login lockout, as changeMyPassword does:
        # a stolen access token must not become a way to guess it.
        policy = context.services.get("auth_policy") or auth.AuthPolicy.from_settings(context.settings)

        async def work(session: AsyncSession) -> ExecutionPassword:
            return await passwords.set_execution_password(session, user=principal, login_password=login_password,
                                                          new_password=new_password, now=now)

        return await run_mutation(
            info, action="setExecutionPassword", describe=lambda _: f"{principal.name} 设置执行密码",
            payload=_password_payload, work=work,
            before=lambda session: auth.claim_password_check(session, actor=principal, now=now, policy=policy,
                                                             ip=context.ip, over_limit=context.services.get("over_limit")))

    @strawberry.mutation(permission_classes=[Requires("users:manage")], description="重置执行密码 of a user in "
                         "your scope (unlocked).")
    async def reset_execution_password(self, info: Info, user_id: strawberry.ID,
                                       new_password: str) -> ExecutionPasswordPayload:
        principal, target = info.context.caller, decode_id(user_id, "StaffUser", field="userId")

        async def work(session: AsyncSession) -> ExecutionPassword:
            return await passwords.reset_execution_password(session, actor=principal, staff_user_id=target,
                                                            new_password=new_password, now=utcnow())

        return await run_mutation(info, action="resetExecutionPassword", describe=lambda _: f"重置用户 {target} 的执行密码",
                                  payload=_password_payload, work=work)

    @strawberry.mutation(permission_classes=[Requires("users:manage")], description="解锁执行密码 of a user in "
                         "your scope.")
    async def unlock_execution_password(self, info: Info, user_id: strawberry.ID) -> ExecutionPasswordPayload:
        principal, target = info.context.caller, decode_id(user_id, "StaffUser", field="userId")

        async def work(session: AsyncSession) -> ExecutionPassword:
            return await passwords.unlock_execution_password(session, actor=principal, staff_user_id=target,
                                                             now=utcnow())

        return await run_mutation(info, action="unlockExecutionPassword",
                                  describe=lambda _: f"解锁用户 {target} 的执行密码", payload=_password_payload, work=work)

    @strawberry.mutation(permission_classes=[PATROLS_MANAGE], description="新建巡测任务.")
    async def create_patrol_task(self, info: Info, input: PatrolTaskInput) -> PatrolTaskPayload:
        principal = info.context.caller
        return await _task_mutation(info, "createPatrolTask", "新建巡测任务", lambda s: patrols.create_patrol_task(
            s, principal=principal, fields=_fields(input), now=utcnow()))

    @strawberry.mutation(permission_classes=[PATROLS_MANAGE], description="修改巡测任务.")
    async def update_patrol_task(self, info: Info, id: strawberry.ID, input: PatrolTaskInput) -> PatrolTaskPayload:
        principal, task = info.context.caller, decode_id(id, "PatrolTask")
        return await _task_mutation(info, "updatePatrolTask", "修改巡测任务", lambda s: patrols.update_patrol_task(
            s, principal=principal, task_id=task, fields=_fields(input), now=utcnow()))

    @strawberry.mutation(permission_classes=[PATROLS_MANAGE], description="启用巡测任务.")
    async def enable_patrol_task(self, info: Info, id: strawberry.ID) -> PatrolTaskPayload:
        principal, task = info.context.caller, decode_id(id, "PatrolTask")
        return await _task_mutation(info, "enablePatrolTask", "启用巡测任务", lambda s: patrols.set_patrol_task_enabled(
            s, principal=principal, task_id=task, enabled=True, now=utcnow()))

    @strawberry.mutation(permission_classes=[PATROLS_MANAGE], description="停用巡测任务.")
    async def disable_patrol_task(self, info: Info, id: strawberry.ID) -> PatrolTaskPayload:
        principal, task = info.context.caller, decode_id(id, "PatrolTask")
        return await _task_mutation(info, "disablePatrolTask", "停用巡测任务", lambda s: patrols.set_patrol_task_enabled(
            s, principal=principal, task_id=task, enabled=False, now=utcnow()))

    @strawberry.mutation(permission_classes=[PATROLS_MANAGE], description="删除巡测任务 and its run history.")
    async def delete_patrol_task(self, info: Info, id: strawberry.ID) -> PatrolTaskPayload:
        principal, task = info.context.caller, decode_id(id, "PatrolTask")
        return await _task_mutation(info, "deletePatrolTask", "删除巡测任务", lambda s: patrols.delete_patrol_task(
            s, principal=principal, task_id=task))


# --------------------------------------------------------------------------- subscription


@strawberry.type(description="Remote commands that changed state (progress of 召测 and 远程控制).")
class RemoteCommandEvent(SubscriptionEvent):
    state: CommandStateEnum  # type: ignore[valid-type]
    finished: bool = strawberry.field(description="command.finished (an end state) rather than command.changed.")
    count: int = strawberry.field(description="The event's commands in your scope.")
    commands: list[CommandType] = strawberry.field(
        description=f"The first {SHOWN_IN_PAYLOAD} of them (a batch's event names all its commands).",
        extensions=[Cost(items=SHOWN_IN_PAYLOAD)])


async def commands_changed(context: Context, event: Event) -> RemoteCommandEvent | None:
    principal = context.caller
    if not any(principal.has(p) for p in ANY_REMOTE):
        return None
    payload = event.payload
    ids: Sequence[int] = payload.get("command_ids", ())
    async with context.read() as session:
        rows = await service.commands_in_scope(session, command_ids=ids, principal=principal)
    if not rows:
        return None
    return RemoteCommandEvent(event_id=event_id_of(event), state=CommandState(payload["state"]),
                              finished=event.kind == "command.finished", count=len(rows),
                              commands=[CommandType.from_row(r) for r in rows[:SHOWN_IN_PAYLOAD]])


@strawberry.type
class Subscription:
    remote_command_changed = event_subscription(
        RemoteCommandEvent, kinds=("command.changed", "command.finished"), permission=None, visible=commands_changed,
        description="Progress of remote commands in your scope (remote:read, remote:control or remote:params). "
        "With afterEventId, the stored ones after it come first.",
    )


NODES = {"RemoteCommand": fetch_command}
