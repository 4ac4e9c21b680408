"""Notices (公告 / 物业通知): staff write them for an audience, residents read them, the
public reads those addressed to everyone (docs/notifications.md, "Notices").

- **Writing** (``notices:publish``): a draft has a title (1–100 characters), a plain-text
  body (1–5,000; line breaks kept, other control characters refused; never markup: the
  apps show it as text and the public page escapes it), an optional image (a photo the
  writer uploaded through ``POST /files/photos``, kept for good once referenced), an
  audience and an optional expiry. Only a draft is edited: a published notice is what
  residents read and acknowledged, so a correction is a withdrawal and a new notice.
- **Audience**: ``all`` needs a data scope over the whole tree; ``areas`` and
  ``households`` need every one of them inside the writer's scope. Anything else is
  NOTICE_AUDIENCE_OUT_OF_SCOPE (an unknown household too, so existence never leaks; an
  unknown area is UNKNOWN_AREA, as everywhere) and nothing is written. The audience is
  checked again at publication (a scope may have shrunk since the draft).
- **Publishing**: at once (visible now, ``notice.published`` emitted in the same
  transaction) or for a later time (``scheduled``; the job ``publish_due_notices``,
  every minute, publishes the due ones and emits the event then). Withdrawing hides a
  scheduled or published notice for good and deletes its NOTICE messages from the
  inboxes (their pushes still queued are failed), in the same transaction.
- **Visibility**: a resident sees the published, unexpired notices addressed to everyone,
  to an area whose subtree holds one of their bound households (area path prefix), or to
  one of those households; staff see the notices whose whole audience lies in their scope
  (``all``: whole-tree scope only), as they could have written them.
- **Read receipts**: one per resident per notice (the first read's time); a notice's
  read count is its readers against its audience size, the residents bound to its
  households now.
- **Fan-out**: :func:`notice_messages`, the handler of ``notice.published``, writes one
  NOTICE message per household of the audience through ``notify_households`` (dedupe key
  ``notice:<id>``); a notice withdrawn or expired by then sends nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth.scope import covers_whole_tree, path_in_scope, require_area_paths
from backend.errors import DomainError, ErrorCode, NotFound
from backend.events.service import emit_event
from backend.files.photos import PHOTO_PURPOSE
from backend.notifications.events import NoticePublished
from backend.notifications.notices_models import Notice, NoticeArea, NoticeAudience, NoticeHousehold, NoticeState

if TYPE_CHECKING:
    from backend.events.service import Event
    from backend.files.service import FileStore
    from backend.runtime import Runtime

log = logging.getLogger(__name__)

MAX_TITLE = 100
MAX_BODY = 5000
MAX_AUDIENCE_IDS = 1000  # areas or households one notice names (a larger audience is an area)


class NoticeAudienceOutOfScope(DomainError):
    code = ErrorCode.NOTICE_AUDIENCE_OUT_OF_SCOPE
    message = "公告的发布范围超出了您的数据范围"
    message_en = "The notice's audience lies outside your data scope"


class NoticeStateInvalid(DomainError):
    code = ErrorCode.NOTICE_STATE_INVALID

    def __init__(self, state: NoticeState, wanted: tuple[str, str]) -> None:
        names = {"draft": "草稿", "scheduled": "待发布", "published": "已发布", "withdrawn": "已撤回"}
        super().__init__(f"{names[state.value]}状态的公告不能{wanted[0]}", f"A {state.value} notice cannot be {wanted[1]}",
                         field="id")


class NoticeImageInvalid(DomainError):
    code = ErrorCode.PHOTO_INVALID
    message = "公告图片须为本人上传的图片"
    message_en = "The notice's image must be a photo you uploaded"


@dataclass(frozen=True, slots=True)
class NoticeDraft:
    """What a writer gives (create and edit). ``area_ids`` for ``areas``,
    ``household_ids`` for ``households``; ``image_key`` a photo they uploaded."""

    title: str
    body: str
    audience: NoticeAudience
    area_ids: Sequence[int] = ()
    household_ids: Sequence[int] = ()
    image_key: str | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Writer:
    """Who writes: a name for the record, their data scope, and who they are to the
    file store (a photo is attachable only by whoever uploaded it)."""

    name: str
    scope_patterns: Sequence[str] | None
    owner_kind: str = "staff"
    owner_id: int = 0


def _invalid(message: str, message_en: str, field: str) -> DomainError:
    return DomainError(message, message_en, field=field, code=ErrorCode.INVALID)


def _plain(value: str, *, field: str, limit: int, lines: bool) -> str:
    if lines:  # Windows and old Mac line breaks (pasted text, some textareas) are line breaks
        value = value.replace("\r\n", "\n").replace("\r", "\n")
    cleaned = value.strip()
    if not cleaned or len(cleaned) > limit:
        raise _invalid(f"须为 1 至 {limit} 个字符", f"Must be 1 to {limit} characters", field)
    allowed = "\n\t" if lines else ""
    if any(not character.isprintable() and character not in allowed for character in cleaned):
        raise _invalid("含有不可见的控制字符", "Contains control characters", field)
    return cleaned


async def _checked_audience(session: AsyncSession, draft: NoticeDraft, scope_patterns: Sequence[str] | None) -> None:
    if draft.audience is NoticeAudience.all:
        if draft.area_ids or draft.household_ids:
            raise _invalid("发布给全部住户时不指定区域或住户", "An audience of all names no areas or households", "audience")
        if not await covers_whole_tree(session, scope_patterns):
            raise NoticeAudienceOutOfScope(field="audience")
        return
    if draft.audience is NoticeAudience.areas:
        ids, other, field = draft.area_ids, draft.household_ids, "areaIds"
    else:
        ids, other, field = draft.household_ids, draft.area_ids, "householdIds"
    if not ids or other or len(set(ids)) > MAX_AUDIENCE_IDS:
        raise _invalid(f"须指定 1 至 {MAX_AUDIENCE_IDS} 个{'区域' if field == 'areaIds' else '住户'}",
                       f"Name 1 to {MAX_AUDIENCE_IDS} {'areas' if field == 'areaIds' else 'households'} (and only those)",
                       field)
    if draft.audience is NoticeAudience.areas:
        paths = await require_area_paths(session, ids, field=field)
        if not all(path_in_scope(path, scope_patterns) for path in paths.values()):
            raise NoticeAudienceOutOfScope(field=field)
        return
    rows = await session.execute(text(
        "SELECT a.path FROM households h JOIN areas a ON a.id = h.area_id WHERE h.id = ANY(:ids)"),
        {"ids": sorted(set(ids))})
    paths_of_households = [row.path for row in rows]
    # An unknown household is refused as out of scope: its existence is not told.
    if len(paths_of_households) != len(set(ids)) or not all(
            path_in_scope(path, scope_patterns) for path in paths_of_households):
        raise NoticeAudienceOutOfScope(field=field)


async def _checked_image(session: AsyncSession, files: FileStore | None, key: str, writer: Writer) -> str:
    if files is None:
        raise NoticeImageInvalid(field="imageId")
    try:
        stored = await files.describe(session, key=key)
    except ValueError:  # not even a key's shape
        raise DomainError("文件不存在或已过期删除", "The file does not exist (or expired and was deleted)",
                          field="imageId", code=ErrorCode.FILE_NOT_FOUND) from None
    except DomainError as error:
        error.field = "imageId"
        raise
    if (stored.purpose != PHOTO_PURPOSE or not stored.content_type.startswith("image/")
            or (stored.owner_kind, stored.owner_id) != (writer.owner_kind, writer.owner_id)):
        raise NoticeImageInvalid(field="imageId")
    await files.keep(session, key=stored.key, until=None)
    return stored.key


async def _write_audience(session: AsyncSession, notice_id: int, draft: NoticeDraft) -> None:
    await session.execute(text("DELETE FROM notice_areas WHERE notice_id = :id"), {"id": notice_id})
    await session.execute(text("DELETE FROM notice_households WHERE notice_id = :id"), {"id": notice_id})
    if draft.audience is NoticeAudience.areas:
        await session.execute(text(
            "INSERT INTO notice_areas (notice_id, area_id) SELECT :id, unnest(CAST(:ids AS bigint[]))"),
            {"id": notice_id, "ids": sorted(set(draft.area_ids))})
    elif draft.audience is NoticeAudience.households:
        await session.execute(text(
            "INSERT INTO notice_households (notice_id, household_id) SELECT :id, unnest(CAST(:ids AS bigint[]))"),
            {"id": notice_id, "ids": sorted(set(draft.household_ids))})


async def _checked_draft(
    session: AsyncSession, draft: NoticeDraft, writer: Writer, files: FileStore | None, now: datetime,
) -> tuple[str, str, str | None]:
    title = _plain(draft.title, field="title", limit=MAX_TITLE, lines=False)
    body = _plain(draft.body, field="body", limit=MAX_BODY, lines=True)
    if draft.expires_at is not None and draft.expires_at <= now:
        raise _invalid("过期时间须晚于现在", "The expiry must be later than now", "expiresAt")
    await _checked_audience(session, draft, writer.scope_patterns)
    image = await _checked_image(session, files, draft.image_key, writer) if draft.image_key else None
    return title, body, image


async def create_notice(
    session: AsyncSession, *, draft: NoticeDraft, writer: Writer, files: FileStore | None, now: datetime,
) -> Notice:
    """A new draft; refused (nothing written) for bad text, an audience outside the
    writer's scope or an image that is not their photo."""
    title, body, image = await _checked_draft(session, draft, writer, files, now)
    notice = Notice(title=title, body=body, image_key=image, audience=draft.audience, state=NoticeState.draft,
                    expires_at=draft.expires_at, created_by=writer.name, created_at=now, updated_at=now)
    session.add(notice)
    await session.flush()
    assert notice.id is not None
    await _write_audience(session, notice.id, draft)
    return notice


