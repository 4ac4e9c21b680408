"""The events layer's declaration: the outbox's table, its retention, ``shuiwu events``."""

from __future__ import annotations

from backend.domain import Domain, Job, PersonalData

DOMAIN = Domain(
    name="events",
    title="领域事件",
    models=("backend.events.models",),
    jobs=(
        Job("purge_expired_events", "backend.events.retention:purge_expired_events", cron="53 4 * * *",
            description="Delete relayed events older than SHUIWU_EVENT_RETENTION_DAYS"),
    ),
    commands={"events": "backend.events.cli:events_app"},
    personal_data=PersonalData(excluded={
        "domain_events.payload": "ids and states only: payloads are typed per kind (household.bound carries "
                                 "household_id, resident_id, state); a kind with a personal field declares it here",
    }),
)
