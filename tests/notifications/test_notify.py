"""notify_many: household expansion, dedupe, the pushes and SMS it queues, preferences."""

from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.notifications.kinds import MessageKind, Recipient
from backend.notifications.models import DevicePlatform, UserKind
from backend.notifications.service import (
    InboxUser,
    Preferences,
    inbox_page,
    mark_read,
    notify,
    notify_many,
    register_device,
    set_preferences,
    unread_count,
    unregister_device,
)
from tests.notifications.factories import add_devices, make_home, make_residents

# 2026-12-07 12:00 in Shanghai.
NOON = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)


async def rows(session: AsyncSession, sql: str, **values: Any) -> list[Any]:
    return list((await session.execute(text(sql), values)).all())


async def test_a_household_reaches_each_bound_resident_and_a_replay_writes_nothing(session: AsyncSession) -> None:
    home = await make_home(session, residents=2)
    other = await make_home(session, residents=1)

    first = await notify_many(session, kind=MessageKind.BILL_ISSUED, recipients=[Recipient.household(home.household_id),
                              Recipient.resident(other.resident_ids[0])], title="缴费通知", body="请缴费",
                              data={"screen": "bill", "id": 1}, dedupe_key="bill:1", now=NOON)
    again = await notify_many(session, kind=MessageKind.BILL_ISSUED, recipients=[Recipient.household(home.household_id),
                              Recipient.resident(other.resident_ids[0])], title="缴费通知", body="请缴费",
                              data={"screen": "bill", "id": 1}, dedupe_key="bill:1", now=NOON)

    written = await rows(session, "SELECT recipient_kind, recipient_id, household_id, data FROM messages "
                         "WHERE dedupe_key = 'bill:1' ORDER BY recipient_id")
    assert (first, again) == (3, 0)
    assert [(row.recipient_id, row.household_id) for row in written] == sorted(
        [(home.resident_ids[0], home.household_id), (home.resident_ids[1], home.household_id),
         (other.resident_ids[0], None)])
    assert written[0].data == {"screen": "bill", "id": 1}
    events = await rows(session, "SELECT payload FROM domain_events WHERE kind = 'message.created' "
                        "AND payload->'recipient_ids' ? :r", r=f"resident:{other.resident_ids[0]}")
    assert len(events) == 1 and len(events[0].payload["message_ids"]) == 3


async def test_an_sms_kind_queues_one_sms_per_household_without_the_app_and_never_twice(session: AsyncSession) -> None:
    without_app = await make_home(session, residents=2)
    with_app = await make_home(session, residents=2)
    await add_devices(session, user_kind="resident", user_ids=[with_app.resident_ids[1]])
    nobody_bound = await make_home(session, residents=0)
    recipients = [Recipient.household(home.household_id) for home in (without_app, with_app, nobody_bound)]

    for _ in range(2):
        await notify_many(session, kind=MessageKind.BALANCE_ALERT, recipients=recipients, title="余额不足提醒",
                          body="余额不足", dedupe_key="balance:alert:9", now=NOON)
    # A kind without the SMS channel queues none.
    await notify_many(session, kind=MessageKind.PAYMENT_RECEIVED, recipients=recipients, title="缴费成功", body="到账",
                      dedupe_key="payment:9", now=NOON)

    sms = await rows(session, "SELECT household_id, kind, state, text FROM sms_deliveries WHERE household_id = ANY(:h)",
                     h=[home.household_id for home in (without_app, with_app, nobody_bound)])
    assert sorted((row.household_id, row.kind, row.state) for row in sms) == sorted(
        [(without_app.household_id, "balance_alert", "queued"), (nobody_bound.household_id, "balance_alert", "queued")])
    pushes = await rows(session, "SELECT kind FROM push_deliveries WHERE registration_ids && "
                        "(SELECT array_agg(registration_id) FROM push_devices WHERE user_id = :u)", u=with_app.resident_ids[1])
    assert sorted(row.kind for row in pushes) == ["balance_alert", "payment_received"]


async def test_pushes_are_batched_by_a_thousand_registration_ids(session: AsyncSession) -> None:
    residents = await make_residents(session, 1100)
    await add_devices(session, user_kind="resident", user_ids=residents[:400], per_user=2)
    await add_devices(session, user_kind="resident", user_ids=residents[400:], per_user=1)

    written = await notify_many(session, kind=MessageKind.NOTICE, recipients=[Recipient.resident(r) for r in residents],
                                title="停水通知", body="明日停水", data={"screen": "notice", "id": 5},
                                dedupe_key="notice:batch", now=NOON)

    batches = await rows(session, "SELECT cardinality(registration_ids) AS n, cardinality(message_ids) AS m, extras "
                         "FROM push_deliveries WHERE kind = 'notice' AND title = '停水通知' ORDER BY n DESC")
    assert written == 1100
    assert [row.n for row in batches] == [1000, 500]
    assert sum(row.m for row in batches) >= 1100 and batches[0].extras == {"screen": "notice", "id": 5}


