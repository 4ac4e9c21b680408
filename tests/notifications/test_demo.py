"""Notifications' demo step (backend.notifications.demo), on a copy of the small demo: two
published notices (everyone, the demo resident's district), the demo resident's inbox holds them, their last
payment and their open bills as the handlers word them, and a second run adds nothing."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.demo import RESIDENT_PHONE
from backend.domain import DemoPlan, system_principal
from backend.domains import installed
from backend.notifications.demo import demo_step
from tests import small_demo
from tests.small_demo import HOUSEHOLDS, NOW, SEED
from tests.small_demo import rows as _rows

database_url, demo = small_demo.database_url, small_demo.demo

INBOX = """SELECT m.kind, m.title, m.body, m.data, m.dedupe_key FROM messages m
           JOIN residents r ON m.recipient_kind = 'resident' AND r.id = m.recipient_id
           WHERE r.phone = :phone ORDER BY m.kind, m.dedupe_key"""


async def test_the_demo_publishes_two_notices_and_fills_the_demo_residents_inbox_once(
        demo: None, committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    notices = await _rows(committed_sessions, """
        SELECT n.id, n.title, n.audience, n.state, array(SELECT a.name FROM notice_areas na JOIN areas a ON a.id = na.area_id
        WHERE na.notice_id = n.id) FROM notices n ORDER BY n.id""")
    inbox = await _rows(committed_sessions, INBOX, phone=RESIDENT_PHONE)
    payment = await _rows(committed_sessions, """
        SELECT p.id, h.account_no FROM payments p JOIN households h ON h.id = p.household_id
        JOIN resident_households rh ON rh.household_id = h.id JOIN residents r ON r.id = rh.resident_id
        WHERE r.phone = :phone AND p.reversed_at IS NULL ORDER BY p.paid_at DESC, p.id DESC LIMIT 1""",
        phone=RESIDENT_PHONE)
    open_bills = await _rows(committed_sessions, """
        SELECT b.id FROM bills b JOIN resident_households rh ON rh.household_id = b.household_id
        JOIN residents r ON r.id = rh.resident_id WHERE r.phone = :phone AND b.status = 'open' ORDER BY b.id""",
        phone=RESIDENT_PHONE)

    (district,), = await _rows(committed_sessions, """
        SELECT d.name FROM residents r JOIN resident_households rh ON rh.resident_id = r.id
        JOIN households h ON h.id = rh.household_id JOIN areas a ON a.id = h.area_id
        JOIN areas d ON d.kind = 'district' AND starts_with(a.path, d.path) WHERE r.phone = :phone""",
        phone=RESIDENT_PHONE)
    assert [(title, audience, state) for _, title, audience, state, _ in notices] == [
        ("冬季水表防冻提示", "all", "published"), (f"{district}计划停水通知", "areas", "published")]
    assert notices[1][4] == [district]
    by_kind: dict[object, list[tuple[object, ...]]] = {}
    for row in inbox:
        by_kind.setdefault(row[0], []).append(row)
    # Both notices reach the resident's household.
    assert [(row[1], row[4]) for row in by_kind["notice"]] == sorted(
        [(title, f"notice:{notice_id}") for notice_id, title, *_ in notices], key=lambda pair: pair[1])
    (paid,) = by_kind["payment_received"]
    (payment_id, account_no), = payment
    assert (paid[1], paid[3], paid[4]) == ("缴费成功", {"screen": "payment", "id": payment_id}, f"payment:{payment_id}")
    assert str(paid[2]).startswith(f"【水务】您的户号 {account_no} 已到账 ¥")
    assert [row[4] for row in by_kind.get("bill_issued", [])] == [f"bill:{bill_id}" for (bill_id,) in open_bills]

    plan = DemoPlan(households=HOUSEHOLDS, seed=SEED, readings=True, now=NOW, timezone="Asia/Shanghai",
                    progress=lambda _: None, actor=system_principal(installed()))
    async with committed_sessions() as session, session.begin():
        await demo_step(session, plan)
    assert await _rows(committed_sessions, INBOX, phone=RESIDENT_PHONE) == inbox
    assert len(await _rows(committed_sessions, "SELECT id FROM notices")) == 2
