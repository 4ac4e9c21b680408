"""Event kinds of the tests' own (``tests.*``), so the outbox, relay, listener and worker
are tested without borrowing a domain's kinds."""

from __future__ import annotations

from dataclasses import dataclass

from backend.events.payloads import event_payload


@event_payload("tests.notice_published")
@dataclass(frozen=True, slots=True)
class NoticePublished:
    notice_id: int


@event_payload("tests.workorder_changed")
@dataclass(frozen=True, slots=True)
class WorkorderChanged:
    workorder_id: int


@event_payload("tests.bill_issued")
@dataclass(frozen=True, slots=True)
class BillIssued:
    bill_id: int


@event_payload("tests.command_finished")
@dataclass(frozen=True, slots=True)
class CommandFinished:
    command_id: int
