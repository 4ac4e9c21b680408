"""The alarms domain's declaration (告警): the alarms table of every subject kind, its
events (``alarm.opened`` / ``alarm.closed``) and the general ``alarms`` list.

It comes after archives (a meter alarm is scoped through its meter's area) and before
every domain that opens alarms: readings (abnormal meters) and, later, the owners of
concentrators and terminals, payments, gateways and zones, which open and close their
alarms through ``backend.alarms.service``. Its API is gated by ``alarms:read`` /
``alarms:manage``, which readings' 异常水表 menu declares.
"""

from __future__ import annotations

from backend.auth.menus import Operation
from backend.domain import Domain

DOMAIN = Domain(
    name="alarms",
    title="告警",
    models=("backend.alarms.models",),
    schema="backend.alarms.schema",
    events=("backend.alarms.events",),
    operations=(
        Operation("acknowledgeAlarm", "确认告警", "Acknowledge alarm", "alarms"),
        Operation("closeAlarm", "关闭告警", "Close alarm", "alarms"),
    ),
)
