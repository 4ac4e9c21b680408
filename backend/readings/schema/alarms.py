"""GraphQL for abnormal meters (异常水表): the alarm list with acknowledge / close, and the
alarm rules (thresholds per area and meter model).

The list is one joined statement per page (meter, area and current household come in
the same row), so its statement count does not grow with the page size.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.alarms.models import AlarmKind, AlarmSeverity, AlarmStatus, AlarmSubjectKind
from backend.clock import utcnow
from backend.errors import NotFound
from backend.graphql.errors import UserError
from backend.graphql.mutations import run_mutation
from backend.graphql.pagination import Connection, PageRequest, paginate, paginate_query, selects
from backend.graphql.periods import FROM_INSTANT, TO_INSTANT
from backend.graphql.permissions import Requires
from backend.graphql.relay import Node, decode_id, encode_id
from backend.readings.alarms import service
from backend.readings.alarms.models import AlarmRule

# The alarms domain's enums (one GraphQL enum each, shared by every subject kind), named
# by module path: a schema imports no other domain's schema.
AlarmKindRef = Annotated["AlarmKindEnum", strawberry.lazy("backend.alarms.schema")]  # type: ignore[name-defined]  # noqa: F821
AlarmStatusRef = Annotated["AlarmStatusEnum", strawberry.lazy("backend.alarms.schema")]  # type: ignore[name-defined]  # noqa: F821
AlarmSeverityRef = Annotated["AlarmSeverityEnum", strawberry.lazy("backend.alarms.schema")]  # type: ignore[name-defined]  # noqa: F821

READ = [Requires("alarms:read")]
MANAGE = [Requires("alarms:manage")]


@strawberry.type(name="MeterAlarm", description="An abnormal condition of a meter (异常水表告警).")
class MeterAlarmType(Node):
    kind: AlarmKindRef  # type: ignore[valid-type]
    status: AlarmStatusRef  # type: ignore[valid-type]
    severity: AlarmSeverityRef  # type: ignore[valid-type]
    value: Decimal | None = strawberry.field(description="What was measured, in the kind's unit (hours, count, m³, V…).")
    threshold: Decimal | None = strawberry.field(description="The limit it was compared with, in the same unit.")
    detail: str
    opened_at: datetime
    last_seen_at: datetime = strawberry.field(description="When evaluation last found the condition holding.")
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    acknowledge_note: str | None
    closed_at: datetime | None
    closed_by: str | None = strawberry.field(description="Who closed it; 'system' when the condition cleared.")
    close_reason: str | None
    meter_id: strawberry.ID
    meter_code: str = strawberry.field(description="表计编码")
    meter_name: str = strawberry.field(description="表计名称")
    area_id: strawberry.ID
    area_name: str
    household_id: strawberry.ID | None = strawberry.field(description="The household the meter serves now, if any.")
    household_name: str | None
    household_address: str | None
    account_no: str | None = strawberry.field(description="缴费号 of that household.")

    @classmethod
    def from_row(cls, row: Any) -> MeterAlarmType:
        """A row of :func:`service.alarm_page_query` or :func:`service.alarm_view`."""
        get = (row._mapping if hasattr(row, "_mapping") else row).__getitem__  # a SQLAlchemy row or an asyncpg record
        household = get("household_id")
        return cls(
            id=encode_id("MeterAlarm", get("id")), kind=AlarmKind(get("kind")), status=AlarmStatus(get("status")),
            severity=AlarmSeverity(get("severity")), value=get("value"), threshold=get("threshold"),
            detail=get("detail"), opened_at=get("opened_at"), last_seen_at=get("last_seen_at"),
            acknowledged_at=get("acknowledged_at"), acknowledged_by=get("acknowledged_by"),
            acknowledge_note=get("acknowledge_note"), closed_at=get("closed_at"), closed_by=get("closed_by"),
            close_reason=get("close_reason"), meter_id=encode_id("Meter", get("meter_id")),
            meter_code=get("meter_code"), meter_name=get("meter_name"), area_id=encode_id("Area", get("area_id")),
            area_name=get("area_name"), household_id=encode_id("Household", household) if household else None,
            household_name=get("household_name"), household_address=get("household_address"),
            account_no=get("account_no"),
        )


@strawberry.type(name="AlarmRule", description="A threshold of one alarm kind for everyone, an area subtree, "
                 "a meter model, or a model within an area (the most specific rule applies; a disabled one turns its "
                 "kind off there).")
class AlarmRuleType(Node):
    kind: AlarmKindRef  # type: ignore[valid-type]
    area_id: strawberry.ID | None
    area_name: str | None
    meter_model_id: strawberry.ID | None
    enabled: bool
    threshold: Decimal = strawberry.field(
        description="silent: hours; communication_failure: failed reads; zero_use: days; reverse_flow and rollover: "
        "days looked back; high_use: times the average daily usage; battery_low: volts; valve_abnormal: unused.")
    severity: AlarmSeverityRef  # type: ignore[valid-type]
    updated_at: datetime
    updated_by: str

    @classmethod
    def from_rule(cls, rule: AlarmRule, area_name: str | None) -> AlarmRuleType:
        assert rule.id is not None and rule.updated_at is not None
        return cls(
            id=encode_id("AlarmRule", rule.id), kind=AlarmKind(rule.kind),
            area_id=encode_id("Area", rule.area_id) if rule.area_id is not None else None, area_name=area_name,
            meter_model_id=encode_id("MeterModel", rule.meter_model_id) if rule.meter_model_id is not None else None,
            enabled=rule.enabled, threshold=rule.threshold, severity=AlarmSeverity(rule.severity),
            updated_at=rule.updated_at, updated_by=rule.updated_by,
        )


@strawberry.input
class MeterAlarmFilter:
    status: list[AlarmStatusRef] | None = None  # type: ignore[valid-type]
    kinds: list[AlarmKindRef] | None = None  # type: ignore[valid-type]
    area_id: strawberry.ID | None = strawberry.field(default=None, description="The area and its subtree.")
    meter_id: strawberry.ID | None = None
    household_id: strawberry.ID | None = None
    opened_from: datetime | None = strawberry.field(default=None, description=f"Opened {FROM_INSTANT}.")
    opened_to: datetime | None = strawberry.field(default=None, description=f"Opened {TO_INSTANT}.")


def _filter(where: MeterAlarmFilter | None) -> service.AlarmFilter:
    if where is None:
        return service.AlarmFilter()
    return service.AlarmFilter(
        statuses=where.status, kinds=where.kinds,
        area_id=decode_id(where.area_id, "Area", field="areaId") if where.area_id else None,
        meter_id=decode_id(where.meter_id, "Meter", field="meterId") if where.meter_id else None,
        household_id=decode_id(where.household_id, "Household", field="householdId") if where.household_id else None,
        opened_from=where.opened_from, opened_to=where.opened_to,
    )


async def fetch_alarm(context: Any, pk: int) -> MeterAlarmType | None:
    principal = context.principal
    if principal is None or not principal.has("alarms:read"):
        return None
    async with context.read() as session:
        try:
            row = await service.alarm_view(session, alarm_id=pk, scope_patterns=principal.scope_patterns())
        except NotFound:
            return None
    return MeterAlarmType.from_row(row)




@strawberry.type
class Query:
    @strawberry.field(permission_classes=READ, description="Abnormal meters (异常水表) in your data scope, newest first.")
    async def meter_alarms(
        self, info: Info, filter: MeterAlarmFilter | None = None, first: int | None = None, after: str | None = None,
        last: int | None = None, before: str | None = None,
    ) -> Connection[MeterAlarmType]:
        page = PageRequest.from_args(first, after, last, before)
        query = service.alarm_page_query(scope_patterns=info.context.caller.scope_patterns(), where=_filter(filter))
        return await paginate_query(info.context, query, page, MeterAlarmType.from_row, count=selects(info, "totalCount"))

    @strawberry.field(permission_classes=READ,
                      description="Alarm rules visible in your scope: global and per-model ones, and your areas'.")
    async def alarm_rules(
        self, info: Info, kind: AlarmKindRef | None = None,  # type: ignore[valid-type]
        first: int | None = None, after: str | None = None, last: int | None = None, before: str | None = None,
    ) -> Connection[AlarmRuleType]:
        page = PageRequest.from_args(first, after, last, before)
        statement = service.alarm_rules_statement(scope_patterns=info.context.caller.scope_patterns(), kind=kind)
        async with info.context.read() as session:
            return await paginate(session, statement, page, lambda row: AlarmRuleType.from_rule(row[0], row[1]),
                                  count=selects(info, "totalCount"))


@strawberry.type
class MeterAlarmPayload:
    alarm: MeterAlarmType | None
    errors: list[UserError]


@strawberry.type
class AlarmRulePayload:
    rule: AlarmRuleType | None
    errors: list[UserError]


@strawberry.type
class DeleteAlarmRulePayload:
    deleted_id: strawberry.ID | None
    errors: list[UserError]


@strawberry.input
class AlarmRuleInput:
    kind: AlarmKindRef  # type: ignore[valid-type]
    threshold: Decimal
    area_id: strawberry.ID | None = strawberry.field(default=None, description="Null: every area.")
    meter_model_id: strawberry.ID | None = strawberry.field(default=None, description="Null: every model.")
    enabled: bool = True
    severity: AlarmSeverityRef = AlarmSeverity.warning  # type: ignore[valid-type]


def _alarm_payload(row: Any, errors: list[UserError]) -> MeterAlarmPayload:
    return MeterAlarmPayload(alarm=MeterAlarmType.from_row(row) if row is not None else None, errors=errors)


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=MANAGE, description="Acknowledge a live alarm (确认); it stays live.")
    async def acknowledge_meter_alarm(self, info: Info, id: strawberry.ID, note: str | None = None) -> MeterAlarmPayload:
        principal = info.context.caller
        alarm_id = decode_id(id, "MeterAlarm")

        async def work(session: AsyncSession) -> Any:
            await service.acknowledge_alarm(session, alarm_id=alarm_id, by=principal.name, note=note, now=utcnow(),
                                            scope_patterns=principal.scope_patterns(),
                                            subject_kind=AlarmSubjectKind.meter)
            return await service.alarm_view(session, alarm_id=alarm_id, scope_patterns=principal.scope_patterns())

        return await run_mutation(info, module="alarms", action="acknowledgeMeterAlarm",
                                  describe=lambda _: f"确认告警 {alarm_id}", payload=_alarm_payload, work=work)

    @strawberry.mutation(permission_classes=MANAGE, description="Close a live alarm by hand (关闭).")
    async def close_meter_alarm(self, info: Info, id: strawberry.ID, reason: str | None = None) -> MeterAlarmPayload:
        principal = info.context.caller
        alarm_id = decode_id(id, "MeterAlarm")

        async def work(session: AsyncSession) -> Any:
            await service.close_alarm(session, alarm_id=alarm_id, by=principal.name, reason=reason, now=utcnow(),
                                      scope_patterns=principal.scope_patterns(), subject_kind=AlarmSubjectKind.meter)
            return await service.alarm_view(session, alarm_id=alarm_id, scope_patterns=principal.scope_patterns())

        return await run_mutation(info, module="alarms", action="closeMeterAlarm",
                                  describe=lambda _: f"关闭告警 {alarm_id}", payload=_alarm_payload, work=work)

    @strawberry.mutation(permission_classes=MANAGE,
                         description="Create or replace the rule of a kind for an area and/or meter model (或全局).")
    async def set_alarm_rule(self, info: Info, input: AlarmRuleInput) -> AlarmRulePayload:
        principal = info.context.caller
        area_id = decode_id(input.area_id, "Area", field="areaId") if input.area_id else None
        model_id = decode_id(input.meter_model_id, "MeterModel", field="meterModelId") if input.meter_model_id else None

        async def work(session: AsyncSession) -> AlarmRuleType:
            rule = await service.set_alarm_rule(
                session, kind=AlarmKind(input.kind), area_id=area_id, meter_model_id=model_id, enabled=input.enabled,
                threshold=input.threshold, severity=AlarmSeverity(input.severity), by=principal.name, now=utcnow(),
                scope_patterns=principal.scope_patterns(),
            )
            assert rule.id is not None
            return AlarmRuleType.from_rule(*await service.alarm_rule_view(session, rule_id=rule.id))

        return await run_mutation(
            info, module="alarms", action="setAlarmRule", describe=lambda _: f"设置告警规则 {AlarmKind(input.kind).value}",
            payload=lambda rule, errors: AlarmRulePayload(rule=rule, errors=errors), work=work,
        )

    @strawberry.mutation(permission_classes=MANAGE,
                         description="Delete an area or model rule; global defaults can only be disabled.")
    async def delete_alarm_rule(self, info: Info, id: strawberry.ID) -> DeleteAlarmRulePayload:
        principal = info.context.caller
        rule_id = decode_id(id, "AlarmRule")

        async def work(session: AsyncSession) -> int:
            await service.delete_alarm_rule(session, rule_id=rule_id, scope_patterns=principal.scope_patterns())
            return rule_id

        return await run_mutation(
            info, module="alarms", action="deleteAlarmRule", describe=lambda _: f"删除告警规则 {rule_id}",
            payload=lambda pk, errors: DeleteAlarmRulePayload(
                deleted_id=encode_id("AlarmRule", pk) if pk is not None else None, errors=errors),
            work=work,
        )

# The node(id:) fetchers of this module's types (collected by the root schema).
NODES = {
    "MeterAlarm": fetch_alarm,
}
