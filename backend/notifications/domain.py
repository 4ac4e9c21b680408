"""The notifications domain's declaration (消息与公告).

On this branch only its notices part is declared (the block below); the notifications
core (messages, devices, pushes) declares the rest of the domain around it.
"""

from __future__ import annotations

from backend.auth.menus import Menu, Operation
from backend.auth.menus import permission as _p
from backend.domain import Domain, Job, PersonalData
from backend.events.service import EFFECT_HORIZON, Handler

# ---------------------------------------------------------------- notices (公告 / 物业通知)
# Everything below up to "end of notices" is the notices' part of the declaration
# (backend/notifications/notices*.py, schema/notices.py): fold each tuple's items into
# the domain's own.
NOTICES_MODELS = ("backend.notifications.notices_models",)
NOTICES_EVENTS = ("backend.notifications.events",)  # notice.published (NoticePublished)
NOTICES_MENUS = (
    Menu("notices", "公告管理", "Notices", (
        _p("notices:read", "查看公告", "View notices"),
        _p("notices:publish", "编辑/发布/撤回公告", "Write, publish and withdraw notices"),
    ), ("staff_web",)),
)
NOTICES_DEMO_GRANTS = {"repair": frozenset({"notices:read"})}
NOTICES_OPERATIONS = (
    Operation("createNotice", "新建公告", "Create notice", "notices"),
    Operation("updateNotice", "修改公告", "Edit notice", "notices"),
    Operation("publishNotice", "发布公告", "Publish notice", "notices"),
    Operation("withdrawNotice", "撤回公告", "Withdraw notice", "notices"),
    Operation("markNoticeRead", "阅读公告", "Read notice", "notices"),
)
NOTICES_JOBS = (
    Job("publish_due_notices", "backend.notifications.notices:publish_due_notices", cron="* * * * *",
        description="Publish the scheduled notices whose time has come (notice.published for each)."),
)
NOTICES_HANDLERS = (
    Handler("notice.published", "notifications.notice_messages", "backend.notifications.notices:notice_messages",
            horizon=EFFECT_HORIZON),
)
NOTICES_PERSONAL_EXCLUDED = {
    "notices.created_by": "the staff member who wrote the notice",
    "notices.published_by": "the staff member who published it",
    "notices.withdrawn_by": "the staff member who withdrew it",
}
# ---------------------------------------------------------------- end of notices

DOMAIN = Domain(
    name="notifications",
    title="消息与公告",
    models=(*NOTICES_MODELS,),
    schema="backend.notifications.schema",
    events=(*NOTICES_EVENTS,),
    menus=(*NOTICES_MENUS,),
    demo_grants=NOTICES_DEMO_GRANTS,
    operations=(*NOTICES_OPERATIONS,),
    jobs=(*NOTICES_JOBS,),
    handlers=(*NOTICES_HANDLERS,),
    personal_data=PersonalData(excluded={**NOTICES_PERSONAL_EXCLUDED}),
)
