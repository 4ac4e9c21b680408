"""Accounts: open (开户) with the customer type's tariff, one open account per household,
reopen after close with the old account kept, close only when settled and at zero
(销户), the household hooks (closing a household closes its account; 过户 settles to the
transfer), bulk opening, and the ``readings.ingested`` handler."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.models import AreaKind, HouseholdStatus
from backend.archives.service import create_area, create_household, end_assignment, set_household_status, transfer_ownership
from backend.billing import service as tariffs
from backend.billing.accounts import (
    AccountTerms,
    BillingHouseholdHooks,
    account_of_household,
    close_settled_account,
    final_charge,
    open_account,
    open_accounts,
)
from backend.billing.ledger import post_entry
from backend.billing.models import Account, AccountStatus, AlertState, BillingMode, EntryKind
from backend.billing.settlement import settle_ingested
from backend.errors import DomainError, ErrorCode
from backend.events.service import load_event
from backend.runtime import Runtime
from backend.settings import Settings
from tests.billing.factories import at, balance, entries, ingest, ledger_sum, served_household, tariff
from tests.factories import unique

NOW = at(2026, 12, 6, 12)
HOOKS = BillingHouseholdHooks("Asia/Shanghai")


async def refused(code: ErrorCode, call: object) -> None:
    with pytest.raises(DomainError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code is code


async def test_opening_takes_the_customer_types_tariff_and_a_second_open_account_is_refused(
        session: AsyncSession) -> None:
    raw = tariff(code=unique("RES")[:40], valid_from=date(2020, 1, 1))
    await tariffs.save_tariff(session, raw=raw)
    area = await create_area(session, name=unique("公司"), kind=AreaKind.company)
    household = await create_household(session, account_no=unique("H"), name="赵磊", area_id=area.id)
    assert household.id is not None
    account = await open_account(session, household_id=household.id, mode=BillingMode.prepaid_station, now=NOW,
                                 by="柜员", terms=AccountTerms(tariff_code=raw["code"], persons=6))
    assert (account.balance_fen, account.status, account.alert_threshold_fen, account.persons) == (
        0, AccountStatus.open, 2000, 6)
    assert account.alert_state is AlertState.close  # opened at ¥0, silently: no event for a fresh account
    await refused(ErrorCode.ACCOUNT_EXISTS, open_account(
        session, household_id=household.id, mode=BillingMode.postpaid, now=NOW, by="柜员",
        terms=AccountTerms(tariff_code=raw["code"])))
    await refused(ErrorCode.NOT_FOUND, open_account(
        session, household_id=household.id, mode=BillingMode.postpaid, now=NOW, by="柜员",
        terms=AccountTerms(tariff_code="NO-SUCH")))
    await refused(ErrorCode.INVALID, open_account(
        session, household_id=household.id, mode=BillingMode.postpaid, now=NOW, by="柜员",
        terms=AccountTerms(tariff_code=raw["code"], alert_threshold_fen=0, close_threshold_fen=100)))
    count = (await session.execute(select(func.count()).select_from(Account).where(
        Account.household_id == household.id))).scalar_one()  # type: ignore[arg-type]
    assert count == 1


async def test_closing_needs_every_reading_settled_and_a_zero_balance_then_the_household_can_reopen(
        session: AsyncSession) -> None:
    served = await served_household(session, raw_tariff=tariff(prices=["2.00"]), opened_at=at(2026, 11, 1))
    account = served.account_id
    await post_entry(session, account_id=account, kind=EntryKind.recharge, amount_fen=5000, ref="", idempotency_key="c:1")
    await ingest(session, served.meter.id, [(at(2026, 11, 10), "5")], now=NOW)
    await refused(ErrorCode.ACCOUNT_UNSETTLED, close_settled_account(session, account_id=account, now=NOW, by="柜员"))

    charged = await final_charge(session, account_id=account, at=at(2026, 11, 10))
    assert charged.charged_fen == 1000
    await refused(ErrorCode.BALANCE_OUTSTANDING, close_settled_account(session, account_id=account, now=NOW, by="柜员"))
    await post_entry(session, account_id=account, kind=EntryKind.refund, amount_fen=-4000, ref="", idempotency_key="c:2")
    closed = await close_settled_account(session, account_id=account, now=NOW, by="柜员")
    assert closed.status is AccountStatus.closed and await account_of_household(session, served.household.id) is None

    reopened = await open_account(session, household_id=served.household.id, mode=BillingMode.prepaid_station,
                                  now=NOW, by="柜员", terms=AccountTerms(tariff_code=served.account.tariff_code))
    assert reopened.id != account and reopened.balance_fen == 0
    history = (await session.execute(text("SELECT status FROM accounts WHERE household_id = :h ORDER BY id"),
                                     {"h": served.household.id})).scalars().all()
    assert history == ["closed", "open"]


async def test_closing_a_household_closes_its_settled_account_and_is_refused_while_money_is_held(
        session: AsyncSession) -> None:
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 11, 1))
    household_id = served.household.id
    assert household_id is not None
    await end_assignment(session, meter_id=served.meter.id, valid_to=at(2026, 11, 5), end_reading=Decimal(0))
    await post_entry(session, account_id=served.account_id, kind=EntryKind.recharge, amount_fen=100, ref="",
                     idempotency_key="h:1")
    await final_charge(session, account_id=served.account_id, at=at(2026, 11, 5))
    await refused(ErrorCode.BALANCE_OUTSTANDING, set_household_status(
        session, household_id=household_id, status=HouseholdStatus.closed, reason="", changed_by="x", now=NOW,
        hooks=HOOKS))
    await post_entry(session, account_id=served.account_id, kind=EntryKind.refund, amount_fen=-100, ref="",
                     idempotency_key="h:2")
    await set_household_status(session, household_id=household_id, status=HouseholdStatus.closed, reason="搬离",
                                changed_by="x", now=NOW, hooks=HOOKS)
    assert (await session.get(Account, served.account_id, populate_existing=True)).status is AccountStatus.closed  # type: ignore[union-attr]
    await refused(ErrorCode.HOUSEHOLD_CLOSED, open_account(
        session, household_id=household_id, mode=BillingMode.postpaid, now=NOW, by="x",
        terms=AccountTerms(tariff_code=served.account.tariff_code)))


async def test_a_transfer_settles_to_the_transfer_date_and_the_account_continues(session: AsyncSession) -> None:
    served = await served_household(session, raw_tariff=tariff(prices=["2.00"]), opened_at=at(2026, 11, 1))
    await ingest(session, served.meter.id, [(at(2026, 11, 10), "4"), (at(2026, 11, 20), "10")], now=NOW)
    assert served.household.id is not None
    await session.execute(text("UPDATE household_owners SET valid_from = '2026-10-01' WHERE household_id = :h"),
                          {"h": served.household.id})  # registered before the readings
    await transfer_ownership(session, household_id=served.household.id, name="钱敏", phone=None, id_number=None,
                             valid_from=date(2026, 11, 15), hooks=HOOKS, now=NOW, by="柜员")
    # Settled to 15 November 00:00: the register stood at 4 m³ (the 10 November reading).
    assert [(e.kind, e.amount_fen, e.volume_m3) for e in await entries(session, served.account_id)] == [
        (EntryKind.charge, -800, Decimal("4.0000"))]
    account = await session.get(Account, served.account_id, populate_existing=True)
    assert account is not None and account.status is AccountStatus.open
    assert account.settled_to == at(2026, 11, 15)


async def test_bulk_opening_opens_every_household_of_the_subtree_without_an_account(session: AsyncSession) -> None:
    raw = tariff(valid_from=date(2020, 1, 1))
    await tariffs.save_tariff(session, raw=raw)
    company = await create_area(session, name=unique("公司"), kind=AreaKind.company)
    households = [await create_household(session, account_no=unique("H"), name=f"住户{i}", area_id=company.id)
                  for i in range(4)]
    assert all(h.id is not None for h in households)
    await open_account(session, household_id=households[0].id, mode=BillingMode.postpaid, now=NOW, by="x",  # type: ignore[arg-type]
                       terms=AccountTerms(tariff_code=raw["code"]))
    await set_household_status(session, household_id=households[1].id, status=HouseholdStatus.closed,  # type: ignore[arg-type]
                               reason="", changed_by="x", now=NOW)
    assert company.id is not None
    opened = await open_accounts(session, area_id=company.id, mode=BillingMode.prepaid_station, tariff_code=raw["code"],
                                 now=NOW, by="迁移")
    assert (opened.opened, opened.skipped) == (2, 2)
    again = await open_accounts(session, area_id=company.id, mode=BillingMode.prepaid_station, tariff_code=raw["code"],
                                now=NOW, by="迁移")
    assert (again.opened, again.skipped) == (0, 4)


async def test_the_ingest_handler_settles_the_batchs_accounts(session: AsyncSession) -> None:
    served = await served_household(session, raw_tariff=tariff(prices=["2.00"]), opened_at=at(2026, 11, 1))
    result = await ingest(session, served.meter.id, [(at(2026, 11, 10), "3"), (at(2026, 11, 12), "7")], now=NOW)
    event_id = (await session.execute(text("SELECT id FROM domain_events WHERE kind = 'readings.ingested' "
                                           "AND payload->>'batch_id' = :b"), {"b": result.batch_id})).scalar_one()
    event = await load_event(session, event_id)
    assert event is not None
    runtime = Runtime(settings=Settings(), sessions=None, actor=None, clock=lambda: datetime(2026, 12, 1, tzinfo=UTC))  # type: ignore[arg-type]
    await settle_ingested(runtime, session, event)
    assert [(e.kind, e.amount_fen) for e in await entries(session, served.account_id)] == [(EntryKind.charge, -1400)]
    assert await balance(session, served.account_id) == await ledger_sum(session, served.account_id) == -1400