async def _locked(session: AsyncSession, notice_id: int, scope_patterns: Sequence[str] | None) -> Notice:
    """The notice, locked; NOT_FOUND when there is none or the caller does not see it."""
    notice = await session.get(Notice, notice_id, with_for_update=True, populate_existing=True)
    if notice is None or not await staff_sees(session, notice_id, scope_patterns):
        raise NotFound(field="id")
    return notice


async def update_notice(
    session: AsyncSession, *, notice_id: int, draft: NoticeDraft, writer: Writer, files: FileStore | None,
    now: datetime,
) -> Notice:
    """Rewrite a draft (only a draft: NOTICE_STATE_INVALID otherwise)."""
    notice = await _locked(session, notice_id, writer.scope_patterns)
    if notice.state is not NoticeState.draft:
        raise NoticeStateInvalid(notice.state, ("修改", "edited"))
    title, body, image = await _checked_draft(session, draft, writer, files, now)
    notice.title, notice.body, notice.audience, notice.expires_at = title, body, draft.audience, draft.expires_at
    notice.image_key, notice.updated_at = image, now
    await session.flush()
    await _write_audience(session, notice_id, draft)
    return notice


async def _make_visible(session: AsyncSession, notice: Notice, *, by: str, now: datetime) -> None:
    notice.state, notice.published_at, notice.published_by, notice.updated_at = NoticeState.published, now, by, now
    await session.flush()
    assert notice.id is not None
    await emit_event(session, "notice.published", NoticePublished(notice_id=notice.id), key=f"notice:{notice.id}")


