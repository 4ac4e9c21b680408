"""Accounts (账户): open (开户), change, final charge, close (销户), reopen, and what
billing does when a household closes or changes owner (过户).

**One open account per household** (a partial unique index): a second open is
ACCOUNT_EXISTS. A closed account stays as history; the household can be opened again
(预付费开户 after 销户), which makes a new account with a zero balance.

**Opening** sets the billing mode, the tariff (default: the lowest code of the tariffs
in force today for the household's customer type), the household size the tariff's
household-size rule applies to (None: no extension), the thresholds (default: alert at
¥20.00, close at ¥0.00, no grace) and the ``vulnerable`` flag (低保 / 医疗: never closed
for money). A closed household is refused (HOUSEHOLD_CLOSED): reactivate it first.
:func:`open_accounts` opens every household of an area subtree without an open account
in one statement (a migration from another system).

**Final charge and close.** :func:`final_charge` prices the usage up to a final reading
and marks the account settled to it: a master-station prepaid account exactly as
settlement would (:mod:`backend.billing.settlement`), a postpaid one by a final bill
(:func:`backend.billing.bills.final_bill`, the bills' cumulative rule); card and meter
prepaid accounts have nothing to price (their money is on the card or the meter).
:func:`close_settled_account` closes an account whose balance is zero and whose readings
are all settled (ACCOUNT_UNSETTLED otherwise: make the final charge first;
BALANCE_OUTSTANDING while money is owed or held: refund or collect it). The
``closeAccount`` mutation that chains final charge, refund or collection and close is
the Counter payments issue's (payments, after billing).

**Households.** :class:`BillingHouseholdHooks` (the service ``household_hooks``) closes
a household's account when the household closes, under the same refusals, and settles
it to the transfer instant when the household changes owner; the account, its balance
and its tier cycle continue for the new owner (a resident's monthly statements start at their transfer).
A postpaid account is not settled at a transfer: its next bill covers the period's usage
of both owners (bills price only from ``bills``, never from ``prepaid_cycles``), so the
counter collects what is owed before the transfer, and a tariff or household-size change
of a postpaid account applies from its next bill.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives import errors as archive_errors
from backend.archives.models import Household, HouseholdStatus
from backend.archives.service import HouseholdHooks, household_in_scope
from backend.archives.service.checks import _area_for
from backend.billing.errors import AccountClosed, AccountExists, AccountUnsettled, TariffInvalid, TariffNotInForce
from backend.billing.ledger import apply_alert_states, lock_accounts, opening_state
from backend.billing.models import Account, AccountStatus, BillingMode
from backend.billing.service import tariff_versions, tariffs_in_force
from backend.billing.settlement import PrepaidSettlement, settle_accounts
from backend.clock import utcnow
from backend.db import raw_connection
from backend.errors import BadUserInput, DomainError, ErrorCode, NotFound
from backend.readings.partitions import as_zone
from backend.settings import Settings

__all__ = [
    "CHARGEABLE_MODES", "DEFAULT_ALERT_FEN", "DEFAULT_CLOSE_FEN", "AccountTerms", "BillingHouseholdHooks",
    "OpenedAccounts", "account_in_scope", "account_of_household", "close_settled_account", "final_charge", "offered",
    "open_account", "open_accounts", "settle_area", "update_account",
]

DEFAULT_ALERT_FEN = 2000  # ¥20.00: the resident is told to recharge
DEFAULT_CLOSE_FEN = 0  # ¥0.00: the valve may close (after the grace amount)
MAX_THRESHOLD_FEN = 10**9  # ¥10 million
MAX_PERSONS = 100
# Usage is priced for these; card and meter prepaid money lives on the card or the meter.
CHARGEABLE_MODES = (BillingMode.prepaid_station, BillingMode.postpaid)


@dataclass(frozen=True, slots=True)
class AccountTerms:
    """What opening sets and :func:`update_account` changes; None keeps (or, on opening,
    takes the default of) a field, except ``persons``, where :data:`KEEP` keeps it and
    None means no household-size extension."""

    tariff_code: str | None = None
    persons: Any = None
    alert_threshold_fen: int | None = None
    close_threshold_fen: int | None = None
    grace_fen: int | None = None
    vulnerable: bool | None = None


KEEP: Any = object()


def _threshold(problems: list[DomainError], value: int | None, field: str, *, signed: bool) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > MAX_THRESHOLD_FEN or (
            not signed and value < 0):
        problems.append(DomainError("金额超出范围", "The amount is out of range", field=field, code=ErrorCode.INVALID_MONEY))


def _check_terms(terms: AccountTerms, *, alert: int, close: int) -> None:
    problems: list[DomainError] = []
    _threshold(problems, terms.alert_threshold_fen, "alertThreshold", signed=True)
    _threshold(problems, terms.close_threshold_fen, "closeThreshold", signed=True)
    _threshold(problems, terms.grace_fen, "grace", signed=False)
    if terms.persons is not KEEP and terms.persons is not None and (
            isinstance(terms.persons, bool) or not isinstance(terms.persons, int) or not 1 <= terms.persons <= MAX_PERSONS):
        problems.append(TariffInvalid("户籍人数须为 1 至 100", "Persons must be 1 to 100", field="persons"))
    if not problems and close > alert:
        problems.append(DomainError("关阀阈值不能高于提醒阈值", "The close threshold cannot be above the alert threshold",
                                    field="closeThreshold", code=ErrorCode.INVALID))
    if problems:
        raise problems[0]


async def _tariff_for(session: AsyncSession, household: Household, code: str | None, today: date) -> str:
    if code is not None:
        versions = await tariff_versions(session, code=code)
        if not versions:
            raise NotFound(field="tariffCode")
        if versions[0].valid_from > today:
            raise TariffNotInForce(field="tariffCode")
        return code
    candidates = [t for t in await tariffs_in_force(session, on=today) if t.customer_type == household.customer_type]
    if not candidates:
        raise TariffNotInForce("没有适用于该用户类型的现行水价, 请指定水价", "No tariff in force for this customer type: "
                               "name one", field="tariffCode")
    return min(t.code for t in candidates)


async def account_of_household(session: AsyncSession, household_id: int, *, lock: bool = False) -> Account | None:
    """The household's open account, or None (no account yet, or only closed ones)."""
    statement: Any = select(Account).where(Account.household_id == household_id,  # type: ignore[arg-type]
                                           Account.status == AccountStatus.open)  # type: ignore[arg-type]
    if lock:
        statement = statement.with_for_update().execution_options(populate_existing=True)
    return (await session.execute(statement)).scalars().first()


