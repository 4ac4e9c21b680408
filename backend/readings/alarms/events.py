"""The events of abnormal-meter alarms (DESIGN.md, "Events": owned by readings)."""

from __future__ import annotations

from dataclasses import dataclass

from backend.events.payloads import event_payload


@event_payload("alarm.opened")
@dataclass(frozen=True, slots=True)
class AlarmOpened:
    """Alarms were opened by an evaluation of the alarm rules (one event per evaluation)."""

    alarm_ids: tuple[int, ...]


@event_payload("alarm.closed")
@dataclass(frozen=True, slots=True)
class AlarmClosed:
    """Alarms were closed: by an evaluation whose condition cleared (``by`` is
    ``system``) or by hand (``by`` is the staff user's name)."""

    alarm_ids: tuple[int, ...]
    by: str