async def publish_notice(
    session: AsyncSession, *, notice_id: int, at: datetime | None, writer: Writer, now: datetime,
) -> Notice:
    """Publish a draft now (``at`` None or past: visible at once, ``notice.published``) or
    schedule it for ``at``. The audience is checked again against the writer's scope."""
    notice = await _locked(session, notice_id, writer.scope_patterns)
    if notice.state is not NoticeState.draft:
        raise NoticeStateInvalid(notice.state, ("发布", "published"))
    if notice.expires_at is not None and notice.expires_at <= (at if at is not None and at > now else now):
        raise _invalid("公告在发布前已过期", "The notice would expire before it is published", "expiresAt")
    areas = [row.area_id for row in await session.execute(
        text("SELECT area_id FROM notice_areas WHERE notice_id = :id"), {"id": notice_id})]
    households = [row.household_id for row in await session.execute(
        text("SELECT household_id FROM notice_households WHERE notice_id = :id"), {"id": notice_id})]
    await _checked_audience(session, NoticeDraft(title="", body="", audience=notice.audience, area_ids=areas,
                                                 household_ids=households), writer.scope_patterns)
    if at is not None and at > now:
        notice.state, notice.publish_at, notice.published_by, notice.updated_at = NoticeState.scheduled, at, writer.name, now
        await session.flush()
        return notice
    notice.publish_at = now
    await _make_visible(session, notice, by=writer.name, now=now)
    return notice


