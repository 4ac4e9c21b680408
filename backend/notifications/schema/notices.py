"""GraphQL for notices (公告 / 物业通知; ``backend.notifications.notices``).

- Staff (公告管理: ``notices:read`` lists and counts, ``notices:publish`` writes):
  ``notices``, ``notice(id)``/``node``; ``createNotice``, ``updateNotice`` (drafts only),
  ``publishNotice`` (now, or ``at`` a later time), ``withdrawNotice``. Each notice shows
  its read receipts against its audience (``readStats``).
- Residents: ``myNotices`` (the live notices addressed to them, unread first, then
  newest), ``markNoticeRead`` (their read receipt, once).
- Anyone, without login (公共查询): ``publicNotices``, the live notices addressed to
  everyone; no image link (a download link is signed for a caller) and nothing about
  the audience or the readers.

Titles and bodies are plain text: clients show them as text, never as markup.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.auth.principal import Principal
from backend.clock import utcnow
from backend.errors import NotFound
from backend.graphql.context import Context
from backend.graphql.errors import UserError
from backend.graphql.limits import Cost
from backend.graphql.mutations import run_mutation
from backend.graphql.pagination import Connection, PageRequest
from backend.graphql.permissions import Public, Requires
from backend.graphql.relay import Node, decode_id, encode_id
from backend.notifications import notices as service
from backend.notifications.notices_models import NoticeAudience, NoticeState

NoticeStateEnum = strawberry.enum(NoticeState, name="NoticeState", description="草稿 / 待发布 / 已发布 / 已撤回")
NoticeAudienceEnum = strawberry.enum(NoticeAudience, name="NoticeAudience",
                                     description="全部住户 / 指定区域 (含下级) / 指定住户")

READ = [Requires("notices:read")]
PUBLISH = [Requires("notices:publish")]
RESIDENT = [Requires("resident:self")]
MAX_PUBLIC_NOTICES = 50


def _image_url(context: Context, key: str | None) -> str | None:
    files = context.services.get("files")
    if key is None or files is None or context.principal is None:
        return None
    url: str = files.download_url(key=key, principal=context.principal, now=utcnow(), reusable=True)
    return url


@strawberry.type(description="How many residents read a notice, of those it is addressed to.")
class NoticeReadStats:
    readers: int = strawberry.field(description="Residents who opened it (one read receipt each).")
    audience: int = strawberry.field(description="Residents bound to its audience's households now.")


@strawberry.type(name="Notice", description="A notice as staff manage it (公告).")
class NoticeType(Node):
    title: str
    body: str = strawberry.field(description="Plain text (line breaks kept); show it as text, never as markup.")
    image_url: str | None = strawberry.field(description="A signed link to the image, for you, if it has one.")
    audience: NoticeAudienceEnum  # type: ignore[valid-type]
    state: NoticeStateEnum  # type: ignore[valid-type]
    publish_at: datetime | None = strawberry.field(description="When it is (or was) to become visible.")
    published_at: datetime | None = strawberry.field(description="When it became visible.")
    expires_at: datetime | None
    withdrawn_at: datetime | None
    created_by: str
    published_by: str | None
    withdrawn_by: str | None
    created_at: datetime
    updated_at: datetime

    @strawberry.field(description="The areas it is addressed to (audience areas), with their subtrees.")
    async def area_ids(self, info: Info) -> list[strawberry.ID]:
        async with info.context.read() as session:
            areas, _ = await service.audience_of(session, decode_id(self.id, "Notice"))
        return [encode_id("Area", area) for area in areas]

    @strawberry.field(description="The households it is addressed to (audience households).")
    async def household_ids(self, info: Info) -> list[strawberry.ID]:
        async with info.context.read() as session:
            _, households = await service.audience_of(session, decode_id(self.id, "Notice"))
        return [encode_id("Household", household) for household in households]

    @strawberry.field(description="Read receipts against the audience's residents.", extensions=[Cost(weight=5)])
    async def read_stats(self, info: Info) -> NoticeReadStats:
        async with info.context.read() as session:
            stats = await service.read_stats(session, notice_id=decode_id(self.id, "Notice"))
        return NoticeReadStats(readers=stats.readers, audience=stats.audience)

    @classmethod
    def from_row(cls, context: Context, row: Any) -> NoticeType:
        get = row._mapping.__getitem__
        return cls(
            id=encode_id("Notice", get("id")), title=get("title"), body=get("body"),
            image_url=_image_url(context, get("image_key")), audience=NoticeAudience(get("audience")),
            state=NoticeState(get("state")), publish_at=get("publish_at"), published_at=get("published_at"),
            expires_at=get("expires_at"), withdrawn_at=get("withdrawn_at"), created_by=get("created_by"),
            published_by=get("published_by"), withdrawn_by=get("withdrawn_by"), created_at=get("created_at"),
            updated_at=get("updated_at"),
        )


@strawberry.type(description="A notice addressed to you (公告).")
class ResidentNotice:
    id: strawberry.ID
    title: str
    body: str = strawberry.field(description="Plain text (line breaks kept); show it as text, never as markup.")
    image_url: str | None = strawberry.field(description="A signed link to the image, if it has one.")
    published_at: datetime
    expires_at: datetime | None
    read_at: datetime | None = strawberry.field(description="When you first opened it; null: unread.")

    @classmethod
    def from_row(cls, context: Context, row: Any) -> ResidentNotice:
        get = row._mapping.__getitem__
        return cls(id=encode_id("Notice", get("id")), title=get("title"), body=get("body"),
                   image_url=_image_url(context, get("image_key")), published_at=get("published_at"),
                   expires_at=get("expires_at"), read_at=get("read_at"))


@strawberry.type(description="A notice addressed to everyone, readable without login (公共查询).")
class PublicNotice:
    id: strawberry.ID
    title: str
    body: str = strawberry.field(description="Plain text (line breaks kept); show it as text, never as markup.")
    published_at: datetime
    expires_at: datetime | None


@strawberry.input(description="A notice's content and audience.")
class NoticeInput:
    title: str = strawberry.field(description="1–100 characters.")
    body: str = strawberry.field(description="Plain text, 1–5000 characters; line breaks kept.")
    audience: NoticeAudienceEnum  # type: ignore[valid-type]
    area_ids: list[strawberry.ID] | None = strawberry.field(
        default=None, description="areas: the areas (each with its subtree), in your data scope.")
    household_ids: list[strawberry.ID] | None = strawberry.field(
        default=None, description="households: the households, in your data scope.")
    image_id: str | None = strawberry.field(
        default=None, description="A photo you uploaded (POST /files/photos: its photoId).")
    expires_at: datetime | None = strawberry.field(default=None, description="When it stops being shown; null: never.")

    def draft(self) -> service.NoticeDraft:
        return service.NoticeDraft(
            title=self.title, body=self.body, audience=NoticeAudience(self.audience),
            area_ids=[decode_id(area, "Area", field="areaIds") for area in self.area_ids or ()],
            household_ids=[decode_id(h, "Household", field="householdIds") for h in self.household_ids or ()],
            image_key=self.image_id, expires_at=self.expires_at)


def _writer(principal: Principal) -> service.Writer:
    return service.Writer(name=principal.name, scope_patterns=principal.scope_patterns(),
                          owner_kind=principal.kind.value, owner_id=principal.id)


async def fetch_notice(context: Any, pk: int) -> NoticeType | None:
    principal = context.principal
    if principal is None or not principal.has("notices:read"):
        return None
    async with context.read() as session:
        try:
            row = await service.staff_notice(session, notice_id=pk, scope_patterns=principal.scope_patterns())
        except NotFound:
            return None
    return NoticeType.from_row(context, row)


@strawberry.type
class Query:
    @strawberry.field(permission_classes=READ,
                      description="The notices you manage (their whole audience in your data scope), newest first.")
    async def notices(
        self, info: Info, states: list[NoticeStateEnum] | None = None,  # type: ignore[valid-type]
        first: int | None = None, after: str | None = None,
    ) -> Connection[NoticeType]:
        page = PageRequest.from_args(first, after)
        async with info.context.read() as session:
            rows, total = await service.staff_notices(
                session, scope_patterns=info.context.caller.scope_patterns(),
                states=[NoticeState(state) for state in states] if states else None, limit=page.limit,
                offset=page.offset)
        return Connection.from_page([NoticeType.from_row(info.context, row) for row in rows], total=total,
                                    offset=page.offset)

    @strawberry.field(permission_classes=RESIDENT,
                      description="The notices addressed to you (to everyone, your households' areas or your "
                      "households), live now: unread first, then newest.")
    async def my_notices(
        self, info: Info, unread_only: bool = False, first: int | None = None, after: str | None = None,
    ) -> Connection[ResidentNotice]:
        principal = info.context.caller
        page = PageRequest.from_args(first, after)
        async with info.context.read() as session:
            rows, total = await service.resident_notices(
                session, resident_id=principal.id, household_ids=principal.household_ids, now=utcnow(),
                limit=page.limit, offset=page.offset, unread_only=unread_only)
        return Connection.from_page([ResidentNotice.from_row(info.context, row) for row in rows], total=total,
                                    offset=page.offset)

    @strawberry.field(permission_classes=[Public], extensions=[Cost(items=MAX_PUBLIC_NOTICES)],
                      description="The notices addressed to everyone, live now, newest first; readable without "
                      f"login (公共查询). The first {MAX_PUBLIC_NOTICES}.")
    async def public_notices(self, info: Info) -> list[PublicNotice]:
        async with info.context.read() as session:
            rows = await service.public_notices(session, now=utcnow(), limit=MAX_PUBLIC_NOTICES)
        return [PublicNotice(id=encode_id("Notice", row.id), title=row.title, body=row.body,
                             published_at=row.published_at, expires_at=row.expires_at) for row in rows]


@strawberry.type
class NoticePayload:
    notice: NoticeType | None
    errors: list[UserError]


@strawberry.type
class ResidentNoticePayload:
    notice: ResidentNotice | None
    errors: list[UserError]


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=PUBLISH, description="Write a notice as a draft (新建公告).")
    async def create_notice(self, info: Info, input: NoticeInput) -> NoticePayload:
        context: Context = info.context
        principal = context.caller

        async def work(session: AsyncSession) -> Any:
            notice = await service.create_notice(session, draft=input.draft(), writer=_writer(principal),
                                                 files=context.services.get("files"), now=utcnow())
            assert notice.id is not None
            return await service.staff_notice(session, notice_id=notice.id, scope_patterns=None)

        return await run_mutation(
            info, action="createNotice", describe=lambda _: f"新建公告 {input.title[:40]}",
            payload=lambda row, errors: NoticePayload(notice=NoticeType.from_row(context, row) if row else None,
                                                      errors=errors),
            work=work)

    @strawberry.mutation(permission_classes=PUBLISH, description="Rewrite a draft notice (修改公告; drafts only).")
    async def update_notice(self, info: Info, id: strawberry.ID, input: NoticeInput) -> NoticePayload:
        context: Context = info.context
        principal = context.caller
        notice_id = decode_id(id, "Notice")

        async def work(session: AsyncSession) -> Any:
            await service.update_notice(session, notice_id=notice_id, draft=input.draft(), writer=_writer(principal),
                                        files=context.services.get("files"), now=utcnow())
            return await service.staff_notice(session, notice_id=notice_id, scope_patterns=None)

        return await run_mutation(
            info, action="updateNotice", describe=lambda _: f"修改公告 {notice_id}",
            payload=lambda row, errors: NoticePayload(notice=NoticeType.from_row(context, row) if row else None,
                                                      errors=errors),
            work=work)

    @strawberry.mutation(permission_classes=PUBLISH,
                         description="Publish a draft (发布公告): now, or at a later time `at` (scheduled).")
    async def publish_notice(self, info: Info, id: strawberry.ID, at: datetime | None = None) -> NoticePayload:
        context: Context = info.context
        principal = context.caller
        notice_id = decode_id(id, "Notice")

        async def work(session: AsyncSession) -> Any:
            await service.publish_notice(session, notice_id=notice_id, at=at, writer=_writer(principal), now=utcnow())
            return await service.staff_notice(session, notice_id=notice_id, scope_patterns=None)

        return await run_mutation(
            info, action="publishNotice", describe=lambda _: f"发布公告 {notice_id}",
            payload=lambda row, errors: NoticePayload(notice=NoticeType.from_row(context, row) if row else None,
                                                      errors=errors),
            work=work)

    @strawberry.mutation(permission_classes=PUBLISH,
                         description="Withdraw a scheduled or published notice (撤回公告): never shown again.")
    async def withdraw_notice(self, info: Info, id: strawberry.ID) -> NoticePayload:
        context: Context = info.context
        principal = context.caller
        notice_id = decode_id(id, "Notice")

        async def work(session: AsyncSession) -> Any:
            await service.withdraw_notice(session, notice_id=notice_id, writer=_writer(principal), now=utcnow())
            return await service.staff_notice(session, notice_id=notice_id, scope_patterns=None)

        return await run_mutation(
            info, action="withdrawNotice", describe=lambda _: f"撤回公告 {notice_id}",
            payload=lambda row, errors: NoticePayload(notice=NoticeType.from_row(context, row) if row else None,
                                                      errors=errors),
            work=work)

    @strawberry.mutation(permission_classes=RESIDENT,
                         description="Record that you read a notice addressed to you (its read receipt; once).")
    async def mark_notice_read(self, info: Info, id: strawberry.ID) -> ResidentNoticePayload:
        context: Context = info.context
        principal = context.caller
        notice_id = decode_id(id, "Notice")

        async def work(session: AsyncSession) -> Any:
            return await service.mark_read(session, notice_id=notice_id, resident_id=principal.id,
                                           household_ids=principal.household_ids, now=utcnow())

        return await run_mutation(
            info, action="markNoticeRead", describe=lambda _: f"阅读公告 {notice_id}",
            payload=lambda row, errors: ResidentNoticePayload(
                notice=ResidentNotice.from_row(context, row) if row else None, errors=errors),
            work=work)


# The node(id:) fetchers of this module's types (collected by the root schema).
NODES = {
    "Notice": fetch_notice,
}