async def test_quiet_hours_hold_a_push_until_they_end_and_a_muted_kind_does_not_push(session: AsyncSession) -> None:
    quiet, muted, plain = await make_residents(session, 3)
    await add_devices(session, user_kind="resident", user_ids=[quiet, muted, plain])
    await set_preferences(session, user=InboxUser(UserKind.resident, quiet),
                          preferences=Preferences(quiet_start=time(22, 0), quiet_end=time(7, 0)), now=NOON)
    await set_preferences(session, user=InboxUser(UserKind.resident, muted),
                          preferences=Preferences(muted_kinds=("bill_issued",)), now=NOON)
    late = datetime(2026, 12, 7, 15, 30, tzinfo=UTC)  # 23:30 in Shanghai

    await notify_many(session, kind=MessageKind.BILL_ISSUED, recipients=[Recipient.resident(r) for r in (quiet, muted, plain)],
                      title="缴费通知", body="请缴费", dedupe_key="bill:quiet", now=late)

    queued = await rows(session, "SELECT registration_ids, next_attempt_at FROM push_deliveries WHERE title = '缴费通知' "
                        "AND body = '请缴费' ORDER BY next_attempt_at")
    owners = {row.registration_id: row.user_id for row in await rows(
        session, "SELECT registration_id, user_id FROM push_devices WHERE user_id = ANY(:u)", u=[quiet, muted, plain])}
    assert [([owners[r] for r in row.registration_ids], row.next_attempt_at) for row in queued] == [
        ([plain], late), ([quiet], datetime(2026, 12, 7, 23, 0, tzinfo=UTC))]  # 07:00 Shanghai next morning
    assert await unread_count(session, user=InboxUser(UserKind.resident, muted)) == 1  # the inbox still has it


async def test_the_inbox_pages_counts_and_marks_only_the_callers_messages(session: AsyncSession) -> None:
    mine, theirs = await make_residents(session, 2)
    me, them = InboxUser(UserKind.resident, mine), InboxUser(UserKind.resident, theirs)
    for number in range(3):
        await notify(session, kind=MessageKind.NOTICE, recipient=Recipient.resident(mine), title=f"公告{number}",
                     body="正文", dedupe_key=f"n:{number}", now=NOON)
    await notify(session, kind=MessageKind.METER_ALARM, recipient=Recipient.resident(theirs), title="水表异常", body="x",
                 dedupe_key="a:1", now=NOON)
    their_id = (await rows(session, "SELECT id FROM messages WHERE recipient_id = :r", r=theirs))[0].id

    page, total = await inbox_page(session, user=me, offset=0, limit=2)
    newest = page[0]["id"]
    marked = await mark_read(session, user=me, ids=[newest, their_id], now=NOON)

    assert ([row["title"] for row in page], total) == (["公告2", "公告1"], 3)
    assert (marked, await unread_count(session, user=me), await unread_count(session, user=them)) == (1, 2, 1)
    assert (await inbox_page(session, user=me, offset=0, limit=10, unread_only=True))[1] == 2
    assert await mark_read(session, user=me, ids=None, now=NOON) == 2


async def test_re_registering_moves_a_registration_id_and_unregistering_stops_pushes(session: AsyncSession) -> None:
    first, second = await make_residents(session, 2)
    one, two = InboxUser(UserKind.resident, first), InboxUser(UserKind.resident, second)
    await register_device(session, user=one, registration_id="rid-moving", platform=DevicePlatform.android, now=NOON)
    await register_device(session, user=two, registration_id="rid-moving", platform=DevicePlatform.ios, now=NOON)

    refused = await unregister_device(session, user=one, registration_id="rid-moving")
    owner = await rows(session, "SELECT user_id, platform, active FROM push_devices WHERE registration_id = 'rid-moving'")
    assert (refused, [tuple(row) for row in owner]) == (False, [(second, "ios", True)])
    assert await unregister_device(session, user=two, registration_id="rid-moving") is True
    written = await notify(session, kind=MessageKind.NOTICE, recipient=Recipient.resident(second), title="公告x",
                           body="b", dedupe_key="n:moved", now=NOON)
    assert written == 1
    assert await rows(session, "SELECT id FROM push_deliveries WHERE title = '公告x'") == []


async def test_a_resident_bound_to_two_of_the_households_gets_one_message_and_one_push(session: AsyncSession) -> None:
    first = await make_home(session, residents=1)
    second = await make_home(session, residents=1)
    await session.execute(text("INSERT INTO resident_households (resident_id, household_id, is_owner) VALUES (:r, :h, true)"),
                          {"r": first.resident_ids[0], "h": second.household_id})
    await add_devices(session, user_kind="resident", user_ids=[first.resident_ids[0]])

    written = await notify_many(session, kind=MessageKind.NOTICE, recipients=[
        Recipient.household(second.household_id), Recipient.household(first.household_id),
        Recipient.resident(first.resident_ids[0])], title="停水通知", body="明日停水", dedupe_key="notice:two-homes",
        now=NOON)

    messages = await rows(session, "SELECT recipient_id, household_id FROM messages WHERE dedupe_key = 'notice:two-homes' "
                          "ORDER BY recipient_id")
    pushed = await rows(session, "SELECT registration_ids FROM push_deliveries WHERE message_ids && :ids",
                        ids=[message_id for (message_id,) in await rows(
                            session, "SELECT id FROM messages WHERE dedupe_key = 'notice:two-homes'")])
    assert written == 2
    assert [tuple(row) for row in messages] == [(first.resident_ids[0], min(first.household_id, second.household_id)),
                                               (second.resident_ids[0], second.household_id)]
    assert [len(row.registration_ids) for row in pushed] == [1]