async def withdraw_notice(session: AsyncSession, *, notice_id: int, writer: Writer, now: datetime) -> Notice:
    """Hide a scheduled or published notice for good, and take it out of the inboxes: its
    NOTICE messages are deleted and the pushes of them not yet sent are failed, in the
    same transaction."""
    notice = await _locked(session, notice_id, writer.scope_patterns)
    if notice.state not in (NoticeState.scheduled, NoticeState.published):
        raise NoticeStateInvalid(notice.state, ("撤回", "withdrawn"))
    notice.state, notice.withdrawn_at, notice.withdrawn_by, notice.updated_at = NoticeState.withdrawn, now, writer.name, now
    await session.flush()
    # The fan-out's dedupe key names the notice (notice_messages).
    removed = list((await session.execute(text(
        "DELETE FROM messages WHERE kind = 'notice' AND dedupe_key = :key RETURNING id"),
        {"key": f"notice:{notice_id}"})).scalars())
    if removed:
        await session.execute(text(
            "UPDATE push_deliveries SET state = 'failed', reason = 'notice withdrawn' WHERE state = 'queued'"
            " AND kind = 'notice' AND message_ids && CAST(:ids AS bigint[])"), {"ids": removed})
    return notice


async def publish_due(session: AsyncSession, *, now: datetime, limit: int = 200) -> list[int]:
    """Publish the scheduled notices whose time has come (those another worker holds are
    skipped); returns their ids. Each becomes visible as of its ``publish_at``."""
    rows = await session.execute(text(
        "SELECT id FROM notices WHERE state = 'scheduled' AND publish_at <= :now ORDER BY publish_at, id "
        "LIMIT :limit FOR UPDATE SKIP LOCKED"), {"now": now, "limit": limit})
    published = []
    for (notice_id,) in rows.all():
        notice = await session.get(Notice, notice_id)
        assert notice is not None and notice.publish_at is not None
        await _make_visible(session, notice, by=notice.published_by or "系统", now=notice.publish_at)
        published.append(notice_id)
    return published


async def publish_due_notices(runtime: Runtime, payload: Mapping[str, Any]) -> int:
    """The job ``publish_due_notices`` (every minute): publish every due scheduled notice,
    200 to a transaction."""
    total = 0
    while True:
        async with runtime.sessions() as session, session.begin():
            published = await publish_due(session, now=runtime.now())
        total += len(published)
        if len(published) < 200:
            break
    if total:
        log.info("published %d scheduled notices", total)
    return total


# --------------------------------------------------------------------------- who sees what

