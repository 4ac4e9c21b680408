"""Notifications' demo step (``shuiwu demo load``): two published notices (公告), one to
every household and one to the district of the demo resident's household (a planned
interruption of supply), and an inbox for the demo's residents (the households
with a bound resident: ``backend.demo.RESIDENT_PHONE``'s) with those notices, their last
payment (缴费成功) and their open bills (缴费通知).

The messages are written as the handlers would write them, with the same dedupe keys
(``notice:<id>``, ``payment:<id>``, ``bill:<id>``): a second load writes nothing, and the
``notice.published`` handler run later by ``demo run``'s worker adds the notices to the
other households' inboxes without a duplicate for the demo's residents. A few
statements: the load's time does not grow with the households.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.domain import DemoPlan
from backend.events.service import Event
from backend.notifications import notices, rules
from backend.notifications.domain import RULES
from backend.notifications.kinds import MessageKind, Recipient
from backend.notifications.notices_models import NoticeAudience
from backend.notifications.service import notify_many

PUBLISHER = "客服中心"
_EVERYONE = ("冬季水表防冻提示",
             "近期气温骤降, 请对户外及楼道内的水表、水管做好包扎保温; 长期无人居住请关闭表前阀并放空管内存水。"
             "如水表冻裂漏水, 请在 App 在线报修或致电客服。")
_DISTRICT = ("{district}计划停水通知",
             "因主管网检修, {district}将于本周六 22:00 至次日 06:00 停止供水, 恢复供水初期水质可能浑浊, 请放水片刻后再使用。"
             "请提前做好储水准备, 给您带来不便敬请谅解。")


async def _published_notice(session: AsyncSession, title: str, body: str, area_id: int | None, now: datetime) -> int:
    """The notice titled ``title``, created and published at its first load."""
    found = (await session.execute(text("SELECT id FROM notices WHERE title = :t ORDER BY id LIMIT 1"),
                                   {"t": title})).scalar_one_or_none()
    if found is not None:
        return int(found)
    writer = notices.Writer(name=PUBLISHER, scope_patterns=None)
    draft = notices.NoticeDraft(title=title, body=body,
                                audience=NoticeAudience.areas if area_id is not None else NoticeAudience.all,
                                area_ids=(area_id,) if area_id is not None else (), expires_at=now + timedelta(days=30))
    notice = await notices.create_notice(session, draft=draft, writer=writer, files=None, now=now)
    assert notice.id is not None
    await notices.publish_notice(session, notice_id=notice.id, at=None, writer=writer, now=now)
    return notice.id


def _event(kind: str, payload: dict[str, Any], now: datetime) -> Event:
    """The event a rule's recipients function reads (the demo's history emitted none)."""
    return Event(id=0, kind=kind, key=None, payload=payload, created_at=now)


async def _by_rule(session: AsyncSession, name: str, event: Event, now: datetime, tz: str) -> None:
    rule = next(rule for rule in RULES if rule.name == name)
    recipients = {"payment_received": rules.payment_recipients, "bill_issued": rules.bill_recipients}[name]
    for item in await recipients(session, event, now):
        await notify_many(session, kind=rule.kind, recipients=[item.recipient], title=rules.render(rule.title, item.values),
                          body=rules.render(rule.body, item.values), data=item.data, dedupe_key=item.dedupe_key,
                          now=now, timezone=tz)


async def demo_step(session: AsyncSession, plan: DemoPlan) -> None:
    plan.progress("公告与住户消息")
    now = plan.now.astimezone(UTC)
    homes = [int(row[0]) for row in await session.execute(text(
        "SELECT DISTINCT household_id FROM resident_households ORDER BY household_id"))]
    everyone = await _published_notice(session, *_EVERYONE, None, now - timedelta(days=2))
    # The district the demo resident lives in (城东片区 when nobody is bound).
    district = (await session.execute(text(
        "SELECT id, name FROM (SELECT 0 AS pick, d.id, d.name FROM households h JOIN areas a ON a.id = h.area_id"
        " JOIN areas d ON d.kind = 'district' AND starts_with(a.path, d.path) WHERE h.id = :h"
        " UNION ALL SELECT 1, id, name FROM areas WHERE id = :east) c ORDER BY pick LIMIT 1"),
        {"h": homes[0] if homes else 0, "east": plan.areas.get("east", 0)})).first()
    local = None
    if district is not None:
        title, body = (part.format(district=district.name) for part in _DISTRICT)
        local = await _published_notice(session, title, body, district.id, now - timedelta(hours=3))
    if not homes:
        return
    await session.flush()  # the audience rows: read below through the raw connection
    for notice_id in (everyone, local):
        if notice_id is None:
            continue
        row = (await session.execute(text("SELECT title, body, published_at FROM notices WHERE id = :id"),
                                     {"id": notice_id})).one()
        audience = set(await notices.audience_households(session, notice_id))
        await notify_many(session, kind=MessageKind.NOTICE,
                          recipients=[Recipient.household(h) for h in homes if h in audience], title=row.title,
                          body=row.body[:200], data={"notice_id": notice_id, "screen": "notice"},
                          dedupe_key=f"notice:{notice_id}", now=row.published_at, timezone=plan.timezone)
    # Each home's last payment, with the balance its ledger entry left.
    payments = await session.execute(text(
        "SELECT DISTINCT ON (p.household_id) p.id, e.balance_after_fen, p.paid_at FROM payments p"
        " JOIN ledger_entries e ON e.id = p.entry_id"
        " WHERE p.household_id = ANY(:homes) AND p.reversed_at IS NULL ORDER BY p.household_id, p.paid_at DESC, p.id DESC"),
        {"homes": homes})
    for payment in payments.all():
        await _by_rule(session, "payment_received", _event(
            "payment.succeeded", {"payment_id": payment.id, "balance_after_fen": payment.balance_after_fen}, now),
            payment.paid_at, plan.timezone)
    bills = [int(row[0]) for row in await session.execute(text(
        "SELECT id FROM bills WHERE household_id = ANY(:homes) AND status = 'open' ORDER BY id"), {"homes": homes})]
    if bills:
        await _by_rule(session, "bill_issued", _event("bill.issued", {"bill_ids": bills}, now), now, plan.timezone)
