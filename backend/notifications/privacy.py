"""What notifications holds about a resident (``shuiwu privacy export|erase``, docs/privacy.md).

Found by phone: the resident accounts with that login phone (auth's ``resident_ids``)
own messages, devices and preferences; SMS deliveries went to the phone itself.
Erasure deletes the residents' messages, devices and preferences (notifications about
them, no record anyone must keep) and blanks the number and text of the SMS deliveries
to the phone, keeping that one was sent, when, of which kind (the household's daily cap
and the utility's SMS bill are counted from them).
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth.privacy import resident_ids, rows_of
from backend.domain import DataSubject, PersonalSection


async def export(session: AsyncSession, subject: DataSubject) -> list[PersonalSection]:
    ids = await resident_ids(session, subject.phone)
    messages = rows_of(await session.execute(text(
        "SELECT id, kind, title, body, data, created_at, read_at FROM messages "
        "WHERE recipient_kind = 'resident' AND recipient_id = ANY(CAST(:ids AS bigint[])) ORDER BY id"), {"ids": ids}))
    devices = rows_of(await session.execute(text(
        "SELECT registration_id, platform, active, registered_at FROM push_devices "
        "WHERE user_kind = 'resident' AND user_id = ANY(CAST(:ids AS bigint[])) ORDER BY id"), {"ids": ids}))
    preferences = rows_of(await session.execute(text(
        "SELECT muted_kinds, quiet_start, quiet_end, updated_at FROM notification_preferences "
        "WHERE user_kind = 'resident' AND user_id = ANY(CAST(:ids AS bigint[]))"), {"ids": ids}))
    sms = rows_of(await session.execute(text(
        "SELECT id, kind, text, phone, state, sent_at FROM sms_deliveries WHERE phone = :phone ORDER BY id"),
        {"phone": subject.phone}))
    return [
        PersonalSection("messages", "消息", messages),
        PersonalSection("push_devices", "推送设备", devices),
        PersonalSection("notification_preferences", "消息设置", preferences),
        PersonalSection("sms_deliveries", "短信通知", sms),
    ]


async def erase(session: AsyncSession, subject: DataSubject) -> dict[str, int]:
    ids = await resident_ids(session, subject.phone)
    changed: dict[str, int] = {}
    for table, column in (("messages", "recipient"), ("push_devices", "user"), ("notification_preferences", "user")):
        result = await session.execute(text(
            f"DELETE FROM {table} WHERE {column}_kind = 'resident' AND {column}_id = ANY(CAST(:ids AS bigint[]))"),
            {"ids": ids})
        if result.rowcount:  # type: ignore[attr-defined]
            changed[table] = int(result.rowcount)  # type: ignore[attr-defined]
    result = await session.execute(text(
        "UPDATE sms_deliveries SET phone = NULL, text = '(已注销)' WHERE phone = :phone"), {"phone": subject.phone})
    if result.rowcount:  # type: ignore[attr-defined]
        changed["sms_deliveries"] = int(result.rowcount)  # type: ignore[attr-defined]
    return changed
