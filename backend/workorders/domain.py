"""The work orders domain's declaration (报修工单, issue 19): repair requests of residents
and staff, their workflow, SLA, photos, statistics and subscriptions (docs/workorders.md).

It comes after notifications (DESIGN.md domain order) and declares the handler of its own
event ``workorder.changed`` that turns it into messages through ``notify_many``. Its
menu 报修工单 holds ``workorders:read``, ``workorders:handle`` and
``workorders:dispatch``; the demo's 维修员 ("repair") role reads and handles them.
"""

from __future__ import annotations

from backend.auth.menus import Menu, Operation
from backend.auth.menus import permission as _p
from backend.domain import Domain, Job, PersonalData
from backend.events.service import EFFECT_HORIZON, Handler
from backend.workorders.settings import WorkordersSettings

DOMAIN = Domain(
    name="workorders",
    title="报修工单",
    models=("backend.workorders.models",),
    schema="backend.workorders.schema",
    events=("backend.workorders.events",),
    menus=(
        Menu("workorders", "报修工单", "Work orders", (
            _p("workorders:read", "查看报修工单与统计", "View work orders and their statistics"),
            _p("workorders:handle", "接单、处理、取消与关闭工单, 代住户报修", "Take, handle, cancel and close work orders"),
            _p("workorders:dispatch", "派单", "Dispatch work orders"),
        ), ("staff_web", "staff_mobile")),
    ),
    demo_grants={"repair": frozenset({"workorders:read", "workorders:handle"})},
    operations=tuple(Operation(action, title, title_en, "workorders") for action, title, title_en in (
        ("createWorkOrder", "报修", "Create work order"),
        ("createWorkOrderFromAlarm", "由告警生成工单", "Create work order from alarm"),
        ("dispatchWorkOrder", "派单", "Dispatch work order"),
        ("takeWorkOrder", "接单", "Take work order"),
        ("startTravel", "出发", "Set out"),
        ("startWork", "开始处理", "Start work"),
        ("resolveWorkOrder", "处理完成", "Resolve work order"),
        ("cancelWorkOrder", "取消工单", "Cancel work order"),
        ("reopenWorkOrder", "重新处理", "Reopen work order"),
        ("confirmWorkOrder", "确认评价", "Confirm and rate work order"),
        ("closeWorkOrder", "关闭工单", "Close work order"),
    )),
    handlers=(
        # Messages leave the database: a replay of history skips old events.
        Handler("workorder.changed", "workorders.notify", "backend.workorders.notify:notify_changed",
                horizon=EFFECT_HORIZON),
        # Third parties' webhooks (the shared layer before the business domains cannot name
        # this later kind itself; docs/webhooks.md): its one fan-out handler, for this kind too.
        Handler("workorder.changed", "webhooks.fanout", "backend.webhooks.service:fan_out", horizon=EFFECT_HORIZON),
    ),
    jobs=(
        Job("close_unconfirmed_work_orders", "backend.workorders.jobs:close_unconfirmed_job", cron="40 3 * * *",
            description="关闭: resolved work orders nobody confirmed within SHUIWU_WORKORDERS_AUTO_CLOSE_DAYS"),
    ),
    # SLA per category and the auto-close wait (SHUIWU_WORKORDERS_*), as the service settings.workorders.
    settings=WorkordersSettings,
    demo="backend.workorders.demo:demo_step",
    personal_data=PersonalData(
        export="backend.workorders.privacy:export",
        erase="backend.workorders.privacy:erase",
        held={
            "work_orders.description": "what the resident wrote: exported, cleared on erasure",
            "work_orders.contact_name": "exported, replaced by the pseudonym on erasure",
            "work_orders.contact_phone": "exported, cleared on erasure",
            "work_orders.rating_comment": "exported, cleared on erasure",
            "work_order_photos.file_key": "the resident's photos: exported (keys), rows deleted and files expired on erasure",
        },
        excluded={
            "work_order_transitions.actor_name": "the staff member's name, or 住户 / 系统: never the resident's name",
            "work_orders.response_due_at": "the SLA's response deadline, a time not a person ('response' in its name)",
        },
    ),
)