async def open_account(
    session: AsyncSession,
    *,
    household_id: int,
    mode: BillingMode,
    terms: AccountTerms = AccountTerms(),
    now: datetime,
    by: str,
    tz: str | tzinfo = "Asia/Shanghai",
    scope_patterns: Sequence[str] | None = None,
) -> Account:
    """开户: open ``household_id``'s account (module docstring). Refusals: NOT_FOUND (no
    such household in the scope), HOUSEHOLD_CLOSED, ACCOUNT_EXISTS, NOT_FOUND /
    TARIFF_NOT_IN_FORCE (``tariffCode``), INVALID_MONEY / INVALID (thresholds)."""
    household = await household_in_scope(session, household_id=household_id, scope_patterns=scope_patterns,
                                          field="householdId")
    await session.execute(text("SELECT id FROM households WHERE id = :id FOR UPDATE"), {"id": household_id})
    if household.status is HouseholdStatus.closed:
        raise archive_errors.HouseholdClosed(field="householdId")
    mode = BillingMode(mode)
    alert = terms.alert_threshold_fen if terms.alert_threshold_fen is not None else DEFAULT_ALERT_FEN
    close = terms.close_threshold_fen if terms.close_threshold_fen is not None else DEFAULT_CLOSE_FEN
    _check_terms(terms, alert=alert, close=close)
    today = now.astimezone(as_zone(tz)).date()
    tariff_code = await _tariff_for(session, household, terms.tariff_code, today)
    if await account_of_household(session, household_id) is not None:
        raise AccountExists(field="householdId")
    account = Account(
        household_id=household_id, mode=mode, tariff_code=tariff_code,
        persons=None if terms.persons is KEEP else terms.persons, alert_threshold_fen=alert,
        close_threshold_fen=close, grace_fen=terms.grace_fen or 0, vulnerable=bool(terms.vulnerable),
        opened_at=now, opened_by=by[:100],
        # Opening with ¥0 is not crossing a threshold: no event (module docstring of ledger).
        alert_state=opening_state(mode, alert_threshold_fen=alert, close_threshold_fen=close,
                                  grace_fen=terms.grace_fen or 0),
    )
    session.add(account)
    await session.flush()
    return account