# Staff: every part of the audience in scope (all: whole-tree scope). :patterns text[].
STAFF_SEES = """(
  (n.audience = 'all' AND NOT EXISTS (
     SELECT 1 FROM areas r WHERE r.parent_id IS NULL AND NOT r.path LIKE ANY(CAST(:patterns AS text[]))))
  OR (n.audience = 'areas' AND NOT EXISTS (
     SELECT 1 FROM notice_areas na JOIN areas a ON a.id = na.area_id
     WHERE na.notice_id = n.id AND NOT a.path LIKE ANY(CAST(:patterns AS text[]))))
  OR (n.audience = 'households' AND NOT EXISTS (
     SELECT 1 FROM notice_households nh JOIN households h ON h.id = nh.household_id JOIN areas a ON a.id = h.area_id
     WHERE nh.notice_id = n.id AND NOT a.path LIKE ANY(CAST(:patterns AS text[]))))
)"""

# Visible now: published, not expired. :now.
LIVE = "(n.state = 'published' AND n.published_at <= :now AND (n.expires_at IS NULL OR n.expires_at > :now))"

# Addressed to one of the households :households (bigint[]).
ADDRESSED = """(
  n.audience = 'all'
  OR (n.audience = 'areas' AND EXISTS (
     SELECT 1 FROM notice_areas na JOIN areas a ON a.id = na.area_id, households h JOIN areas ha ON ha.id = h.area_id
     WHERE na.notice_id = n.id AND h.id = ANY(CAST(:households AS bigint[])) AND ha.path LIKE a.path || '%'))
  OR (n.audience = 'households' AND EXISTS (
     SELECT 1 FROM notice_households nh
     WHERE nh.notice_id = n.id AND nh.household_id = ANY(CAST(:households AS bigint[]))))
)"""

# Every household of notice :notice_id's audience (the fan-out's set), each once. The
# branches are disjoint (each is its audience kind's), so only the areas' one, whose
# subtrees may nest, removes duplicates: a notice to everyone does not hash 100k ids.
AUDIENCE_HOUSEHOLDS = """
SELECT h.id FROM notices n JOIN households h ON n.audience = 'all' WHERE n.id = :notice_id AND h.status <> 'closed'
UNION ALL
SELECT DISTINCT h.id FROM notices n JOIN notice_areas na ON na.notice_id = n.id JOIN areas a ON a.id = na.area_id
  JOIN areas ha ON ha.path LIKE a.path || '%' JOIN households h ON h.area_id = ha.id
WHERE n.id = :notice_id AND n.audience = 'areas' AND h.status <> 'closed'
UNION ALL
SELECT h.id FROM notices n JOIN notice_households nh ON nh.notice_id = n.id JOIN households h ON h.id = nh.household_id
WHERE n.id = :notice_id AND n.audience = 'households' AND h.status <> 'closed'
"""

COLUMNS = ("n.id, n.title, n.body, n.image_key, n.audience, n.state, n.publish_at, n.published_at, n.expires_at, "
           "n.withdrawn_at, n.created_by, n.published_by, n.withdrawn_by, n.created_at, n.updated_at")


def _patterns(scope_patterns: Sequence[str] | None) -> list[str]:
    return ["%"] if scope_patterns is None else list(scope_patterns)


async def staff_sees(session: AsyncSession, notice_id: int, scope_patterns: Sequence[str] | None) -> bool:
    row = (await session.execute(text(f"SELECT 1 FROM notices n WHERE n.id = :id AND {STAFF_SEES}"),
                                 {"id": notice_id, "patterns": _patterns(scope_patterns)})).first()
    return row is not None


def staff_list_sql(states: bool) -> str:
    """The staff list (newest first), with ``:patterns`` and, when ``states``, ``:states``."""
    where = STAFF_SEES + (" AND n.state = ANY(CAST(:states AS text[]))" if states else "")
    return f"SELECT {COLUMNS} FROM notices n WHERE {where} ORDER BY n.created_at DESC, n.id DESC"


