"""The fan-out of ``notice.published`` (``notifications.notice_messages``): one NOTICE
message set for the audience's households through ``notify_many``, nothing again on a
replay (dedupe key ``notice:<id>``), nothing for a notice withdrawn by then; withdrawing
a notice takes its messages out of the inboxes and fails its pushes not yet sent.

Needs the notifications core (``notify_many``); skipped on a branch without it."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.auth.system import system_actor
from backend.events.service import Event
from backend.notifications import notices
from backend.notifications.notices_models import NoticeAudience
from backend.runtime import Runtime
from backend.settings import Settings
from tests.notifications.test_notices import NOW, draft, make_town, published, scope, writer


def runtime() -> Runtime:
    return Runtime(settings=Settings(secret_key="fanout-test-secret-of-at-least-32-chars"),
                   sessions=async_sessionmaker(), actor=system_actor(frozenset()), clock=lambda: NOW)


def event_of(notice_id: int) -> Event:
    return Event(id=1, kind="notice.published", key=f"notice:{notice_id}", payload={"notice_id": notice_id},
                 created_at=datetime.now(UTC))


async def test_the_handler_messages_the_audience_once_and_not_when_withdrawn(session: AsyncSession) -> None:
    town = await make_town(session)
    east = scope(town.tree.east)
    notice = await published(session, draft(NoticeAudience.areas, areas=[town.tree.east]), east)
    gone = await published(session, draft(NoticeAudience.areas, areas=[town.tree.east_community]), east)
    await notices.withdraw_notice(session, notice_id=gone, writer=writer(east), now=NOW)

    first = await notices.notice_messages(runtime(), session, event_of(notice))
    replay = await notices.notice_messages(runtime(), session, event_of(notice))
    withdrawn = await notices.notice_messages(runtime(), session, event_of(gone))

    # Two households in 城东 (three residents bound): something written, once.
    assert first > 0
    assert (replay, withdrawn) == (0, 0)


async def _notice_messages(session: AsyncSession, notice_id: int) -> list[int]:
    return list((await session.execute(text(
        "SELECT id FROM messages WHERE kind = 'notice' AND (data->>'notice_id')::bigint = :id ORDER BY id"),
        {"id": notice_id})).scalars())


async def test_withdrawing_a_notice_takes_its_messages_out_of_the_inboxes(session: AsyncSession) -> None:
    town = await make_town(session)
    east = scope(town.tree.east)
    gone = await published(session, draft(NoticeAudience.areas, areas=[town.tree.east]), east)
    stays = await published(session, draft(NoticeAudience.areas, areas=[town.tree.east], title="另一则"), east)
    await notices.notice_messages(runtime(), session, event_of(gone))
    await notices.notice_messages(runtime(), session, event_of(stays))
    messages, others = await _notice_messages(session, gone), await _notice_messages(session, stays)
    pushes = {}
    for state, ids in (("queued", messages), ("sent", messages), ("queued", others)):
        pushes[(state, ids == messages)] = (await session.execute(text(
            "INSERT INTO push_deliveries (kind, title, body, registration_ids, message_ids, state, attempts,"
            " next_attempt_at, created_at) VALUES ('notice', '公告', '停水通知', ARRAY['r1'], :ids, :state, 0,"
            " now(), now()) RETURNING id"), {"ids": ids, "state": state})).scalar_one()
    assert messages and others

    await notices.withdraw_notice(session, notice_id=gone, writer=writer(east), now=NOW)

    assert (await _notice_messages(session, gone), await _notice_messages(session, stays)) == ([], others)
    states = dict((await session.execute(text("SELECT id, state FROM push_deliveries WHERE id = ANY(:ids)"),
                                         {"ids": list(pushes.values())})).all())
    # Not yet sent: it will not be; already sent, or another notice's: as they were.
    assert [states[pushes[key]] for key in (("queued", True), ("sent", True), ("queued", False))] == [
        "failed", "sent", "queued"]