@dataclass(frozen=True, slots=True)
class OpenedAccounts:
    opened: int  # accounts opened
    skipped: int  # households of the subtree that already had an open account or are closed


_OPEN_MANY = """
WITH candidates AS (
    SELECT h.id, h.status, EXISTS (SELECT FROM accounts a WHERE a.household_id = h.id AND a.status = 'open') AS has_open
    FROM households h JOIN areas ar ON ar.id = h.area_id
    WHERE ar.path LIKE $1
), opened AS (
    INSERT INTO accounts (household_id, mode, tariff_code, persons, balance_fen, alert_threshold_fen,
                          close_threshold_fen, grace_fen, vulnerable, status, alert_state, opened_at, opened_by)
    SELECT id, $2, $3, NULL, 0, $4, $5, $6, false, 'open', $7, $8, $9
    FROM candidates WHERE NOT has_open AND status <> 'closed'
    ORDER BY id
    ON CONFLICT (household_id) WHERE status = 'open' DO NOTHING
    RETURNING id
)
SELECT (SELECT count(*) FROM opened) AS opened, (SELECT count(*) FROM candidates) AS candidates
"""


async def open_accounts(
    session: AsyncSession,
    *,
    area_id: int,
    mode: BillingMode,
    tariff_code: str,
    terms: AccountTerms = AccountTerms(),
    now: datetime,
    by: str,
    tz: str | tzinfo = "Asia/Shanghai",
    scope_patterns: Sequence[str] | None = None,
) -> OpenedAccounts:
    """批量开户: open an account for every household of the area ``area_id`` and its
    subtree that has none and is not closed, with one mode, tariff and thresholds; the
    rest are counted as skipped. One statement; the caller commits."""
    area = await _area_for(session, area_id, scope_patterns, "areaId")
    mode = BillingMode(mode)
    alert = terms.alert_threshold_fen if terms.alert_threshold_fen is not None else DEFAULT_ALERT_FEN
    close = terms.close_threshold_fen if terms.close_threshold_fen is not None else DEFAULT_CLOSE_FEN
    _check_terms(terms, alert=alert, close=close)
    versions = await tariff_versions(session, code=tariff_code)
    if not versions:
        raise NotFound(field="tariffCode")
    if versions[0].valid_from > now.astimezone(as_zone(tz)).date():
        raise TariffNotInForce(field="tariffCode")
    state = opening_state(mode, alert_threshold_fen=alert, close_threshold_fen=close, grace_fen=terms.grace_fen or 0)
    driver = await raw_connection(session)
    row = await driver.fetchrow(_OPEN_MANY, area.path + "%", mode.value, tariff_code, alert, close, terms.grace_fen or 0,
                                state.value, now, by[:100])
    return OpenedAccounts(opened=row["opened"], skipped=row["candidates"] - row["opened"])