async def staff_notices(
    session: AsyncSession, *, scope_patterns: Sequence[str] | None, states: Sequence[NoticeState] | None = None,
    limit: int = 50, offset: int = 0,
) -> tuple[list[Any], int]:
    """A page of the notices the caller sees (every state), newest first, and the total."""
    params: dict[str, Any] = {"patterns": _patterns(scope_patterns), "limit": limit, "offset": offset}
    if states:
        params["states"] = [state.value for state in states]
    statement = staff_list_sql(bool(states))
    rows = (await session.execute(text(f"{statement} LIMIT :limit OFFSET :offset"), params)).all()
    total = (await session.execute(text(f"SELECT count(*) FROM ({statement}) s"), params)).scalar_one()
    return list(rows), int(total)


async def staff_notice(session: AsyncSession, *, notice_id: int, scope_patterns: Sequence[str] | None) -> Any:
    row = (await session.execute(text(f"SELECT {COLUMNS} FROM notices n WHERE n.id = :id AND {STAFF_SEES}"),
                                 {"id": notice_id, "patterns": _patterns(scope_patterns)})).first()
    if row is None:
        raise NotFound(field="id")
    return row


@dataclass(frozen=True, slots=True)
class ReadStats:
    readers: int
    audience: int  # residents bound to the audience's households now


async def read_stats(session: AsyncSession, *, notice_id: int) -> ReadStats:
    """How many residents read the notice, and how many it is addressed to now."""
    row = (await session.execute(text(f"""
        SELECT (SELECT count(*) FROM notice_reads WHERE notice_id = :notice_id) AS readers,
               (SELECT count(DISTINCT rh.resident_id) FROM resident_households rh
                WHERE rh.household_id IN ({AUDIENCE_HOUSEHOLDS})) AS audience
    """), {"notice_id": notice_id})).one()
    return ReadStats(readers=row.readers, audience=row.audience)


async def audience_of(session: AsyncSession, notice_id: int) -> tuple[list[int], list[int]]:
    """A notice's named areas and households (empty for ``all``)."""
    areas = [row[0] for row in await session.execute(
        text("SELECT area_id FROM notice_areas WHERE notice_id = :id ORDER BY area_id"), {"id": notice_id})]
    households = [row[0] for row in await session.execute(
        text("SELECT household_id FROM notice_households WHERE notice_id = :id ORDER BY household_id"),
        {"id": notice_id})]
    return areas, households


async def resident_notices(
    session: AsyncSession, *, resident_id: int, household_ids: Sequence[int], now: datetime, limit: int = 50,
    offset: int = 0, unread_only: bool = False,
) -> tuple[list[Any], int]:
    """The live notices addressed to the resident (through their bound households), unread
    first, then newest; each row carries ``read_at`` (None: unread). And the total."""
    params = {"resident": resident_id, "households": list(household_ids), "now": now, "limit": limit, "offset": offset}
    statement = f"""
        SELECT {COLUMNS}, r.read_at FROM notices n
        LEFT JOIN notice_reads r ON r.notice_id = n.id AND r.resident_id = :resident
        WHERE {LIVE} AND {ADDRESSED} {"AND r.read_at IS NULL" if unread_only else ""}
    """
    rows = (await session.execute(text(
        f"{statement} ORDER BY (r.read_at IS NULL) DESC, n.published_at DESC, n.id DESC LIMIT :limit OFFSET :offset"),
        params)).all()
    total = (await session.execute(text(f"SELECT count(*) FROM ({statement}) s"), params)).scalar_one()
    return list(rows), int(total)


async def resident_notice(
    session: AsyncSession, *, notice_id: int, resident_id: int, household_ids: Sequence[int], now: datetime,
) -> Any:
    row = (await session.execute(text(f"""
        SELECT {COLUMNS}, r.read_at FROM notices n
        LEFT JOIN notice_reads r ON r.notice_id = n.id AND r.resident_id = :resident
        WHERE n.id = :id AND {LIVE} AND {ADDRESSED}
    """), {"id": notice_id, "resident": resident_id, "households": list(household_ids), "now": now})).first()
    if row is None:
        raise NotFound(field="id")
    return row


