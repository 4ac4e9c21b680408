"""The events the notifications domain owns (DESIGN.md, "Events")."""

from __future__ import annotations

from dataclasses import dataclass

from backend.events.payloads import event_payload

# ---------------------------------------------------------------- notices (公告)


@event_payload("notice.published")
@dataclass(frozen=True, slots=True)
class NoticePublished:
    """A notice became visible to its audience: published at once, or a scheduled one
    whose time came (the job ``publish_due_notices``). Once per notice; the fan-out
    handler (``notifications.notice_messages``) reads the notice as it is when it runs."""

    notice_id: int

# ---------------------------------------------------------------- end of notices
