"""GraphQL for messages (消息): the caller's own inbox (a resident or a staff user), their
devices and preferences, the ``messageCreated`` subscription (residents and staff), and the
delivery records of pushes and SMS for staff holding ``messages:read`` (消息管理), in
their area scope: an SMS through its household's area, a push (a JPush call to devices
of any area) with whole-tree scope only. ``messages:read`` is not an API client's scope.

API clients have no inbox: the inbox fields refuse them (FORBIDDEN).
"""

from __future__ import annotations

from datetime import datetime, time
from typing import Any

import strawberry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.scalars import JSON
from strawberry.types import Info

from backend.auth.models import PrincipalKind
from backend.clock import utcnow
from backend.errors import Forbidden
from backend.events.service import Event, payload_of
from backend.graphql.context import Context
from backend.graphql.errors import UserError
from backend.graphql.limits import Cost
from backend.graphql.mutations import run_mutation
from backend.graphql.pagination import Connection, PageRequest
from backend.graphql.permissions import Authenticated, Requires
from backend.graphql.relay import Node, decode_id, encode_id
from backend.graphql.subscriptions import SubscriptionEvent, event_id_of, event_subscription
from backend.notifications import service
from backend.notifications.channels import TITLES
from backend.notifications.events import MessageCreated
from backend.notifications.kinds import MessageKind
from backend.notifications.models import DevicePlatform, PushState, SmsState, UserKind

strawberry.enum(MessageKind, name="MessageKind", description=" / ".join(TITLES.values()))
strawberry.enum(DevicePlatform, name="DevicePlatform")
strawberry.enum(PushState, name="PushDeliveryState", description="待发送 / 已发送 / 失败")
strawberry.enum(SmsState, name="SmsDeliveryState", description="待发送 / 已发送 / 失败 / 超出每日上限")

READ = [Requires("messages:read")]
# The longest registration id JPush hands out is 64 characters (the column's width).
MAX_REGISTRATION_ID = 64


def inbox_user(context: Context) -> service.InboxUser:
    """The caller's inbox: residents' and staff users' only."""
    principal = context.caller
    if principal.kind is PrincipalKind.resident:
        return service.InboxUser(UserKind.resident, principal.id)
    if principal.kind is PrincipalKind.staff:
        return service.InboxUser(UserKind.staff, principal.id)
    raise Forbidden()


@strawberry.type(name="Message", description="A message in your inbox (消息).")
class MessageType(Node):
    kind: MessageKind
    title: str
    body: str
    data: JSON = strawberry.field(description='Where the app opens it: {"screen": "bill", "id": 42}.')  # type: ignore[valid-type]
    household_id: strawberry.ID | None = strawberry.field(description="The household it came through, if any.")
    created_at: datetime
    read_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> MessageType:
        return cls(id=encode_id("Message", row["id"]), kind=MessageKind(row["kind"]), title=row["title"],
                   body=row["body"], data=row["data"],
                   household_id=encode_id("Household", row["household_id"]) if row["household_id"] else None,
                   created_at=row["created_at"], read_at=row["read_at"])


@strawberry.type(description="Your notification settings (消息设置).")
class NotificationPreferences:
    muted_kinds: list[MessageKind] = strawberry.field(
        description="Kinds that do not push (they still reach the inbox, and SMS where due).")
    quiet_start: time | None = strawberry.field(description="免打扰 start, the utility's local time; pushes wait till the end.")
    quiet_end: time | None


@strawberry.type(description="One JPush call's record: a message text to up to 1000 devices.")
class PushDeliveryType:
    id: strawberry.ID
    kind: MessageKind
    title: str
    devices: int
    messages: int
    state: PushState
    attempts: int
    reason: str | None
    next_attempt_at: datetime
    created_at: datetime
    sent_at: datetime | None