async def mark_read(
    session: AsyncSession, *, notice_id: int, resident_id: int, household_ids: Sequence[int], now: datetime,
) -> Any:
    """Record the resident's read receipt (the first read stands); NOT_FOUND for a notice
    not live or not addressed to them. Returns the notice as they see it."""
    await resident_notice(session, notice_id=notice_id, resident_id=resident_id, household_ids=household_ids, now=now)
    await session.execute(text(
        "INSERT INTO notice_reads (notice_id, resident_id, read_at) VALUES (:id, :resident, :now) "
        "ON CONFLICT DO NOTHING"), {"id": notice_id, "resident": resident_id, "now": now})
    return await resident_notice(session, notice_id=notice_id, resident_id=resident_id, household_ids=household_ids,
                                 now=now)


async def public_notices(session: AsyncSession, *, now: datetime, limit: int) -> list[Any]:
    """The live notices addressed to everyone, newest first (readable without login)."""
    rows = await session.execute(text(
        f"SELECT {COLUMNS} FROM notices n WHERE n.audience = 'all' AND {LIVE} "
        "ORDER BY n.published_at DESC, n.id DESC LIMIT :limit"), {"now": now, "limit": limit})
    return list(rows.all())


# --------------------------------------------------------------------------- the fan-out


_AUDIENCE_IDS = f"SELECT array_agg(id ORDER BY id) FROM ({AUDIENCE_HOUSEHOLDS.replace(':notice_id', '$1')}) a"


async def audience_households(session: AsyncSession, notice_id: int) -> list[int]:
    """Every open household of the notice's audience, in id order: one statement, one
    array value (a 100k audience is one value to decode, not 100k rows)."""
    from backend.db import raw_connection

    driver = await raw_connection(session)
    ids = await driver.fetchval(_AUDIENCE_IDS, notice_id)
    return list(ids or ())


async def notice_messages(runtime: Runtime, session: AsyncSession, event: Event) -> int:
    """The handler of ``notice.published`` (``notifications.notice_messages``): one NOTICE
    message per household of the audience (its bound residents' inboxes and devices),
    through ``notify_households`` (``notify_many`` with the audience query as the recipients)
    with the dedupe key ``notice:<id>``, so a replay sends nothing.
    A notice withdrawn or expired by now sends nothing. Returns what it
    wrote (the host ignores it; tests and the benchmark read it)."""
    from backend.events.service import payload_of
    from backend.notifications.kinds import MessageKind
    from backend.notifications.service import notify_households  # type: ignore[import-not-found,unused-ignore]

    published = payload_of(event, NoticePublished)
    now = runtime.now()
    row = (await session.execute(text(f"SELECT n.id, n.title, n.body FROM notices n WHERE n.id = :id AND {LIVE}"),
                                 {"id": published.notice_id, "now": now})).first()
    if row is None:
        return 0
    # The audience's households select themselves inside the writing statement (set-based:
    # a 100k audience never travels through Python).
    written: int = await notify_households(
        session, kind=MessageKind.NOTICE, households=AUDIENCE_HOUSEHOLDS, arguments={"notice_id": row.id},
        title=row.title, body=row.body[:200], data={"notice_id": row.id, "screen": "notice"},
        dedupe_key=f"notice:{row.id}", now=now,
    )
    return written


def notice_row(mapping: Mapping[str, Any] | Any) -> dict[str, Any]:
    """A row as a plain dict (what the schema reads)."""
    return dict(mapping._mapping) if hasattr(mapping, "_mapping") else dict(mapping)


__all__ = [
    "NoticeArea", "NoticeAudienceOutOfScope", "NoticeDraft", "NoticeHousehold", "NoticeStateInvalid", "ReadStats",
    "Writer", "audience_households", "create_notice", "mark_read", "notice_messages", "public_notices", "publish_due",
    "publish_due_notices", "publish_notice", "read_stats", "resident_notices", "staff_notices", "update_notice",
    "withdraw_notice",
]
