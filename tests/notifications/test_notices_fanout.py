"""The fan-out of ``notice.published`` (``notifications.notice_messages``): one NOTICE
message set for the audience's households through ``notify_many``, nothing again on a
replay (dedupe key ``notice:<id>``), nothing for a notice withdrawn by then.

Needs the notifications core (``notify_many``); skipped on a branch without it."""

from __future__ import annotations

from datetime import UTC, datetime

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
