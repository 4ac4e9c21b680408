"""Notices (公告): each audience reaches exactly its residents, an audience outside the
writer's scope is refused with nothing written, the job publishes scheduled notices when
due, expiry and withdrawal hide, read receipts are counted against the audience, and the
fan-out handler reaches the audience's households once (when the notifications core is
present)."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.models import Area, Household
from backend.auth.scope import require_area_paths
from backend.clock import utcnow
from backend.errors import DomainError, ErrorCode
from backend.notifications import notices
from backend.notifications.notices_models import NoticeAudience, NoticeState
from tests.factories import AreaTree, make_area_tree, make_household

NOW = utcnow().replace(microsecond=0)
_phones = itertools.count(13700000000)


async def make_resident(session: AsyncSession, *households: Household) -> int:
    resident_id: int = (await session.execute(
        text("INSERT INTO residents (phone) VALUES (:phone) RETURNING id"), {"phone": str(next(_phones))})).scalar_one()
    for household in households:
        await session.execute(text("INSERT INTO resident_households (resident_id, household_id) VALUES (:r, :h)"),
                              {"r": resident_id, "h": household.id})
    return resident_id


def scope(*areas: Area) -> list[str]:
    return [area.path + "%" for area in areas]


async def whole_tree(session: AsyncSession) -> list[str]:
    return [row.path + "%" for row in await session.execute(text("SELECT path FROM areas WHERE parent_id IS NULL"))]


def writer(patterns: list[str] | None, name: str = "王主任") -> notices.Writer:
    return notices.Writer(name=name, scope_patterns=patterns, owner_kind="staff", owner_id=1)


def draft(audience: NoticeAudience, *, areas: list[Any] = (), households: list[Household] = (),  # type: ignore[assignment]
          title: str = "停水通知", expires_in: timedelta | None = None) -> notices.NoticeDraft:
    return notices.NoticeDraft(
        title=title, body="因管网维修,\n明日 9:00–17:00 停水。<b>请储水</b>", audience=audience,
        area_ids=[area.id for area in areas], household_ids=[household.id for household in households],  # type: ignore[misc]
        expires_at=NOW + expires_in if expires_in is not None else None)


async def published(session: AsyncSession, notice_draft: notices.NoticeDraft, patterns: list[str] | None) -> int:
    notice = await notices.create_notice(session, draft=notice_draft, writer=writer(patterns), files=None, now=NOW)
    assert notice.id is not None
    await notices.publish_notice(session, notice_id=notice.id, at=None, writer=writer(patterns), now=NOW)
    return notice.id


async def seen_by(session: AsyncSession, resident: int, households: list[Household], *, now: Any = NOW) -> list[int]:
    rows, total = await notices.resident_notices(session, resident_id=resident,
                                                 household_ids=[h.id for h in households], now=now)  # type: ignore[misc]
    assert total == len(rows)
    return [row.id for row in rows]


async def events(session: AsyncSession) -> list[int]:
    rows = await session.execute(text("SELECT payload FROM domain_events WHERE kind = 'notice.published' ORDER BY id"))
    return [row.payload["notice_id"] for row in rows]


async def count_notices(session: AsyncSession) -> int:
    return int((await session.execute(text(
        "SELECT (SELECT count(*) FROM notices) + (SELECT count(*) FROM notice_areas) "
        "+ (SELECT count(*) FROM notice_households)"))).scalar_one())


class Town:
    def __init__(self, tree: AreaTree, east_home: Household, east_flat: Household, west_home: Household,
                 residents: dict[str, int]) -> None:
        self.tree, self.east_home, self.east_flat, self.west_home, self.residents = (
            tree, east_home, east_flat, west_home, residents)


async def make_town(session: AsyncSession) -> Town:
    """Households in 翠湖小区 (east community), directly in 城东 and in 西山名苑 (west), a
    resident bound to each (two in 翠湖)."""
    tree = await make_area_tree(session)
    east_home = await make_household(session, area=tree.east_community)
    east_flat = await make_household(session, area=tree.east)
    west_home = await make_household(session, area=tree.west_community)
    residents = {
        "east": await make_resident(session, east_home), "east_too": await make_resident(session, east_home),
        "east_flat": await make_resident(session, east_flat), "west": await make_resident(session, west_home),
    }
    return Town(tree, east_home, east_flat, west_home, residents)


# --------------------------------------------------------------------------- audiences


async def test_each_audience_reaches_exactly_its_residents(session: AsyncSession) -> None:
    town = await make_town(session)
    tree = town.tree
    before = await events(session)
    everyone = await published(session, draft(NoticeAudience.all), await whole_tree(session))
    community = await published(session, draft(NoticeAudience.areas, areas=[tree.east_community]), scope(tree.east))
    district = await published(session, draft(NoticeAudience.areas, areas=[tree.east]), scope(tree.east))
    one_home = await published(session, draft(NoticeAudience.households, households=[town.west_home]), scope(tree.west))

    # Each resident: addressed ones only (area subtree by path prefix), newest first.
    assert set(await seen_by(session, town.residents["east"], [town.east_home])) >= {everyone, community, district}
    assert one_home not in await seen_by(session, town.residents["east"], [town.east_home])
    flat = await seen_by(session, town.residents["east_flat"], [town.east_flat])
    assert district in flat and community not in flat and one_home not in flat
    west = await seen_by(session, town.residents["west"], [town.west_home])
    assert everyone in west and one_home in west and community not in west and district not in west
    # The fan-out's set: computed per audience.
    assert await notices.audience_households(session, community) == [town.east_home.id]
    assert await notices.audience_households(session, district) == sorted([town.east_home.id, town.east_flat.id])  # type: ignore[type-var]
    assert await notices.audience_households(session, one_home) == [town.west_home.id]
    # Nested areas (the district and its community): each household once.
    nested = await published(session, draft(NoticeAudience.areas, areas=[tree.east, tree.east_community]),
                             scope(tree.east))
    assert await notices.audience_households(session, nested) == sorted([town.east_home.id, town.east_flat.id])  # type: ignore[type-var]
    assert {town.east_home.id, town.east_flat.id, town.west_home.id} <= set(
        await notices.audience_households(session, everyone))
    # One notice.published per notice, naming it.
    assert (await events(session))[len(before):] == [everyone, community, district, one_home, nested]
    # Staff see what lies in their scope: the west manager none of the east ones, nor the one to all.
    rows, total = await notices.staff_notices(session, scope_patterns=scope(tree.west))
    assert one_home in {row.id for row in rows} and not {everyone, community, district} & {row.id for row in rows}
    assert total >= 1
    # The body is kept as written (plain text; no reader interprets it).
    row = await notices.staff_notice(session, notice_id=community, scope_patterns=scope(tree.east))
    assert row.body == "因管网维修,\n明日 9:00–17:00 停水。<b>请储水</b>" and row.state == "published"


async def test_an_audience_outside_the_writers_scope_is_refused_and_nothing_is_written(session: AsyncSession) -> None:
    town = await make_town(session)
    tree = town.tree
    east = scope(tree.east)
    before, events_before = await count_notices(session), await events(session)

    for attempt, field in (
        (draft(NoticeAudience.all), "audience"),  # everyone needs whole-tree scope
        (draft(NoticeAudience.areas, areas=[tree.east_community, tree.west]), "areaIds"),
        (draft(NoticeAudience.areas, areas=[tree.company]), "areaIds"),  # above the scope
        (draft(NoticeAudience.households, households=[town.east_home, town.west_home]), "householdIds"),
    ):
        with pytest.raises(DomainError) as refused:
            await notices.create_notice(session, draft=attempt, writer=writer(east), files=None, now=NOW)
        assert (refused.value.code, refused.value.field) == (ErrorCode.NOTICE_AUDIENCE_OUT_OF_SCOPE, field)
    # An unknown household is refused the same way (its existence is not told).
    ghost = notices.NoticeDraft(title="x", body="y", audience=NoticeAudience.households, household_ids=[10**12])
    with pytest.raises(DomainError) as unknown:
        await notices.create_notice(session, draft=ghost, writer=writer(east), files=None, now=NOW)
    assert unknown.value.code == ErrorCode.NOTICE_AUDIENCE_OUT_OF_SCOPE
    # Bad text: blank, too long, control characters.
    for title, body in (("  ", "x"), ("x" * 101, "x"), ("x", "a\x00b"), ("标题\n换行", "x")):
        with pytest.raises(DomainError) as bad:
            await notices.create_notice(session, draft=notices.NoticeDraft(
                title=title, body=body, audience=NoticeAudience.areas, area_ids=[tree.east.id]),  # type: ignore[list-item]
                writer=writer(east), files=None, now=NOW)
        assert bad.value.code == ErrorCode.INVALID
    assert (await count_notices(session), await events(session)) == (before, events_before)
    # In scope, it is written.
    await notices.create_notice(session, draft=draft(NoticeAudience.areas, areas=[tree.east_community]),
                                writer=writer(east), files=None, now=NOW)
    assert await count_notices(session) == before + 2


async def test_windows_line_breaks_in_a_body_are_line_breaks_and_a_title_keeps_none(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    east = scope(tree.east)

    def pasted(title: str, body: str) -> notices.NoticeDraft:
        return notices.NoticeDraft(title=title, body=body, audience=NoticeAudience.areas,
                                   area_ids=[tree.east.id])  # type: ignore[list-item]

    notice = await notices.create_notice(session, draft=pasted("停水通知", "停水通知\r\n明日 8:00-12:00 停水\r老式换行\r\n"),
                                         writer=writer(east), files=None, now=NOW)
    with pytest.raises(DomainError) as title:
        await notices.create_notice(session, draft=pasted("停水\r\n通知", "x"), writer=writer(east), files=None, now=NOW)

    assert notice.body == "停水通知\n明日 8:00-12:00 停水\n老式换行"
    assert (title.value.code, title.value.field) == (ErrorCode.INVALID, "title")


async def test_only_a_draft_is_edited_and_a_published_one_is_withdrawn_for_good(session: AsyncSession) -> None:
    town = await make_town(session)
    east = scope(town.tree.east)
    notice = await notices.create_notice(session, draft=draft(NoticeAudience.areas, areas=[town.tree.east]),
                                         writer=writer(east), files=None, now=NOW)
    assert notice.id is not None
    edited = await notices.update_notice(session, notice_id=notice.id, writer=writer(east), files=None, now=NOW,
                                         draft=draft(NoticeAudience.households, households=[town.east_flat], title="改"))
    assert (edited.title, await notices.audience_of(session, notice.id)) == ("改", ([], [town.east_flat.id]))
    await notices.publish_notice(session, notice_id=notice.id, at=None, writer=writer(east), now=NOW)
    resident = town.residents["east_flat"]
    assert notice.id in await seen_by(session, resident, [town.east_flat])

    with pytest.raises(DomainError) as not_a_draft:
        await notices.update_notice(session, notice_id=notice.id, draft=draft(NoticeAudience.areas, areas=[town.tree.east]),
                                    writer=writer(east), files=None, now=NOW)
    assert not_a_draft.value.code == ErrorCode.NOTICE_STATE_INVALID
    # Outside the scope the notice is not found at all.
    with pytest.raises(DomainError) as hidden:
        await notices.withdraw_notice(session, notice_id=notice.id, writer=writer(scope(town.tree.west)), now=NOW)
    assert hidden.value.code == ErrorCode.NOT_FOUND
    withdrawn = await notices.withdraw_notice(session, notice_id=notice.id, writer=writer(east, "李四"), now=NOW)
    assert (withdrawn.state, withdrawn.withdrawn_by) == (NoticeState.withdrawn, "李四")
    assert notice.id not in await seen_by(session, resident, [town.east_flat])
    with pytest.raises(DomainError) as again:
        await notices.publish_notice(session, notice_id=notice.id, at=None, writer=writer(east), now=NOW)
    assert again.value.code == ErrorCode.NOTICE_STATE_INVALID


# --------------------------------------------------------------------------- time: scheduling and expiry


async def test_a_scheduled_notice_is_published_by_the_job_when_due(session: AsyncSession) -> None:
    town = await make_town(session)
    east = scope(town.tree.east)
    notice = await notices.create_notice(session, draft=draft(NoticeAudience.areas, areas=[town.tree.east]),
                                         writer=writer(east), files=None, now=NOW)
    assert notice.id is not None
    at = NOW + timedelta(hours=1)
    before = await events(session)
    scheduled = await notices.publish_notice(session, notice_id=notice.id, at=at, writer=writer(east), now=NOW)
    resident = town.residents["east"]

    assert (scheduled.state, scheduled.publish_at, scheduled.published_at) == (NoticeState.scheduled, at, None)
    assert await events(session) == before  # not visible yet: no event
    assert notice.id not in await seen_by(session, resident, [town.east_home], now=at + timedelta(minutes=5))
    assert notice.id not in await notices.publish_due(session, now=at - timedelta(minutes=1))
    due = await notices.publish_due(session, now=at + timedelta(minutes=1))

    assert notice.id in due
    assert (await events(session))[len(before):].count(notice.id) == 1
    row = await notices.staff_notice(session, notice_id=notice.id, scope_patterns=east)
    assert (row.state, row.published_at, row.published_by) == ("published", at, "王主任")
    assert notice.id in await seen_by(session, resident, [town.east_home], now=at + timedelta(minutes=2))
    assert notice.id not in await notices.publish_due(session, now=at + timedelta(minutes=2))  # once


async def test_expiry_hides_a_notice_from_residents_and_the_public(session: AsyncSession) -> None:
    town = await make_town(session)
    notice = await published(session, draft(NoticeAudience.all, expires_in=timedelta(days=1)), await whole_tree(session))
    later = NOW + timedelta(days=2)

    assert notice in await seen_by(session, town.residents["west"], [town.west_home])
    assert notice in [row.id for row in await notices.public_notices(session, now=NOW, limit=50)]
    assert notice not in await seen_by(session, town.residents["west"], [town.west_home], now=later)
    assert notice not in [row.id for row in await notices.public_notices(session, now=later, limit=50)]
    # Only audience-all notices are public.
    area_notice = await published(session, draft(NoticeAudience.areas, areas=[town.tree.west]), scope(town.tree.west))
    assert area_notice not in [row.id for row in await notices.public_notices(session, now=NOW, limit=50)]


# --------------------------------------------------------------------------- read receipts


async def test_read_receipts_are_one_per_resident_and_counted_against_the_audience(session: AsyncSession) -> None:
    town = await make_town(session)
    east = scope(town.tree.east)
    first = await published(session, draft(NoticeAudience.areas, areas=[town.tree.east_community], title="一"), east)
    second = await published(session, draft(NoticeAudience.areas, areas=[town.tree.east], title="二"), east)
    reader, other = town.residents["east"], town.residents["east_too"]

    # Unread first, then newest (ids grow with publication here).
    assert (await seen_by(session, reader, [town.east_home]))[:2] == [second, first]
    read = await notices.mark_read(session, notice_id=first, resident_id=reader, household_ids=[town.east_home.id],  # type: ignore[list-item]
                                   now=NOW)
    again = await notices.mark_read(session, notice_id=first, resident_id=reader, household_ids=[town.east_home.id],  # type: ignore[list-item]
                                    now=NOW + timedelta(hours=1))
    assert read.read_at == again.read_at == NOW  # the first read stands
    assert (await seen_by(session, reader, [town.east_home]))[:2] == [second, first]
    await notices.mark_read(session, notice_id=second, resident_id=other, household_ids=[town.east_home.id],  # type: ignore[list-item]
                            now=NOW)

    assert await notices.read_stats(session, notice_id=first) == notices.ReadStats(readers=1, audience=2)
    assert await notices.read_stats(session, notice_id=second) == notices.ReadStats(readers=1, audience=3)
    # A notice not addressed to the resident cannot be marked read (nor seen).
    with pytest.raises(DomainError) as elsewhere:
        await notices.mark_read(session, notice_id=first, resident_id=town.residents["west"],
                                household_ids=[town.west_home.id], now=NOW)  # type: ignore[list-item]
    assert elsewhere.value.code == ErrorCode.NOT_FOUND
    unread, _ = await notices.resident_notices(session, resident_id=reader, household_ids=[town.east_home.id],  # type: ignore[list-item]
                                               now=NOW, unread_only=True)
    assert first not in [row.id for row in unread] and second in [row.id for row in unread]


async def test_areas_are_checked_against_the_tree(session: AsyncSession) -> None:
    town = await make_town(session)
    paths = await require_area_paths(session, [town.tree.east.id])  # type: ignore[list-item]
    assert paths == {town.tree.east.id: town.tree.east.path}
    with pytest.raises(DomainError) as unknown:
        await notices.create_notice(session, draft=notices.NoticeDraft(
            title="x", body="y", audience=NoticeAudience.areas, area_ids=[10**12]), writer=writer(None), files=None,
            now=NOW)
    assert unknown.value.code == ErrorCode.UNKNOWN_AREA
