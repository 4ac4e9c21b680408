"""The event of work orders (DESIGN.md "Events": owned by workorders). The work-order
service (``backend.workorders.service``) is its only emitter, once per transition."""

from __future__ import annotations

from dataclasses import dataclass

from backend.events.payloads import event_payload


@event_payload("workorder.changed")
@dataclass(frozen=True, slots=True)
class WorkOrderChanged:
    """A work order was created or changed state: its id, the state it entered and who
    moved it (``resident:<id>``, ``staff:<id>`` or ``system``)."""

    workorder_id: int
    state: str
    by: str
