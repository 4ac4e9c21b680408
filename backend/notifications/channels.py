"""Each message kind's channels (docs/notifications.md).

Every kind goes to the inbox. ``push``: to the recipient's active app devices (JPush),
unless their preferences mute the kind. ``sms``: to a household's registered phone when
none of the residents bound to it has an active app device — only for messages
addressed to a household, and at most the household's daily cap a day.
"""

from __future__ import annotations

from enum import StrEnum

from backend.notifications.kinds import MessageKind


class Channel(StrEnum):
    inbox = "inbox"
    push = "push"
    sms = "sms"


_ALL = frozenset({Channel.inbox, Channel.push})
_WITH_SMS = frozenset({Channel.inbox, Channel.push, Channel.sms})

CHANNELS: dict[MessageKind, frozenset[Channel]] = {
    MessageKind.BALANCE_ALERT: _WITH_SMS,
    MessageKind.CLOSE_WARNING: _WITH_SMS,
    MessageKind.ARREARS: _WITH_SMS,
    MessageKind.BILL_ISSUED: _ALL,
    MessageKind.PAYMENT_RECEIVED: _ALL,
    MessageKind.NOTICE: _ALL,
    MessageKind.WORKORDER_UPDATE: _ALL,
    MessageKind.METER_ALARM: _ALL,
    MessageKind.BINDING: _ALL,
}

# What the kinds are called on screens and in the preferences form.
TITLES: dict[MessageKind, str] = {
    MessageKind.BALANCE_ALERT: "余额不足提醒",
    MessageKind.CLOSE_WARNING: "关阀预警",
    MessageKind.ARREARS: "欠费提醒",
    MessageKind.BILL_ISSUED: "缴费通知",
    MessageKind.PAYMENT_RECEIVED: "缴费成功",
    MessageKind.NOTICE: "公告",
    MessageKind.WORKORDER_UPDATE: "报修进度",
    MessageKind.METER_ALARM: "水表异常",
    MessageKind.BINDING: "户号绑定",
}


def channels_of(kind: str) -> frozenset[Channel]:
    """The channels of ``kind`` (a kind a later domain adds without declaring: inbox and push)."""
    try:
        return CHANNELS[MessageKind(kind)]
    except ValueError:
        return _ALL