@strawberry.type(description="A notification SMS to a household's registered phone.")
class SmsDeliveryType:
    id: strawberry.ID
    household_id: strawberry.ID
    kind: MessageKind
    text: str
    state: SmsState
    phone: str | None = strawberry.field(description="Masked: 138****5678.")
    reason: str | None
    attempts: int
    created_at: datetime
    sent_at: datetime | None


def _masked(phone: str | None) -> str | None:
    return phone[:3] + "****" + phone[-4:] if phone and len(phone) >= 7 else phone


# Delivery records' area scope (:patterns, the caller's LIKE patterns; backend.auth.scope).
# An SMS is its household's: seen when the household's area is in the scope. A push is one
# JPush call carrying one text to up to 1000 devices of residents and staff of any area, so
# it belongs to no area: push records are seen with whole-tree scope only.
_HOUSEHOLD_IN_SCOPE = ("EXISTS (SELECT 1 FROM households h JOIN areas a ON a.id = h.area_id"
                       " WHERE h.id = sms_deliveries.household_id AND a.path LIKE ANY(CAST(:patterns AS text[])))")
_WHOLE_TREE = ("NOT EXISTS (SELECT 1 FROM areas r WHERE r.parent_id IS NULL"
               " AND NOT r.path LIKE ANY(CAST(:patterns AS text[])))")


async def _page(context: Context, sql: str, values: dict[str, Any], page: PageRequest) -> tuple[list[Any], int]:
    async with context.read() as session:
        rows = list((await session.execute(text(f"SELECT * {sql} ORDER BY id DESC OFFSET :o LIMIT :l"),
                                           {**values, "o": page.offset, "l": page.limit})).mappings())
        total = (await session.execute(text(f"SELECT count(*) {sql}"), values)).scalar_one()
    return rows, int(total)


@strawberry.type
class Query:
    @strawberry.field(permission_classes=[Authenticated], description="Your messages, newest first (resident or staff).")
    async def my_messages(
        self, info: Info, first: int | None = None, after: str | None = None, unread_only: bool = False,
        kind: MessageKind | None = None,
    ) -> Connection[MessageType]:
        user = inbox_user(info.context)
        page = PageRequest.from_args(first, after)
        async with info.context.read() as session:
            rows, total = await service.inbox_page(session, user=user, offset=page.offset, limit=page.limit,
                                                   unread_only=unread_only, kind=kind.value if kind else None)
        return Connection.from_page([MessageType.from_row(row) for row in rows], total=total, offset=page.offset)

    @strawberry.field(permission_classes=[Authenticated], description="How many of your messages are unread.")
    async def unread_message_count(self, info: Info) -> int:
        user = inbox_user(info.context)
        async with info.context.read() as session:
            return await service.unread_count(session, user=user)

    @strawberry.field(permission_classes=[Authenticated], description="Your notification settings.")
    async def notification_preferences(self, info: Info) -> NotificationPreferences:
        user = inbox_user(info.context)
        async with info.context.read() as session:
            found = await service.preferences_of(session, user=user)
        return NotificationPreferences(muted_kinds=[MessageKind(kind) for kind in found.muted_kinds],
                                       quiet_start=found.quiet_start, quiet_end=found.quiet_end)

    @strawberry.field(permission_classes=READ, description="Push delivery records (消息管理), newest first.")
    async def push_deliveries(
        self, info: Info, state: PushState | None = None, kind: MessageKind | None = None,
        first: int | None = None, after: str | None = None,
    ) -> Connection[PushDeliveryType]:
        page = PageRequest.from_args(first, after)
        rows, total = await _page(info.context, "FROM push_deliveries WHERE (CAST(:s AS text) IS NULL OR state = :s) "
                                  f"AND (CAST(:k AS text) IS NULL OR kind = :k) AND {_WHOLE_TREE}",
                                  {"s": state.value if state else None, "k": kind.value if kind else None,
                                   "patterns": info.context.caller.scope_patterns()}, page)
        nodes = [PushDeliveryType(id=encode_id("PushDelivery", row["id"]), kind=MessageKind(row["kind"]),
                                  title=row["title"], devices=len(row["registration_ids"]),
                                  messages=len(row["message_ids"]), state=PushState(row["state"]),
                                  attempts=row["attempts"], reason=row["reason"], next_attempt_at=row["next_attempt_at"],
                                  created_at=row["created_at"], sent_at=row["sent_at"]) for row in rows]
        return Connection.from_page(nodes, total=total, offset=page.offset)

    @strawberry.field(permission_classes=READ, description="SMS delivery records (消息管理), newest first.")
    async def sms_deliveries(
        self, info: Info, state: SmsState | None = None, kind: MessageKind | None = None,
        household_id: strawberry.ID | None = None, first: int | None = None, after: str | None = None,
    ) -> Connection[SmsDeliveryType]:
        page = PageRequest.from_args(first, after)
        household = decode_id(household_id, "Household", field="householdId") if household_id else None
        rows, total = await _page(info.context, "FROM sms_deliveries WHERE (CAST(:s AS text) IS NULL OR state = :s) "
                                  "AND (CAST(:k AS text) IS NULL OR kind = :k) "
                                  f"AND (CAST(:h AS bigint) IS NULL OR household_id = :h) AND {_HOUSEHOLD_IN_SCOPE}",
                                  {"s": state.value if state else None, "k": kind.value if kind else None,
                                   "h": household, "patterns": info.context.caller.scope_patterns()}, page)
        nodes = [SmsDeliveryType(id=encode_id("SmsDelivery", row["id"]),
                                 household_id=encode_id("Household", row["household_id"]), kind=MessageKind(row["kind"]),
                                 text=row["text"], state=SmsState(row["state"]), phone=_masked(row["phone"]),
                                 reason=row["reason"], attempts=row["attempts"], created_at=row["created_at"],
                                 sent_at=row["sent_at"]) for row in rows]
        return Connection.from_page(nodes, total=total, offset=page.offset)