async def update_account(
    session: AsyncSession,
    *,
    account_id: int,
    terms: AccountTerms,
    scope_patterns: Sequence[str] | None = None,
    now: datetime | None = None,
    tz: str | tzinfo = "Asia/Shanghai",
) -> Account:
    """Change an open account's tariff, household size, thresholds or vulnerable flag.
    The alert state follows the new thresholds at once (and ``account.threshold_crossed``
    says so when it moves).

    A **tariff change** takes effect at ``now`` (default: the current time): the account is
    first settled to ``now`` under the old tariff, what the running cycle was charged and
    used is frozen, and the new tariff prices only what follows, continuing the cycle's
    tiers (backend.billing.settlement). The new tariff must be in force today
    (TARIFF_NOT_IN_FORCE) and have the same tier cycle (TARIFF_INVALID: a month-cycle
    account changes to a yearly tariff at a cycle's start by closing and reopening, never
    inside a cycle). A change of household size applies the same way from ``now``."""
    now = now or utcnow()
    account = await account_in_scope(session, account_id, scope_patterns, lock=True)
    if account.status is not AccountStatus.open:
        raise AccountClosed(field="id")
    alert = terms.alert_threshold_fen if terms.alert_threshold_fen is not None else account.alert_threshold_fen
    close = terms.close_threshold_fen if terms.close_threshold_fen is not None else account.close_threshold_fen
    _check_terms(terms, alert=alert, close=close)
    new_tariff = terms.tariff_code is not None and terms.tariff_code != account.tariff_code
    new_persons = terms.persons is not KEEP and terms.persons != account.persons
    if new_tariff:
        assert terms.tariff_code is not None
        versions = await tariff_versions(session, code=terms.tariff_code)
        if not versions:
            raise NotFound(field="tariffCode")
        if versions[0].valid_from > now.astimezone(as_zone(tz)).date():
            raise TariffNotInForce(field="tariffCode")
        current = await tariff_versions(session, code=account.tariff_code)
        if current and current[-1].rules["cycle"] != versions[-1].rules["cycle"]:
            raise TariffInvalid("只能改为阶梯周期相同的水价 (按月或按年)", "The new tariff must have the same tier cycle "
                                "(month or year)", field="tariffCode")
    if (new_tariff or new_persons) and account.mode is BillingMode.prepaid_station:
        await _freeze_running_cycle(session, account, now=now, tz=tz)
    if new_tariff or new_persons:
        account.tariff_since = now
    if new_tariff:
        account.tariff_code = terms.tariff_code  # type: ignore[assignment]
    if terms.persons is not KEEP:
        account.persons = terms.persons
    account.alert_threshold_fen, account.close_threshold_fen = alert, close
    if terms.grace_fen is not None:
        account.grace_fen = terms.grace_fen
    if terms.vulnerable is not None:
        account.vulnerable = terms.vulnerable
    await session.flush()
    assert account.id is not None
    locked = await lock_accounts(session, [account.id])
    await apply_alert_states(session, locked)
    await session.refresh(account)
    return account


_FREEZE = """
UPDATE prepaid_cycles SET base_fen = charged_fen, base_volume_m3 = volume_m3
WHERE account_id = $1 AND cycle_end > $2
"""


async def _freeze_running_cycle(session: AsyncSession, account: Account, *, now: datetime,
                                tz: str | tzinfo) -> None:
    """Settle ``account`` to ``now`` under its current terms and freeze the running cycle's
    charge and volume, so the new terms price only what follows."""
    assert account.id is not None
    await settle_accounts(session, account_ids=[account.id], as_of=now, modes=CHARGEABLE_MODES, tz=tz,
                          posted_by="改价结算")
    driver = await raw_connection(session)
    await driver.execute(_FREEZE, account.id, now.astimezone(as_zone(tz)).date())
    await session.refresh(account)


