"""Counter payments at the service: a recharge is a payment row, a ledger entry and a
``payment.succeeded`` event in one go; a double click is one payment; bad input writes
nothing; a reversal posts the opposite entry once and only by whom it may; closing an
account charges to the final reading, refunds exactly the balance and sums to zero."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.billing.models import AccountStatus, EntryKind
from backend.errors import DomainError, ErrorCode
from backend.payments.counter import Operator, close_account, reverse_payment, take_payment
from backend.payments.models import Payment, PaymentChannel, PaymentKind, PaymentPurpose, PaymentStatus
from tests.billing.factories import at, balance, entries, ingest, ledger_sum, served_household, tariff
from tests.factories import make_staff

NOW = at(2026, 11, 20, 10)


async def cashier(session: AsyncSession, *, reverse_any: bool = False) -> Operator:
    staff = await make_staff(session, permissions={"counter:collect"})
    assert staff.user.id is not None
    return Operator(staff.user.id, staff.user.full_name, may_reverse_any=reverse_any)


async def pay(session: AsyncSession, account_id: int, operator: Operator, fen: int = 10000, **extra: Any) -> Payment:
    arguments: dict[str, Any] = {"account_id": account_id, "channel": PaymentChannel.cash,
                                     "purpose": PaymentPurpose.recharge, "amount_fen": fen, "confirm_amount_fen": fen,
                                     "idempotency_key": f"click:{account_id}:{fen}", "operator": operator, "now": NOW}
    arguments.update(extra)
    return await take_payment(session, **arguments)


async def payment_events(session: AsyncSession, account_id: int) -> list[dict[str, Any]]:
    return list((await session.execute(text(
        "SELECT payload FROM domain_events WHERE kind = 'payment.succeeded' AND (payload->>'account_id')::bigint = :a "
        "ORDER BY id"), {"a": account_id})).scalars().all())


async def test_a_recharge_writes_the_payment_its_entry_and_the_event_and_a_double_click_is_one_payment(
        session: AsyncSession) -> None:
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1))
    operator = await cashier(session)
    first = await pay(session, served.account_id, operator, 12345)
    again = await pay(session, served.account_id, operator, 12345)
    assert again.id == first.id and first.serial_no.startswith("SW20261120")
    assert [(e.kind, e.amount_fen, e.balance_after_fen) for e in await entries(session, served.account_id)] == [
        (EntryKind.recharge, 12345, 12345)]
    assert await payment_events(session, served.account_id) == [{
        "payment_id": first.id, "account_id": served.account_id, "household_id": served.household.id,
        "channel": "cash", "amount_fen": 12345, "balance_after_fen": 12345}]


@pytest.mark.parametrize(("changes", "code"), [
    ({"amount_fen": 0, "confirm_amount_fen": 0}, ErrorCode.PAYMENT_AMOUNT_INVALID),
    ({"amount_fen": -100, "confirm_amount_fen": -100}, ErrorCode.PAYMENT_AMOUNT_INVALID),
    ({"confirm_amount_fen": 10001}, ErrorCode.PAYMENT_AMOUNT_MISMATCH),
    ({"amount_fen": 5_000_001, "confirm_amount_fen": 5_000_001}, ErrorCode.PAYMENT_ABOVE_MAXIMUM),
    ({"channel": PaymentChannel.card}, ErrorCode.PAYMENT_REFERENCE_REQUIRED),
    ({"channel": PaymentChannel.transfer, "reference": "  "}, ErrorCode.PAYMENT_REFERENCE_REQUIRED),
    ({"channel": PaymentChannel.bank, "reference": "T1"}, ErrorCode.PAYMENT_REFERENCE_REQUIRED),
])
async def test_bad_input_is_refused_and_writes_nothing(session: AsyncSession, changes: dict[str, Any],
                                                        code: ErrorCode) -> None:
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1))
    with pytest.raises(DomainError) as refused:
        await pay(session, served.account_id, await cashier(session), **changes)
    assert refused.value.code is code
    count = (await session.execute(select(func.count()).select_from(Payment).where(
        Payment.account_id == served.account_id))).scalar_one()  # type: ignore[arg-type]
    assert count == 0 and await entries(session, served.account_id) == []


async def test_a_reversal_posts_the_opposite_entry_once_and_only_by_the_cashier_that_day(
        session: AsyncSession) -> None:
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1))
    own, other, supervisor = await cashier(session), await cashier(session), await cashier(session, reverse_any=True)
    payment = await pay(session, served.account_id, own)
    assert payment.id is not None
    for who, when in ((other, NOW), (own, NOW + timedelta(days=1))):
        with pytest.raises(DomainError) as refused:
            await reverse_payment(session, payment_id=payment.id, reason="收错", operator=who, now=when)
        assert refused.value.code is ErrorCode.REVERSAL_NOT_ALLOWED
    reversed_ = await reverse_payment(session, payment_id=payment.id, reason="收错", operator=own, now=NOW)
    assert reversed_.status is PaymentStatus.reversed
    with pytest.raises(DomainError) as refused:
        await reverse_payment(session, payment_id=payment.id, reason="", operator=supervisor, now=NOW)
    assert refused.value.code is ErrorCode.PAYMENT_ALREADY_REVERSED
    assert [(e.kind, e.amount_fen) for e in await entries(session, served.account_id)] == [
        (EntryKind.recharge, 10000), (EntryKind.reversal, -10000)]
    assert await balance(session, served.account_id) == await ledger_sum(session, served.account_id) == 0


async def test_closing_refunds_exactly_the_balance_after_the_final_charge_and_the_ledger_sums_to_zero(
        session: AsyncSession) -> None:
    served = await served_household(session, raw_tariff=tariff(prices=["2.00"]), opened_at=at(2026, 11, 1))
    operator = await cashier(session)
    await pay(session, served.account_id, operator, 10000)
    await ingest(session, served.meter.id, [(at(2026, 11, 18), "6.5")], now=NOW)
    closed = await close_account(session, account_id=served.account_id, final_reading_at=at(2026, 11, 18),
                                 operator=operator, now=NOW, idempotency_key="close:1")
    assert closed.final_charge_fen == 1300 and closed.collection is None
    assert closed.refund is not None and closed.refund.kind is PaymentKind.refund and closed.refund.amount_fen == 8700
    assert closed.account.status is AccountStatus.closed
    assert await balance(session, served.account_id) == await ledger_sum(session, served.account_id) == 0
    closing = (await session.execute(text("SELECT payload FROM domain_events WHERE kind = 'account.closed' "
                                          "ORDER BY id DESC LIMIT 1"))).scalar_one()
    assert closing == {"account_id": served.account_id, "household_id": served.household.id}
    with pytest.raises(DomainError) as refused:
        await pay(session, served.account_id, operator, 500)
    assert refused.value.code is ErrorCode.ACCOUNT_CLOSED


async def test_closing_an_account_in_arrears_collects_them(session: AsyncSession) -> None:
    served = await served_household(session, raw_tariff=tariff(prices=["2.00"]), opened_at=at(2026, 11, 1))
    await ingest(session, served.meter.id, [(at(2026, 11, 18), "6.5")], now=NOW)
    closed = await close_account(session, account_id=served.account_id, final_reading_at=at(2026, 11, 18),
                                 operator=await cashier(session), now=NOW, idempotency_key="close:2",
                                 collect_channel=PaymentChannel.card, collect_reference="POS123456")
    assert closed.refund is None and closed.collection is not None and closed.collection.amount_fen == 1300
    assert closed.collection.reference == "POS123456"
    assert await balance(session, served.account_id) == await ledger_sum(session, served.account_id) == 0


async def test_a_key_reused_by_another_cashier_or_for_another_purpose_is_a_conflict(session: AsyncSession) -> None:
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1))
    first, second = await cashier(session), await cashier(session)
    await pay(session, served.account_id, first, 5000, idempotency_key="shared-key")
    for who, purpose in ((second, PaymentPurpose.recharge), (first, PaymentPurpose.bills)):
        with pytest.raises(DomainError) as refused:
            await pay(session, served.account_id, who, 5000, idempotency_key="shared-key", purpose=purpose)
        assert refused.value.code is ErrorCode.IDEMPOTENCY_CONFLICT


async def test_closing_checks_its_key_and_the_collection_channels_rules_before_writing(session: AsyncSession) -> None:
    served = await served_household(session, raw_tariff=tariff(prices=["2.00"]), opened_at=at(2026, 11, 1))
    operator = await cashier(session)
    for extra, code in (({"idempotency_key": "k" * 91}, ErrorCode.INVALID),
                        ({"idempotency_key": ""}, ErrorCode.INVALID),
                        ({"collect_channel": PaymentChannel.bank}, ErrorCode.PAYMENT_REFERENCE_REQUIRED)):
        arguments: dict[str, Any] = {"account_id": served.account_id, "final_reading_at": at(2026, 11, 18),
                                         "operator": operator, "now": NOW, "idempotency_key": "close:k"}
        arguments.update(extra)
        with pytest.raises(DomainError) as refused:
            await close_account(session, **arguments)
        assert refused.value.code is code
    assert await entries(session, served.account_id) == []