@strawberry.type
class MarkMessagesReadPayload:
    marked: int = strawberry.field(description="How many messages changed to read.")
    unread_count: int
    errors: list[UserError]


@strawberry.type
class DevicePayload:
    registered: bool
    errors: list[UserError]


@strawberry.type
class NotificationPreferencesPayload:
    preferences: NotificationPreferences | None
    errors: list[UserError]


@strawberry.input
class NotificationPreferencesInput:
    muted_kinds: list[MessageKind] = strawberry.field(default_factory=list)
    quiet_start: time | None = None
    quiet_end: time | None = None


def _registration_id(value: str) -> str:
    from backend.errors import BadUserInput

    value = value.strip()
    if not value or len(value) > MAX_REGISTRATION_ID:
        raise BadUserInput("设备注册号无效", "Invalid registration id", field="registrationId")
    return value


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=[Authenticated],
                         description="Mark your messages read: the given ids, or all of them when ids is null.")
    async def mark_messages_read(self, info: Info, ids: list[strawberry.ID] | None = None) -> MarkMessagesReadPayload:
        user = inbox_user(info.context)
        if ids is not None and len(ids) > 1000:
            from backend.errors import BadUserInput

            raise BadUserInput("一次最多标记 1000 条", "At most 1000 ids at once", field="ids")
        pks = [decode_id(value, "Message", field="ids") for value in ids] if ids is not None else None

        async def work(session: AsyncSession) -> tuple[int, int]:
            marked = await service.mark_read(session, user=user, ids=pks, now=utcnow())
            return marked, await service.unread_count(session, user=user)

        return await run_mutation(
            info, action="markMessagesRead", describe=lambda _: "标记消息已读",
            payload=lambda result, errors: MarkMessagesReadPayload(
                marked=result[0] if result else 0, unread_count=result[1] if result else 0, errors=errors),
            work=work)

    @strawberry.mutation(permission_classes=[Authenticated],
                         description="Register this app installation for pushes (JPush registration id); one "
                         "registered to another user moves to you.")
    async def register_device(self, info: Info, registration_id: str,
                              platform: DevicePlatform) -> DevicePayload:
        user = inbox_user(info.context)

        async def work(session: AsyncSession) -> bool:
            registration = _registration_id(registration_id)
            await service.register_device(session, user=user, registration_id=registration,
                                          platform=DevicePlatform(platform.value), now=utcnow())
            return True

        return await run_mutation(info, action="registerDevice", describe=lambda _: f"登记推送设备 ({platform.value})",
                                  payload=lambda result, errors: DevicePayload(registered=bool(result), errors=errors),
                                  work=work)

    @strawberry.mutation(permission_classes=[Authenticated], description="Stop pushes to this app installation.")
    async def unregister_device(self, info: Info, registration_id: str) -> DevicePayload:
        user = inbox_user(info.context)

        async def work(session: AsyncSession) -> bool:
            return await service.unregister_device(session, user=user,
                                                   registration_id=_registration_id(registration_id))

        return await run_mutation(info, action="unregisterDevice", describe=lambda _: "注销推送设备",
                                  payload=lambda result, errors: DevicePayload(registered=False, errors=errors),
                                  work=work)

    @strawberry.mutation(permission_classes=[Authenticated], description="Replace your notification settings.")
    async def set_notification_preferences(
        self, info: Info, preferences: NotificationPreferencesInput,
    ) -> NotificationPreferencesPayload:
        user = inbox_user(info.context)
        wanted = service.Preferences(tuple(kind.value for kind in preferences.muted_kinds),
                                     preferences.quiet_start, preferences.quiet_end)

        async def work(session: AsyncSession) -> service.Preferences:
            await service.set_preferences(session, user=user, preferences=wanted, now=utcnow())
            return wanted

        def payload(result: service.Preferences | None, errors: list[UserError]) -> NotificationPreferencesPayload:
            shown = None if result is None else NotificationPreferences(
                muted_kinds=[MessageKind(kind) for kind in result.muted_kinds], quiet_start=result.quiet_start,
                quiet_end=result.quiet_end)
            return NotificationPreferencesPayload(preferences=shown, errors=errors)

        return await run_mutation(info, action="setNotificationPreferences", describe=lambda _: "修改消息设置",
                                  payload=payload, work=work)


