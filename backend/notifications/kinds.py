"""The notifications domain's contract with the domains after it (DESIGN.md "Contracts"):
what a message is of (:class:`MessageKind`) and whom it is for (:class:`Recipient`).

Every resident and staff message and push is written by this domain's
``notify_many(session, *, kind, recipients, title, body, data, dedupe_key, now) -> int``
(``backend.notifications.service``); other domains only emit events, or, for a domain
later in the order (workorders), call ``notify_many`` from a handler of their own event.

A recipient is a resident, a staff user, or a **household**: a household stands for
every resident bound to it when the message is written (their inboxes and devices) and,
for the kinds whose channels include SMS, for the household's own phone when none of
those residents has an active app device (many residents never install the app).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class MessageKind(StrEnum):
    """What a message is about; each kind has its channel set and template."""

    BALANCE_ALERT = "balance_alert"        # 余额不足提醒 (account.threshold_crossed → alert)
    CLOSE_WARNING = "close_warning"        # 关阀预警 (account.threshold_crossed → close)
    ARREARS = "arrears"                    # 欠费提醒 (the scheduled job over overdue accounts)
    BILL_ISSUED = "bill_issued"            # 缴费通知 (bill.issued)
    PAYMENT_RECEIVED = "payment_received"  # 缴费成功 (payment.succeeded)
    NOTICE = "notice"                      # 公告 / 物业通知 (notice.published)
    WORKORDER_UPDATE = "workorder_update"  # 报修进度 (workorder.changed, sent by workorders)
    METER_ALARM = "meter_alarm"            # 水表异常 (alarm.opened)
    BINDING = "binding"                    # 户号绑定 (household.bound)


class RecipientKind(StrEnum):
    RESIDENT = "resident"    # residents.id
    STAFF = "staff"          # staff_users.id
    HOUSEHOLD = "household"  # households.id: its bound residents, else SMS to its phone


@dataclass(frozen=True, slots=True)
class Recipient:
    kind: RecipientKind
    id: int

    @classmethod
    def resident(cls, resident_id: int) -> Recipient:
        return cls(RecipientKind.RESIDENT, resident_id)

    @classmethod
    def staff(cls, staff_user_id: int) -> Recipient:
        return cls(RecipientKind.STAFF, staff_user_id)

    @classmethod
    def household(cls, household_id: int) -> Recipient:
        return cls(RecipientKind.HOUSEHOLD, household_id)
