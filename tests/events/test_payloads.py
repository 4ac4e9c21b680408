"""Typed event payloads: declared by their owners, checked on emit, carried as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from backend.events.catalog import owned_payload_types
from backend.events.payloads import EventPayloadError, event_payload, payload_type
from backend.events.service import Event, payload_of
from tests.events.payloads import BillIssued, NoticePublished

SHANGHAI = ZoneInfo("Asia/Shanghai")


class Direction(StrEnum):
    up = "up"
    down = "down"


@event_payload("tests.everything_carried")
@dataclass(frozen=True, slots=True)
class EverythingCarried:
    account_id: int
    amount_fen: int
    volume_m3: Decimal
    at: datetime
    period: date
    direction: Direction
    meter_ids: tuple[int, ...]
    channels: list[str]
    settled: bool
    note: str | None
    reason: str | None = None


CARRIED = EverythingCarried(
    account_id=42, amount_fen=104000, volume_m3=Decimal("12.3400"), at=datetime(2026, 11, 25, 8, 30, tzinfo=SHANGHAI),
    period=date(2026, 11, 1), direction=Direction.down, meter_ids=(3, 5), channels=["alipay"], settled=True,
    note=None, reason="迟到的批次",
)


def test_a_payload_travels_as_plain_json_and_comes_back_equal() -> None:
    carried = payload_type("tests.everything_carried")

    document = carried.encode(CARRIED)

    assert json.loads(json.dumps(document)) == document
    assert document == {
        "account_id": 42, "amount_fen": 104000, "volume_m3": "12.3400", "at": "2026-11-25T08:30:00+08:00",
        "period": "2026-11-01", "direction": "down", "meter_ids": [3, 5], "channels": ["alipay"], "settled": True,
        "note": None, "reason": "迟到的批次",
    }
    assert carried.decode(document) == CARRIED


@pytest.mark.parametrize(
    ("field", "value", "complaint"),
    [
        ("amount_fen", 10.4, "amount_fen: expected int, got float"),
        ("amount_fen", True, "amount_fen: expected int, got bool"),
        ("volume_m3", 12.34, "volume_m3: expected a finite Decimal"),
        ("volume_m3", Decimal("NaN"), "volume_m3: expected a finite Decimal"),
        ("at", datetime(2026, 11, 25, 8, 30), "at: expected an aware datetime"),
        ("period", datetime(2026, 11, 1, tzinfo=UTC), "period: expected a date"),
        ("direction", "down", "direction: expected Direction"),
        ("meter_ids", (3, "5"), r"meter_ids\[1\]: expected int, got str"),
        ("note", 7, "note: expected str, got int"),
    ],
)
def test_emitting_refuses_a_field_of_the_wrong_type(field: str, value: object, complaint: str) -> None:
    wrong = EverythingCarried(**{**{name: getattr(CARRIED, name) for name in EverythingCarried.__dataclass_fields__},
                                 field: value})

    with pytest.raises(EventPayloadError, match=complaint):
        payload_type("tests.everything_carried").encode(wrong)


def test_a_stored_document_without_a_required_field_is_refused_and_a_defaulted_one_is_filled_in() -> None:
    carried = payload_type("tests.everything_carried")
    document = carried.encode(CARRIED)

    without_reason = {name: value for name, value in document.items() if name != "reason"}
    assert carried.decode(without_reason).reason is None
    with pytest.raises(EventPayloadError, match="lacks 'meter_ids'"):
        carried.decode({name: value for name, value in document.items() if name != "meter_ids"})
    with pytest.raises(EventPayloadError, match="at: expected an ISO 8601 datetime with an offset"):
        carried.decode({**document, "at": "2026-11-25T08:30:00"})


def test_a_handler_reads_the_typed_payload_and_payload_of_checks_its_class() -> None:
    event = Event(id=1, kind="tests.bill_issued", key=None, payload={"bill_id": 9}, created_at=datetime.now(UTC))

    assert event.typed_payload == BillIssued(bill_id=9)
    assert payload_of(event, BillIssued).bill_id == 9
    with pytest.raises(EventPayloadError, match="carries a BillIssued, not a NoticePublished"):
        payload_of(event, NoticePublished)


def test_a_payload_must_be_a_frozen_dataclass_of_types_json_carries() -> None:
    with pytest.raises(TypeError, match="frozen dataclass"):
        @event_payload("tests.thawed")
        @dataclass
        class Thawed:
            bill_id: int

    with pytest.raises(TypeError, match=r"Floating\.ratio: an event payload field is int, str"):
        @event_payload("tests.floating")
        @dataclass(frozen=True)
        class Floating:
            ratio: float

    with pytest.raises(ValueError, match="owner"):
        event_payload("BillIssued")


def test_a_kind_has_one_payload_class_and_a_class_one_kind() -> None:
    with pytest.raises(ValueError, match=r"tests\.bill_issued already has its payload"):
        @event_payload("tests.bill_issued")
        @dataclass(frozen=True)
        class BillIssuedAgain:
            bill_id: int

    with pytest.raises(ValueError, match=r"is already the payload of tests\.bill_issued"):
        event_payload("tests.bill_issued_twice")(BillIssued)


def test_message_created_carries_parallel_message_and_recipient_ids() -> None:
    from backend.notifications.events import MessageCreated

    payload = MessageCreated(message_ids=(7, 8), recipient_ids=("resident:3", "staff:1"))
    document = payload_type("message.created").encode(payload)

    assert json.loads(json.dumps(document)) == {"message_ids": [7, 8], "recipient_ids": ["resident:3", "staff:1"]}
    assert payload_type("message.created").decode(document) == payload


def test_the_kinds_emitted_today_are_declared_by_their_owners() -> None:
    owners = {declared.kind: (declared.owner, declared.cls.__name__) for declared in owned_payload_types()}

    assert owners == {
        "account.threshold_crossed": ("billing", "AccountThresholdCrossed"),
        "bill.issued": ("billing", "BillIssued"),
        "alarm.closed": ("alarms", "AlarmClosed"),
        "account.closed": ("payments", "AccountClosed"),
        "alarm.opened": ("alarms", "AlarmOpened"),
        "household.bound": ("auth", "HouseholdBound"),
        "message.created": ("notifications", "MessageCreated"),
        "notice.published": ("notifications", "NoticePublished"),
        "payment.succeeded": ("payments", "PaymentSucceeded"),
        "payment_order.changed": ("payments", "PaymentOrderChanged"),
        "readings.ingested": ("readings", "ReadingsIngested"),
        "workorder.changed": ("workorders", "WorkOrderChanged"),
        "command.changed": ("remote", "CommandChanged"),
        "command.finished": ("remote", "CommandFinished"),
    }


def test_each_owner_declares_the_module_of_its_payloads() -> None:
    from backend.domains import DOMAINS
    from backend.events.catalog import owned_payload_types

    declared = {module for domain in DOMAINS for module in domain.events}

    assert declared == {payload.cls.__module__ for payload in owned_payload_types()}


def test_a_fresh_worker_registers_handlers_for_every_kind_the_domains_own() -> None:
    # A new interpreter: nothing but the worker's own imports has loaded the payloads.
    program = (
        "from backend.domain import Domain; from backend.domains import DOMAINS; from backend.events.service import Handler\n"
        "from backend.jobs import declared_handlers\n"
        "kinds = ['readings.ingested', 'alarm.opened', 'alarm.closed', 'household.bound']\n"
        "late = Domain(name='late', title='late', handlers=tuple(Handler(k, 'late.' + k, 'x:y') for k in kinds))\n"
        "print(len(declared_handlers((*DOMAINS, late))) - len(declared_handlers(DOMAINS)))\n"
    )
    finished = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=False,
                              cwd=Path(__file__).resolve().parents[2])

    assert (finished.returncode, finished.stdout.strip()) == (0, "4"), finished.stderr[-2000:]