# A message.created event carries at most service.EVENT_CHUNK messages, one per recipient.
MAX_MESSAGES_PER_EVENT = 100


@strawberry.type(description="New messages in your inbox (one item per message.created event with any of yours).")
class MessageCreatedEvent(SubscriptionEvent):
    messages: list[MessageType] = strawberry.field(extensions=[Cost(items=MAX_MESSAGES_PER_EVENT)])


async def my_new_messages(context: Context, event: Event) -> MessageCreatedEvent | None:
    created = payload_of(event, MessageCreated)
    user = inbox_user(context)  # an API client has no inbox: FORBIDDEN
    mine = f"{user.kind.value}:{user.id}"
    ids = [message_id for message_id, recipient in zip(created.message_ids, created.recipient_ids, strict=True)
           if recipient == mine]
    if not ids:
        return None
    async with context.read() as session:
        rows = await service.messages_by_ids(session, user=user, ids=ids[:MAX_MESSAGES_PER_EVENT])
    if not rows:
        return None
    return MessageCreatedEvent(event_id=event_id_of(event), messages=[MessageType.from_row(row) for row in rows])


@strawberry.type
class Subscription:
    message_created = event_subscription(
        MessageCreatedEvent, kinds=("message.created",), permission=None, visible=my_new_messages,
        description="Your new messages as they are written (a resident's or a staff user's inbox). With afterEventId, "
        "the stored ones after it come first.",
    )