async def account_in_scope(session: AsyncSession, account_id: int, scope_patterns: Sequence[str] | None, *,
                           lock: bool = False, field: str = "id", household_ids: Sequence[int] | None = None) -> Account:
    """The account when its household lies in the scope (a staff caller's
    ``scope_patterns``) or among ``household_ids`` (a resident's bound households);
    NOT_FOUND otherwise, so an account outside them does not show it exists. With
    ``lock``, the account is locked once it is known to be in reach (a caller outside
    the scope never holds a lock on it)."""
    account = await session.get(Account, account_id)
    if account is None:
        raise NotFound(field=field)
    if household_ids is not None:
        if account.household_id not in household_ids:
            raise NotFound(field=field)
    else:
        await household_in_scope(session, household_id=account.household_id, scope_patterns=scope_patterns,
                                 field=field)
    if lock:
        await lock_accounts(session, [account_id])
        await session.refresh(account)
    return account


async def final_charge(
    session: AsyncSession,
    *,
    account_id: int,
    at: datetime,
    tz: str | tzinfo = "Asia/Shanghai",
    scope_patterns: Sequence[str] | None = None,
    now: datetime | None = None,
) -> PrepaidSettlement:
    """Price the account's usage up to ``at`` (its final reading) and mark it settled to
    ``at``: settlement's rule for a master-station prepaid or a postpaid account, over
    every cycle since the account opened (so a late reading not settled yet is caught);
    a card or meter prepaid account is only marked settled. An ``at`` before what was
    already settled changes nothing charged. With ``now``, an ``at`` after it is refused
    (BAD_USER_INPUT, field ``at``): a final reading is not taken in the future. The
    caller commits.

    Postpaid: a final bill up to ``at`` (:func:`backend.billing.bills.final_bill`; the
    result counts it as the one account charged, ``charged_fen`` the net debit after a
    replaced bill and a credit for over-billed volume, negative when the credit is
    larger); ACCOUNT_UNSETTLED when the period's bill has money allocated and
    would change."""
    if now is not None and at > now:
        raise BadUserInput("最终结算时间不能晚于当前时间", "`at` cannot be in the future", field="at")
    account = await account_in_scope(session, account_id, scope_patterns, lock=True)
    if account.status is not AccountStatus.open:
        raise AccountClosed(field="id")
    if account.mode is BillingMode.postpaid:
        from backend.billing import bills  # bills → allocations → late_fees import this module

        final = await bills.final_bill(session, account_id=account_id, at=at, by="最终结算", now=now or utcnow(), tz=tz)
        return PrepaidSettlement(1, int(final.bill_id is not None), final.net_fen, 0, (), ())
    if account.mode in CHARGEABLE_MODES:
        return await settle_accounts(session, account_ids=[account_id], as_of=at, since=account.opened_at,
                                     modes=CHARGEABLE_MODES, tz=tz, posted_by="最终结算")
    driver = await raw_connection(session)
    await driver.execute("UPDATE accounts SET settled_to = greatest(coalesce(settled_to, $2), $2) WHERE id = $1",
                         account_id, at)
    return PrepaidSettlement(1, 0, 0, 0, (), ())


# Readings of the household's meters, while they served it, after the account was settled.
_UNSETTLED = """
SELECT EXISTS (
    SELECT FROM meter_assignments ma JOIN readings r ON r.meter_id = ma.meter_id
    WHERE ma.household_id = $1 AND r.read_at > $2 AND r.read_at > ma.valid_from
      AND (ma.valid_to IS NULL OR r.read_at <= ma.valid_to)
)
"""


