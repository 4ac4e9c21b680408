"""Notifications' declaration (消息): every resident and staff message and push (issue 19).

It comes after payments in the domain order: it consumes billing's, payments',
alarms' and auth's events (``MessageRule`` s below) and owns ``message.created``. A
later domain adds a message kind by declaring its own ``MessageRule`` s (event, kind,
recipients function, template) in its ``Domain.messages``; this domain's
``message_sender`` runs them. Workorders, after it, may call ``notify_many`` from its
own handlers instead. Notices (公告 / 物业通知: ``notices*.py``) are published here too and
fan out through ``notify_many``. See docs/notifications.md.
"""

from __future__ import annotations

from backend.auth.menus import Menu, Operation
from backend.auth.menus import permission as _p
from backend.domain import Domain, Gateway, Job, MessageRule, PersonalData
from backend.events.service import EFFECT_HORIZON, Handler
from backend.notifications.settings import JPushSettings, NotificationsSettings

_R = "backend.notifications.rules:"

RULES: tuple[MessageRule, ...] = (
    MessageRule("balance_alert", "account.threshold_crossed", "balance_alert", _R + "threshold_alert_recipients",
                "余额不足提醒",
                "【水务】您的户号 {account_no} 余额 ¥{balance}, 已低于提醒金额 ¥{alert_threshold}, 请及时充值。"),
    MessageRule("close_warning", "account.threshold_crossed", "close_warning", _R + "threshold_close_recipients",
                "关阀预警",
                "【水务】您的户号 {account_no} 余额 ¥{balance}, 已低于关阀金额 ¥{close_threshold}, "
                "水表可能关阀停水, 请尽快充值。"),
    MessageRule("payment_received", "payment.succeeded", "payment_received", _R + "payment_recipients", "缴费成功",
                "【水务】您的户号 {account_no} 已到账 ¥{amount}, 当前余额 ¥{balance}。感谢您的缴费。"),
    MessageRule("bill_issued", "bill.issued", "bill_issued", _R + "bill_recipients", "缴费通知",
                "【水务】您的户号 {account_no} {period}水费 ¥{amount} 已出账, 请于 {due_date} 前缴纳, 逾期将产生滞纳金。"),
    MessageRule("meter_alarm", "alarm.opened", "meter_alarm", _R + "alarm_recipients", "水表异常",
                "【水务】您的户号 {account_no} 的水表 {meter_code} 出现异常: {alarm}。如有疑问请联系客服或在线报修。"),
    MessageRule("binding", "household.bound", "binding", _R + "binding_recipients", "户号绑定",
                "【水务】手机尾号 {phone_tail} 的用户对户号 {account_no} {action}。如非本人操作, 请联系客服。"),
)

DOMAIN = Domain(
    name="notifications",
    title="消息与公告",
    models=("backend.notifications.models", "backend.notifications.notices_models"),
    schema="backend.notifications.schema",
    menus=(
        Menu("messages", "消息管理", "Messages", (
            _p("messages:read", "查看推送与短信发送记录", "View push and SMS delivery records"),
        )),
        Menu("notices", "公告管理", "Notices", (
            _p("notices:read", "查看公告", "View notices"),
            _p("notices:publish", "编辑/发布/撤回公告", "Write, publish and withdraw notices"),
        ), ("staff_web",)),
    ),
    demo_grants={"repair": frozenset({"notices:read"})},
    operations=(
        Operation("markMessagesRead", "标记消息已读", "Mark messages read", "messages"),
        Operation("registerDevice", "登记推送设备", "Register push device", "messages"),
        Operation("unregisterDevice", "注销推送设备", "Unregister push device", "messages"),
        Operation("setNotificationPreferences", "消息设置", "Set notification preferences", "messages"),
        Operation("createNotice", "新建公告", "Create notice", "notices"),
        Operation("updateNotice", "修改公告", "Edit notice", "notices"),
        Operation("publishNotice", "发布公告", "Publish notice", "notices"),
        Operation("withdrawNotice", "撤回公告", "Withdraw notice", "notices"),
        Operation("markNoticeRead", "阅读公告", "Read notice", "notices"),
    ),
    events=("backend.notifications.events",),
    handlers=(
        Handler("message.created", "notifications.wake_senders", "backend.notifications.delivery:wake_senders",
                horizon=EFFECT_HORIZON),
        Handler("notice.published", "notifications.notice_messages", "backend.notifications.notices:notice_messages",
                horizon=EFFECT_HORIZON),
    ),
    messages=RULES,
    message_sender=_R + "send_rule",
    jobs=(
        Job("notifications.push", "backend.notifications.delivery:send_pushes", cron="* * * * *",
            description="Send the due JPush deliveries (batches of ≤1000 devices), retrying with backoff"),
        Job("notifications.sms", "backend.notifications.delivery:send_sms", cron="* * * * *",
            description="Send the due notification SMS to households without the app, within the daily cap"),
        # 02:00 UTC is 10:00 in Asia/Shanghai: reminders arrive in the morning, not at night.
        Job("notifications.arrears", "backend.notifications.arrears:remind_arrears", cron="0 2 * * *",
            description="欠费提醒: remind overdue postpaid accounts, once per reminder interval"),
        Job("publish_due_notices", "backend.notifications.notices:publish_due_notices", cron="* * * * *",
            description="Publish the scheduled notices whose time has come (notice.published for each)."),
    ),
    settings=NotificationsSettings,
    # Two published notices and the demo residents' inbox (backend/notifications/demo.py).
    demo="backend.notifications.demo:demo_step",
    gateways=(
        Gateway("jpush", "极光推送", JPushSettings, fake="backend.notifications.fakes.jpush:fake_app",
                secrets=frozenset({"master_secret"}), description="JPush REST API v3 (jpush SDK 3.4)"),
    ),
    personal_data=PersonalData(
        export="backend.notifications.privacy:export",
        erase="backend.notifications.privacy:erase",
        held={
            "sms_deliveries.phone": "exported by phone; blanked on erasure (the delivery's time and kind stay)",
        },
        excluded={
            "sms_deliveries.reason": "the vendor's or the cap's reason a delivery failed, about the delivery",
            "push_deliveries.reason": "JPush's reason a push failed, about the delivery",
            "notices.created_by": "the staff member who wrote the notice",
            "notices.published_by": "the staff member who published it",
            "notices.withdrawn_by": "the staff member who withdrew it",
        },
    ),
)
