"""The events of alarms of any subject (DESIGN.md, "Events": owned by alarms). The alarm
service (``backend.alarms.service``) is their only emitter; payloads carry ids only, so
a consumer reads the alarms (``alarms_visible_to``) as they are when it runs."""

from __future__ import annotations

from dataclasses import dataclass

from backend.events.payloads import event_payload


@event_payload("alarm.opened")
@dataclass(frozen=True, slots=True)
class AlarmOpened:
    """Alarms were opened (one event per open-or-refresh call: an evaluation of the
    abnormal-meter rules, or another owner's check of its subjects), naming those newly
    opened, of any subject kind."""

    alarm_ids: tuple[int, ...]


@event_payload("alarm.closed")
@dataclass(frozen=True, slots=True)
class AlarmClosed:
    """Alarms were closed: by an evaluation whose condition cleared (``by`` is
    ``system``) or by hand (``by`` is the staff user's name)."""

    alarm_ids: tuple[int, ...]
    by: str