async def close_settled_account(
    session: AsyncSession,
    *,
    account_id: int,
    now: datetime,
    by: str,
    scope_patterns: Sequence[str] | None = None,
    tz: str | tzinfo = "Asia/Shanghai",
) -> Account:
    """销户 of a settled account with a zero balance (module docstring). Refusals:
    ACCOUNT_CLOSED; for a chargeable mode ACCOUNT_UNSETTLED, when a reading comes after
    what was settled or a settlement from the opening would still charge something (a
    late reading whose batch the handler has not settled yet); BALANCE_OUTSTANDING
    (field ``balance``)."""
    account = await account_in_scope(session, account_id, scope_patterns, lock=True)
    if account.status is not AccountStatus.open:
        raise AccountClosed(field="id")
    if account.mode in CHARGEABLE_MODES:
        driver = await raw_connection(session)
        settled_to = account.settled_to or account.opened_at
        if await driver.fetchval(_UNSETTLED, account.household_id, settled_to):
            raise AccountUnsettled(field="id")
        if account.mode is BillingMode.postpaid:
            from backend.billing import bills  # bills → allocations → late_fees import this module

            # What a final bill at settled_to would still bill (a late reading not billed).
            assert account.id is not None
            if await bills.unbilled_m3(session, account_id=account.id, household_id=account.household_id,
                                       opened_at=account.opened_at, to=settled_to) > 0:
                raise AccountUnsettled(field="id")
        else:
            await _probe_settlement(session, account, settled_to, tz)
    if account.balance_fen != 0:
        raise archive_errors.BalanceOutstanding(field="balance")
    account.status, account.closed_at, account.closed_by = AccountStatus.closed, now, by[:100]
    await session.flush()
    return account


async def _probe_settlement(session: AsyncSession, account: Account, settled_to: datetime, tz: str | tzinfo) -> None:
    """ACCOUNT_UNSETTLED when a settlement from the opening would still charge something."""
    assert account.id is not None
    async with session.begin_nested() as probe:  # what a settlement would charge now, then undone
        again = await settle_accounts(session, account_ids=[account.id], as_of=settled_to, since=account.opened_at,
                                      modes=CHARGEABLE_MODES, tz=tz)
        await probe.rollback()
    if again.charged:
        raise AccountUnsettled(field="id")


# The open master-station prepaid accounts of households in an area's subtree.
_PREPAID_OF_SUBTREE = """
SELECT a.id FROM accounts a JOIN households h ON h.id = a.household_id JOIN areas ar ON ar.id = h.area_id
WHERE ar.path LIKE $1 AND a.status = 'open' AND a.mode = 'prepaid_station'
ORDER BY a.id
"""


async def settle_area(
    session: AsyncSession,
    *,
    area_id: int,
    now: datetime,
    by: str,
    tz: str | tzinfo = "Asia/Shanghai",
    scope_patterns: Sequence[str] | None = None,
) -> PrepaidSettlement:
    """手工结算: settle every open master-station prepaid account of the area ``area_id``
    and its subtree to ``now`` (NOT_FOUND for an area outside the scope). The caller commits."""
    area = await _area_for(session, area_id, scope_patterns, "areaId")
    driver = await raw_connection(session)
    ids = [row["id"] for row in await driver.fetch(_PREPAID_OF_SUBTREE, area.path + "%")]
    if not ids:
        return PrepaidSettlement(0, 0, 0, 0, (), ())
    return await settle_accounts(session, account_ids=ids, as_of=now, tz=tz, posted_by=f"手工结算 {by}"[:100])


class BillingHouseholdHooks(HouseholdHooks):
    """Billing's part when a household closes or changes owner (module docstring)."""

    def __init__(self, tz: str | tzinfo = "Asia/Shanghai") -> None:
        self.tz = tz

    async def before_close(self, session: AsyncSession, household_id: int, *, now: datetime, by: str) -> None:
        account = await account_of_household(session, household_id)
        if account is not None:
            assert account.id is not None
            await close_settled_account(session, account_id=account.id, now=now, by=by)

    async def before_transfer(self, session: AsyncSession, household_id: int, *, at: datetime, by: str) -> None:
        account = await account_of_household(session, household_id)
        if account is not None and account.mode is BillingMode.prepaid_station:
            assert account.id is not None
            await settle_accounts(session, account_ids=[account.id], as_of=at, modes=CHARGEABLE_MODES, tz=self.tz,
                                  posted_by=f"过户结算 {by}"[:100])


def offered(settings: Settings) -> dict[str, Any]:
    """The declaration's services: ``household_hooks`` for the archives."""
    return {"household_hooks": BillingHouseholdHooks(settings.timezone)}

