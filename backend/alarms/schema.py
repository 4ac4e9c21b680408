"""GraphQL for alarms of any subject (告警): the ``alarms`` list of every subject kind in
the caller's scope, and acknowledge / close for any of them. The abnormal-meter screen
(``meterAlarms``, its mutations and the alarm rules) is readings'; it uses the enums
declared here (``strawberry.lazy``).

Gated by the abnormal-meter permissions (``alarms:read``, ``alarms:manage``), which
readings' 异常水表 menu declares. The list is one joined statement per page.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.alarms import service
from backend.alarms.events import AlarmOpened
from backend.alarms.models import AlarmKind, AlarmSeverity, AlarmStatus, AlarmSubjectKind
from backend.clock import utcnow
from backend.errors import NotFound
from backend.events.service import Event, payload_of
from backend.graphql.context import Context
from backend.graphql.errors import UserError
from backend.graphql.limits import Cost
from backend.graphql.mutations import run_mutation
from backend.graphql.pagination import Connection, PageRequest, paginate_query, selects
from backend.graphql.periods import FROM_INSTANT, TO_INSTANT
from backend.graphql.permissions import Requires
from backend.graphql.relay import Node, decode_id, encode_id, split_id
from backend.graphql.subscriptions import SubscriptionEvent, event_id_of, event_subscription

AlarmKindEnum = strawberry.enum(
    AlarmKind, name="AlarmKind",
    description="水表: 无读数 / 通讯失败 / 倒流 / 零用水 / 用水突增 / 电池欠压 / 阀门异常 / 表码翻转; "
    "集中器与终端: 离线; 支付: 验签失败; 接口: 发送失败; 分区: 漏损偏高",
)
AlarmStatusEnum = strawberry.enum(AlarmStatus, name="AlarmStatus", description="未处理 / 已确认 / 已关闭")
AlarmSeverityEnum = strawberry.enum(AlarmSeverity, name="AlarmSeverity", description="提示 / 警告 / 严重")
AlarmSubjectKindEnum = strawberry.enum(
    AlarmSubjectKind, name="AlarmSubjectKind", description="水表 / 集中器 / 终端 / 支付 / 接口 / 分区")

READ = [Requires("alarms:read")]
MANAGE = [Requires("alarms:manage")]

# The GraphQL type each subject kind's id names (a global id of that type).
SUBJECT_TYPES = {
    AlarmSubjectKind.meter: "Meter", AlarmSubjectKind.concentrator: "Concentrator",
    AlarmSubjectKind.terminal: "Terminal", AlarmSubjectKind.payment: "Payment", AlarmSubjectKind.gateway: "Gateway",
    AlarmSubjectKind.zone: "Zone",
}


@strawberry.type(name="Alarm", description="An abnormal condition of a subject of any kind (告警).")
class AlarmType(Node):
    subject_kind: AlarmSubjectKindEnum  # type: ignore[valid-type]
    subject_id: strawberry.ID = strawberry.field(description="The subject's global id (Meter, Concentrator, …).")
    subject_name: str = strawberry.field(description="A meter's name; for other subjects the name their owner gave.")
    kind: AlarmKindEnum  # type: ignore[valid-type]
    status: AlarmStatusEnum  # type: ignore[valid-type]
    severity: AlarmSeverityEnum  # type: ignore[valid-type]
    value: Decimal | None = strawberry.field(description="What was measured, in the kind's unit.")
    threshold: Decimal | None = strawberry.field(description="The limit it was compared with, in the same unit.")
    detail: str
    opened_at: datetime
    last_seen_at: datetime = strawberry.field(description="When its owner last found the condition holding.")
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    acknowledge_note: str | None
    closed_at: datetime | None
    closed_by: str | None = strawberry.field(description="Who closed it; 'system' when the condition cleared.")
    close_reason: str | None
    meter_code: str | None = strawberry.field(description="表计编码 (meter alarms only).")
    area_id: strawberry.ID | None = strawberry.field(
        description="The area it lies in (a meter's area); null: the company as a whole.")
    area_name: str | None
    household_id: strawberry.ID | None = strawberry.field(description="The household a meter serves now, if any.")
    household_name: str | None
    account_no: str | None = strawberry.field(description="缴费号 of that household.")

    @classmethod
    def from_row(cls, row: Any) -> AlarmType:
        """A row of :func:`service.alarm_page_query`, :func:`service.alarm_view` or
        :func:`service.alarms_visible_to`."""
        get = (row._mapping if hasattr(row, "_mapping") else row).__getitem__  # a SQLAlchemy row or an asyncpg record
        subject_kind = AlarmSubjectKind(get("subject_kind"))
        household, area = get("household_id"), get("area_id")
        return cls(
            id=encode_id("Alarm", get("id")), subject_kind=subject_kind,
            subject_id=encode_id(SUBJECT_TYPES[subject_kind], get("subject_id")), subject_name=get("subject_name"),
            kind=AlarmKind(get("kind")), status=AlarmStatus(get("status")), severity=AlarmSeverity(get("severity")),
            value=get("value"), threshold=get("threshold"), detail=get("detail"), opened_at=get("opened_at"),
            last_seen_at=get("last_seen_at"), acknowledged_at=get("acknowledged_at"),
            acknowledged_by=get("acknowledged_by"), acknowledge_note=get("acknowledge_note"),
            closed_at=get("closed_at"), closed_by=get("closed_by"), close_reason=get("close_reason"),
            meter_code=get("meter_code"), area_id=encode_id("Area", area) if area is not None else None,
            area_name=get("area_name"), household_id=encode_id("Household", household) if household else None,
            household_name=get("household_name"), account_no=get("account_no"),
        )


@strawberry.input
class AlarmFilter:
    subject_kinds: list[AlarmSubjectKindEnum] | None = None  # type: ignore[valid-type]
    subject_id: strawberry.ID | None = strawberry.field(
        default=None, description="One subject's global id (Meter:…, Concentrator:…): its alarms only.")
    status: list[AlarmStatusEnum] | None = None  # type: ignore[valid-type]
    kinds: list[AlarmKindEnum] | None = None  # type: ignore[valid-type]
    severities: list[AlarmSeverityEnum] | None = None  # type: ignore[valid-type]
    area_id: strawberry.ID | None = strawberry.field(
        default=None, description="The area and its subtree (alarms without an area are left out).")
    opened_from: datetime | None = strawberry.field(default=None, description=f"Opened {FROM_INSTANT}.")
    opened_to: datetime | None = strawberry.field(default=None, description=f"Opened {TO_INSTANT}.")


def _subject(global_id: str) -> tuple[AlarmSubjectKind, int]:
    by_type = {type_name: kind for kind, type_name in SUBJECT_TYPES.items()}
    type_name, pk = split_id(global_id, field="subjectId")
    if type_name not in by_type:
        raise NotFound(field="subjectId")
    return by_type[type_name], pk


def _filter(where: AlarmFilter | None) -> service.AlarmFilter:
    if where is None:
        return service.AlarmFilter()
    subject_kinds = list(where.subject_kinds) if where.subject_kinds else None
    subject_id = None
    if where.subject_id:
        kind, subject_id = _subject(where.subject_id)
        # One subject: its kind narrows the list too (a kind filter that excludes it leaves nothing).
        subject_kinds = [k for k in subject_kinds if k == kind] if subject_kinds is not None else [kind]
        if not subject_kinds:
            subject_kinds, subject_id = [kind], -1
    return service.AlarmFilter(
        subject_kinds=subject_kinds, subject_id=subject_id, statuses=where.status, kinds=where.kinds,
        severities=where.severities,
        area_id=decode_id(where.area_id, "Area", field="areaId") if where.area_id else None,
        opened_from=where.opened_from, opened_to=where.opened_to,
    )


async def fetch_alarm(context: Any, pk: int) -> AlarmType | None:
    principal = context.principal
    if principal is None or not principal.has("alarms:read"):
        return None
    async with context.read() as session:
        try:
            row = await service.alarm_view(session, alarm_id=pk, scope_patterns=principal.scope_patterns())
        except NotFound:
            return None
    return AlarmType.from_row(row)


@strawberry.type
class Query:
    @strawberry.field(permission_classes=READ,
                      description="Alarms of every subject (meters, concentrators, terminals, payments, gateways, "
                      "zones) in your data scope, newest first; those without an area only for a scope over every area.")
    async def alarms(
        self, info: Info, filter: AlarmFilter | None = None, first: int | None = None, after: str | None = None,
        last: int | None = None, before: str | None = None,
    ) -> Connection[AlarmType]:
        page = PageRequest.from_args(first, after, last, before)
        query = service.alarm_page_query(scope_patterns=info.context.caller.scope_patterns(), where=_filter(filter))
        return await paginate_query(info.context, query, page, AlarmType.from_row, count=selects(info, "totalCount"))


@strawberry.type
class AlarmPayload:
    alarm: AlarmType | None
    errors: list[UserError]


def _alarm_payload(row: Any, errors: list[UserError]) -> AlarmPayload:
    return AlarmPayload(alarm=AlarmType.from_row(row) if row is not None else None, errors=errors)


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=MANAGE,
                         description="Acknowledge a live alarm of any subject (确认); it stays live.")
    async def acknowledge_alarm(self, info: Info, id: strawberry.ID, note: str | None = None) -> AlarmPayload:
        principal = info.context.caller
        alarm_id = decode_id(id, "Alarm")

        async def work(session: AsyncSession) -> Any:
            await service.acknowledge_alarm(session, alarm_id=alarm_id, by=principal.name, note=note, now=utcnow(),
                                            scope_patterns=principal.scope_patterns())
            return await service.alarm_view(session, alarm_id=alarm_id, scope_patterns=principal.scope_patterns())

        return await run_mutation(info, module="alarms", action="acknowledgeAlarm",
                                  describe=lambda _: f"确认告警 {alarm_id}", payload=_alarm_payload, work=work)

    @strawberry.mutation(permission_classes=MANAGE, description="Close a live alarm of any subject by hand (关闭).")
    async def close_alarm(self, info: Info, id: strawberry.ID, reason: str | None = None) -> AlarmPayload:
        principal = info.context.caller
        alarm_id = decode_id(id, "Alarm")

        async def work(session: AsyncSession) -> Any:
            await service.close_alarm(session, alarm_id=alarm_id, by=principal.name, reason=reason, now=utcnow(),
                                      scope_patterns=principal.scope_patterns())
            return await service.alarm_view(session, alarm_id=alarm_id, scope_patterns=principal.scope_patterns())

        return await run_mutation(info, module="alarms", action="closeAlarm",
                                  describe=lambda _: f"关闭告警 {alarm_id}", payload=_alarm_payload, work=work)


# One evaluation may open thousands of alarms (a whole district going silent); an item
# carries the first ones and the count, and the list query has the rest.
MAX_ALARMS_PER_EVENT = 500


@strawberry.type(description="Alarms one evaluation opened, as far as your scope reaches (告警推送).")
class AlarmOpenedEvent(SubscriptionEvent):
    alarm_count: int = strawberry.field(description="How many alarms it opened in your scope.")
    alarms: list[AlarmType] = strawberry.field(
        description=f"The first {MAX_ALARMS_PER_EVENT} of them in id order (list the rest with alarms).",
        extensions=[Cost(items=MAX_ALARMS_PER_EVENT)])


async def opened_alarms(context: Context, event: Event) -> AlarmOpenedEvent | None:
    """The alarms ``event`` opened that the subscriber may see; None when it sees none."""
    opened = payload_of(event, AlarmOpened)
    async with context.read() as session:
        rows = await service.alarms_visible_to(session, alarm_ids=opened.alarm_ids,
                                               scope_patterns=context.caller.scope_patterns())
    if not rows:
        return None
    return AlarmOpenedEvent(event_id=event_id_of(event), alarm_count=len(rows),
                            alarms=[AlarmType.from_row(row) for row in rows[:MAX_ALARMS_PER_EVENT]])


@strawberry.type
class Subscription:
    alarm_opened = event_subscription(
        AlarmOpenedEvent, kinds=("alarm.opened",), permission="alarms:read", visible=opened_alarms,
        description="Alarms of every subject as they open (告警), in your data scope: one item per evaluation that "
        "opened any you may see. With afterEventId, the stored ones after it come first.",
    )


# The node(id:) fetchers of this module's types (collected by the root schema).
NODES = {
    "Alarm": fetch_alarm,
}
