"""The alarms domain's declaration (告警): the alarms table of every subject kind, its
events (``alarm.opened`` / ``alarm.closed``) and the general ``alarms`` list.

It comes after archives (a meter alarm is scoped through its meter's area) and before
every domain that opens alarms: readings (abnormal meters) and, later, the owners of
concentrators and terminals, payments, gateways and zones, which open and close their
alarms through ``backend.alarms.service``. It declares the 异常水表 menu and its
permissions ``alarms:read`` / ``alarms:manage``, which gate every alarm screen.
"""

from __future__ import annotations

from backend.auth.menus import Menu, Operation
from backend.auth.menus import permission as _p
from backend.domain import Domain, PersonalData

DOMAIN = Domain(
    name="alarms",
    title="告警",
    models=("backend.alarms.models",),
    schema="backend.alarms.schema",
    events=("backend.alarms.events",),
    # Its own permissions: the domains that open alarms (readings' abnormal meters, later
    # concentrators, payments, gateways, zones) come after it and gate their alarm screens
    # with them. The menu keeps the brochure's name for the screen staff know.
    menus=(
        Menu("alarms", "异常水表", "Abnormal meters", (
            _p("alarms:read", "查看异常水表", "View abnormal meters"),
            _p("alarms:manage", "确认/关闭告警", "Acknowledge and close alarms"),
        ), ("staff_web", "staff_mobile")),
    ),
    demo_grants={"repair": frozenset({"alarms:read"})},
    operations=(
        Operation("acknowledgeAlarm", "确认告警", "Acknowledge alarm", "alarms"),
        Operation("closeAlarm", "关闭告警", "Close alarm", "alarms"),
    ),
    personal_data=PersonalData(excluded={
        "alarms.subject_name": "the code of the meter, concentrator or other subject the alarm is about",
        "alarms.acknowledged_by": "the staff member who acknowledged it",
        "alarms.closed_by": "the staff member (or 系统) who closed it",
        "alarms.close_reason": "a note on why the alarm was closed",
    }),
)
