"""GraphQL for work orders (报修工单): the resident's ``myWorkOrders`` and requests, the
staff's ``workOrderPool`` / ``myAssignedWorkOrders`` / ``workOrders`` /
``workOrderStatistics``, every transition as a mutation, and the subscriptions
``workOrderPoolChanged``, ``myWorkOrderChanged`` (staff) and
``residentWorkOrderChanged``.

Photos are uploaded first through ``POST /files/photos`` (docs/files.md) and referenced
by their ``photoId`` (``photoIds`` of createWorkOrder / resolveWorkOrder); they come
back as reusable signed links of the file store (``url``, ``thumbnailUrl``).
Permissions: ``workorders:read`` (lists, detail, statistics), ``workorders:handle`` (take,
travel, work, resolve, cancel, close, create for a household in scope),
``workorders:dispatch`` (dispatch); residents ``resident:self``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.auth.principal import Principal
from backend.clock import utcnow
from backend.domain import settings_group_key
from backend.errors import DomainError, NotFound
from backend.events.service import Event, payload_of
from backend.graphql.context import Context
from backend.graphql.errors import UserError
from backend.graphql.loaders import SessionLoader
from backend.graphql.mutations import run_mutation
from backend.graphql.pagination import Connection, PageRequest, paginate_query, selects
from backend.graphql.permissions import Requires, RequiresAny
from backend.graphql.relay import Node, decode_id, encode_id
from backend.graphql.subscriptions import SubscriptionEvent, event_id_of, event_subscription
from backend.workorders import service
from backend.workorders.events import WorkOrderChanged
from backend.workorders.models import (
    ActorKind,
    PhotoStage,
    WorkOrderCategory,
    WorkOrderPhoto,
    WorkOrderSource,
    WorkOrderState,
    WorkOrderTransition,
)
from backend.workorders.photos import StoredPhoto, keep_order_photos, store_order_photos
from backend.workorders.sla import DEFAULT_SLA, SlaPolicy

CategoryEnum = strawberry.enum(WorkOrderCategory, name="WorkOrderCategory",
                               description="漏水 / 水表故障 / 停水 / 水质问题 / 账单疑问 / 其他")
StateEnum = strawberry.enum(WorkOrderState, name="WorkOrderState",
                            description="待受理 / 已派单 / 出发中 / 处理中 / 已处理 / 已评价 / 已关闭 / 已取消")
SourceEnum = strawberry.enum(WorkOrderSource, name="WorkOrderSource", description="住户 / 工作人员 / 系统")
ActorKindEnum = strawberry.enum(ActorKind, name="WorkOrderActorKind")
PhotoStageEnum = strawberry.enum(PhotoStage, name="WorkOrderPhotoStage", description="报修时 / 处理结果")

READ = RequiresAny("workorders:read", "resident:self")
STAFF_READ = Requires("workorders:read")
HANDLE = Requires("workorders:handle")
DISPATCH = Requires("workorders:dispatch")
RESIDENT = Requires("resident:self")
PHOTO_LINK_TTL_S = 3600


@strawberry.type(name="WorkOrderMaterial")
class MaterialType:
    name: str
    quantity: Decimal
    unit: str


@strawberry.input(name="WorkOrderMaterialInput")
class MaterialInput:
    name: str
    quantity: Decimal
    unit: str = strawberry.field(description="个 / 米 / 只 …")


@strawberry.type(name="WorkOrderTransition", description="One change of a work order's state (流转记录).")
class TransitionType:
    from_state: StateEnum | None  # type: ignore[valid-type]
    to_state: StateEnum  # type: ignore[valid-type]
    actor_kind: ActorKindEnum  # type: ignore[valid-type]
    actor_name: str = strawberry.field(description="The staff member's name; 住户 or 系统.")
    note: str | None
    at: datetime


@strawberry.type(name="WorkOrderPhoto")
class PhotoType:
    stage: PhotoStageEnum  # type: ignore[valid-type]
    url: str = strawberry.field(description="A signed link, reusable for an hour (docs/files.md).")
    thumbnail_url: str
    created_at: datetime


class TransitionsLoader(SessionLoader[int, list[WorkOrderTransition]]):
    missing: list[WorkOrderTransition] = []

    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, list[WorkOrderTransition]]:
        return await service.transitions_of(session, order_ids=keys)


class PhotosLoader(SessionLoader[int, list[WorkOrderPhoto]]):
    missing: list[WorkOrderPhoto] = []

    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, list[WorkOrderPhoto]]:
        return await service.photos_of(session, order_ids=keys)


@strawberry.type(name="WorkOrder", description="A repair request (报修工单).")
class WorkOrderType(Node):
    number: str = strawberry.field(description="工单号, GD<yyyymmdd>-<nnnnnn>.")
    category: CategoryEnum  # type: ignore[valid-type]
    state: StateEnum  # type: ignore[valid-type]
    source: SourceEnum  # type: ignore[valid-type]
    description: str
    contact_name: str
    contact_phone: str
    appointment_at: datetime | None
    household_id: strawberry.ID
    household_name: str
    account_no: str
    assignee_id: strawberry.ID | None
    assignee_name: str | None
    response_due_at: datetime = strawberry.field(description="SLA: to be assigned by then.")
    resolve_due_at: datetime = strawberry.field(description="SLA: to be resolved by then.")
    overdue: bool = strawberry.field(description="Still open past one of its SLA deadlines (now).")
    result: str | None
    materials: list[MaterialType]
    rating: int | None
    rating_comment: str | None
    created_at: datetime
    assigned_at: datetime | None
    started_at: datetime | None
    resolved_at: datetime | None
    confirmed_at: datetime | None
    closed_at: datetime | None
    cancelled_at: datetime | None
    pk: strawberry.Private[int]

    @classmethod
    def from_row(cls, row: Any) -> WorkOrderType:
        get = (row._mapping if hasattr(row, "_mapping") else row).__getitem__
        assignee = get("assignee_id")
        return cls(
            id=encode_id("WorkOrder", get("id")), pk=get("id"), number=get("number"),
            category=WorkOrderCategory(get("category")), state=WorkOrderState(get("state")),
            source=WorkOrderSource(get("source")), description=get("description"), contact_name=get("contact_name"),
            contact_phone=get("contact_phone"), appointment_at=get("appointment_at"),
            household_id=encode_id("Household", get("household_id")), household_name=get("household_name"),
            account_no=get("account_no"), assignee_id=encode_id("StaffUser", assignee) if assignee else None,
            assignee_name=get("assignee_name"), response_due_at=get("response_due_at"),
            resolve_due_at=get("resolve_due_at"), overdue=bool(get("overdue")), result=get("result"),
            materials=[MaterialType(name=m["name"], quantity=Decimal(m["quantity"]), unit=m["unit"])
                       for m in (_json(get("materials")) or [])],
            rating=get("rating"), rating_comment=get("rating_comment"), created_at=get("created_at"),
            assigned_at=get("assigned_at"), started_at=get("started_at"), resolved_at=get("resolved_at"),
            confirmed_at=get("confirmed_at"), closed_at=get("closed_at"), cancelled_at=get("cancelled_at"),
        )

    @strawberry.field(description="Every change of state, oldest first.")
    async def transitions(self, info: Info) -> list[TransitionType]:
        rows = await info.context.loader(TransitionsLoader).load(self.pk)
        return [TransitionType(from_state=r.from_state, to_state=r.to_state, actor_kind=r.actor_kind,
                               actor_name=r.actor_name, note=r.note, at=r.at) for r in rows]

    @strawberry.field(description="The report's and the result's photos, oldest first.")
    async def photos(self, info: Info) -> list[PhotoType]:
        context = info.context
        files = context.services["files"]
        principal, now = context.caller, utcnow()
        rows = await context.loader(PhotosLoader).load(self.pk)

        def link(key: str) -> str:
            return str(files.download_url(key=key, principal=principal, now=now, reusable=True, ttl_s=PHOTO_LINK_TTL_S))

        return [PhotoType(stage=r.stage, url=link(r.file_key), thumbnail_url=link(r.thumbnail_key),
                          created_at=r.created_at) for r in rows]


def _json(value: Any) -> Any:
    if isinstance(value, str):
        import json

        return json.loads(value)
    return value


@strawberry.input
class WorkOrderFilter:
    states: list[StateEnum] | None = None  # type: ignore[valid-type]
    categories: list[CategoryEnum] | None = None  # type: ignore[valid-type]
    area_id: strawberry.ID | None = strawberry.field(default=None, description="The area and its subtree.")
    overdue: bool | None = None
    created_from: datetime | None = strawberry.field(default=None, description="Created at or after.")
    created_to: datetime | None = strawberry.field(default=None, description="Created before.")


async def _filter(context: Context, where: WorkOrderFilter | None) -> service.WorkOrderFilter:
    if where is None:
        return service.WorkOrderFilter()
    area_path = None
    if where.area_id:
        from backend.auth.scope import require_area_paths

        area_pk = decode_id(where.area_id, "Area", field="areaId")
        async with context.read() as session:
            try:
                area_path = (await require_area_paths(session, [area_pk], field="areaId"))[area_pk]
            except DomainError:
                raise NotFound(field="areaId") from None
    return service.WorkOrderFilter(states=where.states, categories=where.categories, area_path=area_path,
                                   overdue=where.overdue, created_from=where.created_from, created_to=where.created_to)


async def _page(info: Info, where: service.WorkOrderFilter, first: int | None, after: str | None, last: int | None,
                before: str | None) -> Connection[WorkOrderType]:
    page = PageRequest.from_args(first, after, last, before)
    query = service.work_order_page_query(principal=info.context.caller, where=where, now=utcnow())
    return await paginate_query(info.context, query, page, WorkOrderType.from_row, count=selects(info, "totalCount"))


async def fetch_work_order(context: Any, pk: int) -> WorkOrderType | None:
    principal = context.principal
    if principal is None or not (principal.has("workorders:read") or principal.has("resident:self")):
        return None
    async with context.read() as session:
        try:
            row = await service.work_order_view(session, order_id=pk, principal=principal, now=utcnow())
        except NotFound:
            return None
    return WorkOrderType.from_row(row)


@strawberry.type(name="WorkOrderBucket")
class BucketType:
    key: str = strawberry.field(description="The state, category, area id or staff user id ('' : unassigned).")
    label: str
    count: int
    resolved: int
    overdue: int
    average_resolution_minutes: float | None


@strawberry.type(name="WorkOrderStatistics")
class StatisticsType:
    total: int
    overdue: int
    average_resolution_minutes: float | None = strawberry.field(description="Created → resolved, of those resolved.")
    average_rating: float | None
    by_state: list[BucketType]
    by_category: list[BucketType]
    by_area: list[BucketType] = strawberry.field(description="By district (the level under the company).")
    by_assignee: list[BucketType]


def _minutes(seconds: float | None) -> float | None:
    return round(seconds / 60, 1) if seconds is not None else None


def _buckets(buckets: list[service.Bucket]) -> list[BucketType]:
    return [BucketType(key=b.key, label=b.label, count=b.count, resolved=b.resolved, overdue=b.overdue,
                       average_resolution_minutes=_minutes(b.average_resolution_s)) for b in buckets]


@strawberry.type
class Query:
    @strawberry.field(permission_classes=[RESIDENT], description="Your households' work orders, newest first.")
    async def my_work_orders(self, info: Info, first: int | None = None, after: str | None = None,
                             last: int | None = None, before: str | None = None) -> Connection[WorkOrderType]:
        return await _page(info, service.WorkOrderFilter(), first, after, last, before)

    @strawberry.field(permission_classes=[HANDLE], description="接单池: unassigned submitted orders in your scope.")
    async def work_order_pool(self, info: Info, first: int | None = None, after: str | None = None,
                              last: int | None = None, before: str | None = None) -> Connection[WorkOrderType]:
        where = service.WorkOrderFilter(states=[WorkOrderState.submitted], unassigned=True)
        return await _page(info, where, first, after, last, before)

    @strawberry.field(permission_classes=[HANDLE], description="Orders you hold that are still open or awaiting "
                      "confirmation (assigned … resolved).")
    async def my_assigned_work_orders(self, info: Info, first: int | None = None, after: str | None = None,
                                      last: int | None = None, before: str | None = None) -> Connection[WorkOrderType]:
        where = service.WorkOrderFilter(
            states=[WorkOrderState.assigned, WorkOrderState.on_the_way, WorkOrderState.in_progress,
                    WorkOrderState.resolved], assignee_id=info.context.caller.id)
        return await _page(info, where, first, after, last, before)

    @strawberry.field(permission_classes=[STAFF_READ], description="Every work order in your scope, newest first.")
    async def work_orders(self, info: Info, filter: WorkOrderFilter | None = None, first: int | None = None,
                          after: str | None = None, last: int | None = None,
                          before: str | None = None) -> Connection[WorkOrderType]:
        return await _page(info, await _filter(info.context, filter), first, after, last, before)

    @strawberry.field(permission_classes=[READ], description="One work order you reach (with transitions and photos).")
    async def work_order(self, info: Info, id: strawberry.ID) -> WorkOrderType:
        found = await fetch_work_order(info.context, decode_id(id, "WorkOrder"))
        if found is None:
            raise NotFound(field="id")
        return found

    @strawberry.field(permission_classes=[STAFF_READ], description="Orders created in [start, end) in your scope: "
                      "counts by state, category, district and staff member, overdue, average resolution time.")
    async def work_order_statistics(self, info: Info, start: datetime, end: datetime) -> StatisticsType:
        async with info.context.read() as session:
            stats = await service.work_order_statistics(session, principal=info.context.caller, start=start, end=end,
                                                        now=utcnow())
        return StatisticsType(total=stats.total, overdue=stats.overdue,
                              average_resolution_minutes=_minutes(stats.average_resolution_s),
                              average_rating=stats.average_rating, by_state=_buckets(stats.by_state),
                              by_category=_buckets(stats.by_category), by_area=_buckets(stats.by_area),
                              by_assignee=_buckets(stats.by_assignee))


@strawberry.type
class WorkOrderPayload:
    work_order: WorkOrderType | None
    errors: list[UserError]


def _payload(row: Any, errors: list[UserError]) -> WorkOrderPayload:
    return WorkOrderPayload(work_order=WorkOrderType.from_row(row) if row is not None else None, errors=errors)


@strawberry.input
class CreateWorkOrderInput:
    household_id: strawberry.ID
    category: CategoryEnum  # type: ignore[valid-type]
    description: str = strawberry.field(description="At most 2000 characters.")
    contact_name: str | None = strawberry.field(default=None, description="Default: the household's name.")
    contact_phone: str | None = strawberry.field(default=None, description="Default: the household's phone.")
    appointment_at: datetime | None = None
    photo_ids: list[strawberry.ID] = strawberry.field(
        default_factory=list, description="photoIds from POST /files/photos you uploaded: JPEG, PNG or HEIC, at most 9.")


def _sla(info: Info) -> SlaPolicy:
    """The SLA of this deployment (the settings group ``settings.workorders``), else the defaults."""
    group = info.context.services.get(settings_group_key("workorders"))
    return group.policy() if group is not None else DEFAULT_SLA


def _tz(info: Info) -> ZoneInfo:
    return ZoneInfo(info.context.settings.timezone)


async def _photos(info: Info, session: AsyncSession, photo_ids: Sequence[Any], principal: Principal) -> list[StoredPhoto]:
    if not photo_ids:
        return []
    context = info.context
    return await store_order_photos(session, context.services["files"], context.sessions,
                                    photo_ids=[str(p) for p in photo_ids], owner=principal, now=utcnow(),
                                    max_bytes=context.settings.files_max_photo_bytes,
                                    claim=timedelta(hours=context.settings.files_photo_claim_hours))


async def _view(session: AsyncSession, order_id: int, principal: Principal) -> Any:
    return await service.work_order_view(session, order_id=order_id, principal=principal, now=utcnow())


def _simple(info: Info, action: str, title: str, id: strawberry.ID, step: Any) -> Awaitable[WorkOrderPayload]:
    principal = info.context.caller
    order_id = decode_id(id, "WorkOrder")

    async def work(session: AsyncSession) -> Any:
        await step(session, principal, order_id)
        return await _view(session, order_id, principal)

    return run_mutation(info, module="workorders", action=action, describe=lambda row: f"{title} {order_id}",
                        payload=_payload, work=work)


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=[RequiresAny("workorders:handle", "resident:self")],
                         description="报修: a resident for their household, staff for any household in scope.")
    async def create_work_order(self, info: Info, input: CreateWorkOrderInput) -> WorkOrderPayload:
        principal = info.context.caller
        household_id = decode_id(input.household_id, "Household", field="householdId")

        async def work(session: AsyncSession) -> Any:
            await service.household_in_reach(session, household_id, principal)  # before any photo is processed
            photos = await _photos(info, session, input.photo_ids, principal)
            order = await service.create_work_order(
                session, principal=principal, household_id=household_id, category=input.category,
                description=input.description, contact_name=input.contact_name, contact_phone=input.contact_phone,
                appointment_at=input.appointment_at, photos=photos, now=utcnow(), tz=_tz(info), sla=_sla(info))
            await keep_order_photos(session, info.context.services["files"], photos, now=utcnow())
            return await _view(session, order.id or 0, principal)

        return await run_mutation(info, module="workorders", action="createWorkOrder",
                                  describe=lambda row: f"报修 {row.number if row is not None else ''}",
                                  payload=_payload, work=work)

    @strawberry.mutation(permission_classes=[HANDLE], description="由告警生成工单: an order for the household an "
                         "alarmed meter serves (source system), category from the alarm's kind.")
    async def create_work_order_from_alarm(self, info: Info, alarm_id: strawberry.ID,
                                           description: str | None = None) -> WorkOrderPayload:
        principal = info.context.caller
        alarm = decode_id(alarm_id, "Alarm", field="alarmId")

        async def work(session: AsyncSession) -> Any:
            order = await service.create_from_alarm(session, principal=principal, alarm_id=alarm,
                                                    description=description, now=utcnow(), tz=_tz(info), sla=_sla(info))
            return await _view(session, order.id or 0, principal)

        return await run_mutation(info, module="workorders", action="createWorkOrderFromAlarm",
                                  describe=lambda row: f"由告警 {alarm} 生成工单 {row.number if row is not None else ''}",
                                  payload=_payload, work=work)

    @strawberry.mutation(permission_classes=[DISPATCH], description="派单: assign an order to a staff member.")
    async def dispatch_work_order(self, info: Info, id: strawberry.ID, assignee_id: strawberry.ID,
                                  note: str | None = None) -> WorkOrderPayload:
        assignee = decode_id(assignee_id, "StaffUser", field="assigneeId")
        return await _simple(info, "dispatchWorkOrder", "派单", id, lambda s, p, o: service.dispatch_work_order(
            s, principal=p, order_id=o, assignee_id=assignee, note=note, now=utcnow()))

    @strawberry.mutation(permission_classes=[HANDLE], description="接单: take an order from the pool.")
    async def take_work_order(self, info: Info, id: strawberry.ID) -> WorkOrderPayload:
        return await _simple(info, "takeWorkOrder", "接单", id,
                             lambda s, p, o: service.take_work_order(s, principal=p, order_id=o, now=utcnow()))

    @strawberry.mutation(permission_classes=[HANDLE], description="出发: on the way to the site.")
    async def start_travel(self, info: Info, id: strawberry.ID) -> WorkOrderPayload:
        return await _simple(info, "startTravel", "出发", id,
                             lambda s, p, o: service.start_travel(s, principal=p, order_id=o, now=utcnow()))

    @strawberry.mutation(permission_classes=[HANDLE], description="开始处理: on site, working.")
    async def start_work(self, info: Info, id: strawberry.ID) -> WorkOrderPayload:
        return await _simple(info, "startWork", "开始处理", id,
                             lambda s, p, o: service.start_work(s, principal=p, order_id=o, now=utcnow()))

    @strawberry.mutation(permission_classes=[HANDLE], description="处理完成: the result, materials and photos.")
    async def resolve_work_order(self, info: Info, id: strawberry.ID, result: str,
                                 materials: list[MaterialInput] | None = None,
                                 photo_ids: list[strawberry.ID] | None = None) -> WorkOrderPayload:
        principal = info.context.caller
        order_id = decode_id(id, "WorkOrder")

        async def work(session: AsyncSession) -> Any:
            await service.locked_order(session, order_id=order_id, principal=principal)
            photos = await _photos(info, session, photo_ids or [], principal)
            await service.resolve_work_order(
                session, principal=principal, order_id=order_id, result=result,
                materials=[service.Material(m.name, m.quantity, m.unit) for m in materials or []], photos=photos,
                now=utcnow())
            await keep_order_photos(session, info.context.services["files"], photos, now=utcnow())
            return await _view(session, order_id, principal)

        return await run_mutation(info, module="workorders", action="resolveWorkOrder",
                                  describe=lambda row: f"处理完成 {order_id}", payload=_payload, work=work)

    @strawberry.mutation(permission_classes=[RequiresAny("workorders:handle", "resident:self")],
                         description="取消: the resident before work starts (note optional), staff until resolved "
                         "(note required).")
    async def cancel_work_order(self, info: Info, id: strawberry.ID, note: str | None = None) -> WorkOrderPayload:
        return await _simple(info, "cancelWorkOrder", "取消工单", id, lambda s, p, o: service.cancel_work_order(
            s, principal=p, order_id=o, note=note, now=utcnow()))

    @strawberry.mutation(permission_classes=[RESIDENT],
                         description="重新处理: not satisfied with the result; back to its assignee.")
    async def reopen_work_order(self, info: Info, id: strawberry.ID, note: str) -> WorkOrderPayload:
        return await _simple(info, "reopenWorkOrder", "重新处理", id, lambda s, p, o: service.reopen_work_order(
            s, principal=p, order_id=o, note=note, now=utcnow()))

    @strawberry.mutation(permission_classes=[RESIDENT], description="确认并评价: rating 1–5 and a comment, once.")
    async def confirm_work_order(self, info: Info, id: strawberry.ID, rating: int,
                                 comment: str | None = None) -> WorkOrderPayload:
        return await _simple(info, "confirmWorkOrder", "评价", id, lambda s, p, o: service.confirm_work_order(
            s, principal=p, order_id=o, rating=rating, comment=comment, now=utcnow()))

    @strawberry.mutation(permission_classes=[HANDLE], description="关闭: close a confirmed order.")
    async def close_work_order(self, info: Info, id: strawberry.ID, note: str | None = None) -> WorkOrderPayload:
        return await _simple(info, "closeWorkOrder", "关闭工单", id, lambda s, p, o: service.close_work_order(
            s, principal=p, order_id=o, note=note, now=utcnow()))


# --------------------------------------------------------------------------- subscriptions


@strawberry.type(description="A work order that changed (报修工单变化).")
class WorkOrderChangedEvent(SubscriptionEvent):
    work_order: WorkOrderType
    by: str = strawberry.field(description="resident:<id>, staff:<id> or system.")


@strawberry.type(description="A change of the pool: an order entered it (inPool) or left it (taken, dispatched, "
                 "cancelled).")
class WorkOrderPoolEvent(SubscriptionEvent):
    work_order: WorkOrderType
    in_pool: bool


async def _changed(context: Context, event: Event) -> tuple[WorkOrderChanged, WorkOrderType] | None:
    changed = payload_of(event, WorkOrderChanged)
    async with context.read() as session:
        try:
            row = await service.work_order_view(session, order_id=changed.workorder_id, principal=context.caller,
                                                now=utcnow())
        except NotFound:
            return None
    return changed, WorkOrderType.from_row(row)


async def pool_changed(context: Context, event: Event) -> WorkOrderPoolEvent | None:
    found = await _changed(context, event)
    if found is None:
        return None
    changed, order = found
    # Only the moves into and out of the pool: its creation, a take or dispatch, a cancel before either.
    if changed.state == WorkOrderState.submitted.value:
        return WorkOrderPoolEvent(event_id=event_id_of(event), work_order=order, in_pool=True)
    if changed.state in (WorkOrderState.assigned.value, WorkOrderState.cancelled.value):
        return WorkOrderPoolEvent(event_id=event_id_of(event), work_order=order, in_pool=False)
    return None


async def mine_changed(context: Context, event: Event) -> WorkOrderChangedEvent | None:
    found = await _changed(context, event)
    if found is None:
        return None
    changed, order = found
    if order.assignee_id != encode_id("StaffUser", context.caller.id):
        return None
    return WorkOrderChangedEvent(event_id=event_id_of(event), work_order=order, by=changed.by)


async def household_changed(context: Context, event: Event) -> WorkOrderChangedEvent | None:
    found = await _changed(context, event)  # the view reaches only the resident's households
    if found is None:
        return None
    changed, order = found
    return WorkOrderChangedEvent(event_id=event_id_of(event), work_order=order, by=changed.by)


@strawberry.type
class Subscription:
    work_order_pool_changed = event_subscription(
        WorkOrderPoolEvent, kinds=("workorder.changed",), permission="workorders:handle", visible=pool_changed,
        description="接单池: orders entering your pool (new, in your scope) and leaving it (taken, dispatched, "
        "cancelled). With afterEventId, the stored ones after it come first.",
    )
    my_work_order_changed = event_subscription(
        WorkOrderChangedEvent, kinds=("workorder.changed",), permission="workorders:handle", visible=mine_changed,
        description="Changes of the orders you hold (a resident's confirmation, reopening or cancellation included).",
    )
    resident_work_order_changed = event_subscription(
        WorkOrderChangedEvent, kinds=("workorder.changed",), permission="resident:self", visible=household_changed,
        description="Residents: changes of your households' work orders (报修进度).",
    )


NODES = {"WorkOrder": fetch_work_order}
