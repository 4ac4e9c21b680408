"""欠费提醒: the daily job over overdue postpaid accounts (docs/notifications.md).

Overdue is billing's definition (``backend.billing.late_fees.overdue_account_ids``: an
open postpaid account with an open, overdue, unwaived bill on the utility's today). Each
such household is reminded with the amount it owes on overdue bills now, at most once
per ``SHUIWU_NOTIFICATIONS_ARREARS_INTERVAL_DAYS`` (the dedupe key names the interval:
``arrears:<account>:<n>`` with n the number of whole intervals since 1970-01-01, so a
rerun on the same day, or any day of the same interval, sends nothing more). The SMS
channel applies (households without the app).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from backend.billing.late_fees import overdue_account_ids
from backend.db import transaction
from backend.money import fen_to_yuan
from backend.notifications.kinds import MessageKind, Recipient
from backend.notifications.service import Draft, write_messages
from backend.notifications.settings import NotificationsSettings

if TYPE_CHECKING:
    from backend.runtime import Runtime

TITLE = "欠费提醒"
BODY = "【水务】您的户号 {account_no} 已欠费 ¥{owed}, 最早一期账单已于 {due_date} 到期, 请尽快缴纳, 以免产生更多滞纳金。"
# Accounts per transaction.
BATCH = 5000


async def remind_arrears(runtime: Runtime, payload: Mapping[str, Any]) -> int:
    """The scheduled job: remind every overdue account once per interval; return how many
    messages were written."""
    settings: NotificationsSettings = runtime.settings_group("notifications")
    now = runtime.now()
    today = now.astimezone(runtime.tz).date()
    interval = (today - date(1970, 1, 1)).days // settings.arrears_interval_days
    async with transaction(runtime.sessions) as session:
        ids = await overdue_account_ids(session, on=today)
    written = 0
    for start in range(0, len(ids), BATCH):
        async with transaction(runtime.sessions) as session:
            rows = await session.execute(text(
                """
                SELECT b.account_id, b.household_id, h.account_no,
                       sum(b.amount_fen - b.principal_paid_fen) AS owed_fen, min(b.due_date) AS due_date
                FROM bills b JOIN households h ON h.id = b.household_id
                WHERE b.account_id = ANY(CAST(:ids AS bigint[])) AND b.status = 'open' AND b.due_date < :today
                GROUP BY b.account_id, b.household_id, h.account_no ORDER BY b.account_id
                """), {"ids": ids[start:start + BATCH], "today": today})
            drafts = [Draft(Recipient.household(row.household_id), TITLE,
                            BODY.format(account_no=row.account_no, owed=fen_to_yuan(int(row.owed_fen)),
                                        due_date=f"{row.due_date.year}年{row.due_date.month}月{row.due_date.day}日"),
                            {"screen": "bills", "id": row.household_id}, f"arrears:{row.account_id}:{interval}")
                      for row in rows]
            result = await write_messages(session, kind=MessageKind.ARREARS, drafts=drafts, now=now,
                                          timezone=runtime.timezone)
            written += len(result.message_ids)
    return written
