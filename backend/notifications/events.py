"""The events notifications owns (DESIGN.md, "Events"): ``message.created`` and
``notice.published``."""

from __future__ import annotations

from dataclasses import dataclass

from backend.events.payloads import event_payload


@event_payload("message.created")
@dataclass(frozen=True, slots=True)
class MessageCreated:
    """Messages were written to inboxes, in the transaction that wrote them:
    ``message_ids`` and ``recipient_ids`` are parallel, each recipient written as
    ``resident:<id>`` or ``staff:<id>`` (a subscription keeps its subscriber's own).
    A fan-out is cut into events of at most 5,000 messages each (docs/notifications.md)."""

    message_ids: tuple[int, ...]
    recipient_ids: tuple[str, ...]


@event_payload("notice.published")
@dataclass(frozen=True, slots=True)
class NoticePublished:
    """A notice became visible to its audience: published at once, or a scheduled one
    whose time came (the job ``publish_due_notices``). Once per notice; the fan-out
    handler (``notifications.notice_messages``) reads the notice as it is when it runs."""

    notice_id: int
