"""The events layer's declaration: the outbox's table."""

from __future__ import annotations

from backend.domain import Domain

DOMAIN = Domain(
    name="events",
    title="领域事件",
    models=("backend.events.models",),
)
