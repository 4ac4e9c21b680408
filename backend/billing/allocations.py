"""Payments against bills (缴费销账, issue 17 item 4): which credit paid which bill
(``bill_allocations``), oldest bill first, each bill's late fee before its principal.

**Money available to bills.** A postpaid account's bills are ledger debits and its
payments credits, so what the credits left that no bill took yet is the account's
balance plus what its open bills owe *and have posted*: the unpaid principal, and the
posted late fee not paid (a waived bill's posted part was written off by a credit, so
it counts nothing). Posting a bill's accrued fee lowers the balance and raises what is
posted and owed by the same amount: it does not change the money available; the fee
becomes one more thing to cover.

**Allocation** (:func:`allocate_credit`): for each postpaid account (locked in id order
through ``ledger.lock_accounts`` before any bill; then its open bills ``FOR UPDATE`` in id
order, as the month-end posting locks them, so the two never deadlock), while money is
available, over its open bills — the ``bill_ids`` named first (oldest of them first), then
the others oldest first (period, id):

1. the fee accrued and not posted (``late_fees.late_fee_unposted_on``) is posted as a
   ``late_fee`` entry (key ``late-fee:<bill_id>:<posted total after>``, ref ``bill:<id>``):
   the fee read on that day is exactly the fee posted;
2. money goes to the fee owed, then to the principal; before the principal changes the
   fee accrued so far is folded (``late_fees.carry_to``) so later days accrue on what is
   still owed;
3. one ``bill_allocations`` row per bill touched, ``entry_id`` the credit that triggered it
   (a payment) or NULL when a bill took credit already on the account (after a billing
   run, a void, a reversal);
4. a bill whose principal and fee are both covered becomes ``paid`` (``paid_at``).

Money left after the last bill stays on the account as credit for the next bill. Other
billing modes are left alone (their money is a prepaid balance).

**Undoing** (:func:`undo_allocations`, a reversed payment): each of the payment's
allocations still standing gets a row of the opposite sign (``undoes_id``, ``entry_id``
the reversal entry); the bills go back to ``open`` with ``principal_paid_fen`` and
``late_fee_paid_fen`` lowered, the accrual folded at the reversal's day so the fee resumes
on the re-opened principal. A posted late-fee entry stays: the fee was owed and still
is. If the account then has less money than its bills have taken (a bill took, with no
entry, credit that the reversed payment had left), those credit-taking allocations are
released newest first, principal before fee, until it balances; if it has more (credit
from another payment), it is allocated again. A waived bill whose paid fee is undone
stays settled: the waiver said no more fee is owed, so the undone part moves to
``late_fee_waived_fen`` and is written off (``write_off``, key
``late-fee-waive:<bill_id>:<allocation id>``), keeping the fee's total and the ledger.

Every function takes the day (``on``, the utility's zone) and the instant (``now``); the
caller commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from backend.billing.errors import BillVoided
from backend.billing.late_fees import (
    BILL_STATE_COLUMNS,
    LateFeeState,
    carry_to,
    late_fee_key,
    late_fee_owed_on,
    late_fee_unposted_on,
)
from backend.billing.ledger import EntryIn, LockedAccount, lock_accounts, post_entries
from backend.billing.models import BillingMode, EntryKind
from backend.db import raw_connection
from backend.errors import BadUserInput, NotFound

__all__ = [
    "AllocationLine", "Allocations", "allocate_credit", "available_fen", "check_payable_bills", "undo_allocations",
]

MAX_NAMED_BILLS = 60  # five years of monthly bills: more in one payment is a mistake


@dataclass(frozen=True, slots=True)
class AllocationLine:
    """One ``bill_allocations`` row written (negative when it undoes one)."""

    bill_id: int
    account_id: int
    entry_id: int | None
    late_fee_fen: int
    principal_fen: int
    undoes_id: int | None = None


@dataclass(frozen=True, slots=True)
class Allocations:
    """What an allocation or its undoing wrote."""

    lines: tuple[AllocationLine, ...] = ()
    late_fee_posted_fen: int = 0  # late-fee entries posted on the way (fen, positive)
    paid_bill_ids: tuple[int, ...] = ()  # bills that became paid
    reopened_bill_ids: tuple[int, ...] = ()  # bills that went back to open

    def __add__(self, other: Allocations) -> Allocations:
        return Allocations(self.lines + other.lines, self.late_fee_posted_fen + other.late_fee_posted_fen,
                           self.paid_bill_ids + other.paid_bill_ids, self.reopened_bill_ids + other.reopened_bill_ids)


@dataclass(slots=True)
class _Bill:
    """A locked bill being worked on: its row's columns, changed in memory, written once."""

    id: int
    account_id: int
    period: date
    status: str
    state: LateFeeState
    paid_at: datetime | None = None
    changed: bool = False

    @classmethod
    def of(cls, row: Any) -> _Bill:
        return cls(row["id"], row["account_id"], row["period"], row["status"], LateFeeState.of(row))

    def posted_unpaid(self) -> int:
        """What of the bill is posted and not paid: unpaid principal + posted unpaid fee."""
        s = self.state
        fee = 0 if s.waived else s.late_fee_posted_fen - s.late_fee_paid_fen
        return s.amount_fen - s.principal_paid_fen + fee

    def settle_status(self, on: date, now: datetime) -> str | None:
        """Mark the bill paid or open as its figures say; the new status if it moved."""
        s = self.state
        paid = s.principal_paid_fen == s.amount_fen and late_fee_owed_on(s, on) == 0
        status = "paid" if paid else "open"
        if status == self.status:
            return None
        self.status, self.paid_at, self.changed = status, now if paid else None, True
        return status

    def move_principal(self, delta: int, on: date) -> None:
        """Change the principal paid by ``delta``, folding the accrual first."""
        carried, start = carry_to(self.state, on)
        self.state = replace(self.state, principal_paid_fen=self.state.principal_paid_fen + delta,
                             late_fee_carried=carried, late_fee_from=start)
        self.changed = True


def available_fen(balance_fen: int, bills: Iterable[_Bill]) -> int:
    """Money on the account not yet taken by its bills (module docstring)."""
    return balance_fen + sum(bill.posted_unpaid() for bill in bills)


async def check_payable_bills(session: AsyncSession, *, account_id: int, bill_ids: Sequence[int]) -> None:
    """Refuse naming bills a payment cannot pay: NOT_FOUND (field ``billIds``) for an
    unknown bill or another account's, BILL_VOIDED for a voided one. A paid bill named is
    no error: it takes nothing."""
    wanted = set(bill_ids)
    if len(wanted) > MAX_NAMED_BILLS:
        raise BadUserInput(f"一次最多指定 {MAX_NAMED_BILLS} 张账单", f"Name at most {MAX_NAMED_BILLS} bills",
                           field="billIds")
    driver = await raw_connection(session)
    rows = await driver.fetch("SELECT id, account_id, status FROM bills WHERE id = ANY($1::bigint[])", sorted(wanted))
    if len(rows) != len(wanted) or any(row["account_id"] != account_id for row in rows):
        raise NotFound(field="billIds")
    if any(row["status"] == "voided" for row in rows):
        raise BillVoided(field="billIds")


# The postpaid accounts among $1 with money for their bills, or with an open bill that
# owes nothing (a zero bill) to settle: read before locking, so a billing run that
# allocates for a whole city locks and loads only the few accounts with credit. A credit
# that arrives later is allocated by its own transaction, so nothing is missed.
_WITH_CREDIT = """
SELECT a.id FROM accounts a
WHERE a.id = ANY($1::bigint[]) AND a.mode = 'postpaid'
  AND (a.balance_fen + coalesce((
          SELECT sum(b.amount_fen - b.principal_paid_fen
                     + CASE WHEN b.late_fee_waived_at IS NULL THEN b.late_fee_posted_fen - b.late_fee_paid_fen
                            ELSE 0 END)
          FROM bills b WHERE b.account_id = a.id AND b.status = 'open'), 0) > 0
       OR EXISTS (SELECT 1 FROM bills b WHERE b.account_id = a.id AND b.status = 'open'
                  AND b.principal_paid_fen = b.amount_fen))
ORDER BY a.id
"""

_OPEN_BILLS = f"""
SELECT {BILL_STATE_COLUMNS}, paid_at FROM bills
WHERE account_id = ANY($1::bigint[]) AND status = 'open' ORDER BY id FOR UPDATE
"""

_LIVE_BILLS = f"""
SELECT {BILL_STATE_COLUMNS}, paid_at FROM bills
WHERE account_id = $1 AND status <> 'voided' ORDER BY id FOR UPDATE
"""

_UPDATE_BILLS = """
UPDATE bills b SET status = v.status, paid_at = v.paid_at, principal_paid_fen = v.principal_paid,
    late_fee_posted_fen = v.posted, late_fee_paid_fen = v.fee_paid, late_fee_waived_fen = v.waived,
    late_fee_carried = v.carried, late_fee_from = v.fee_from
FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[],
            $8::numeric[], $9::date[])
     AS v(id, status, paid_at, principal_paid, posted, fee_paid, waived, carried, fee_from)
WHERE b.id = v.id
"""

_INSERT_ALLOCATIONS = """
INSERT INTO bill_allocations (bill_id, account_id, entry_id, late_fee_fen, principal_fen, undoes_id, allocated_at)
SELECT v.bill_id, v.account_id, v.entry_id, v.fee, v.principal, v.undoes_id, $7
FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[]) WITH ORDINALITY
     AS v(bill_id, account_id, entry_id, fee, principal, undoes_id, ord)
ORDER BY v.ord
"""


async def _write(session: AsyncSession, bills: Iterable[_Bill], lines: Sequence[AllocationLine],
                 now: datetime) -> None:
    driver = await raw_connection(session)
    changed = [bill for bill in bills if bill.changed]
    if changed:
        s = [bill.state for bill in changed]
        await driver.execute(
            _UPDATE_BILLS, [b.id for b in changed], [b.status for b in changed], [b.paid_at for b in changed],
            [x.principal_paid_fen for x in s], [x.late_fee_posted_fen for x in s], [x.late_fee_paid_fen for x in s],
            [x.late_fee_waived_fen for x in s], [x.late_fee_carried for x in s], [x.late_fee_from for x in s])
    if lines:
        await driver.execute(
            _INSERT_ALLOCATIONS, [x.bill_id for x in lines], [x.account_id for x in lines],
            [x.entry_id for x in lines], [x.late_fee_fen for x in lines], [x.principal_fen for x in lines],
            [x.undoes_id for x in lines], now)


def _allocate_account(account: LockedAccount, bills: list[_Bill], *, on: date, now: datetime, entry_id: int | None,
                      named: set[int], fees: list[EntryIn], lines: list[AllocationLine], paid: list[int]) -> None:
    """Allocate ``account``'s available money to ``bills`` (its open bills, locked) in memory."""
    available = available_fen(account.balance_fen, bills)
    for bill in sorted(bills, key=lambda b: (b.id not in named, b.period, b.id)):
        if available <= 0:
            # No money left: only a bill that owes nothing (a zero bill) is settled.
            if bill.settle_status(on, now) == "paid":
                paid.append(bill.id)
            continue
        unposted = late_fee_unposted_on(bill.state, on)
        if unposted > 0:
            posted = bill.state.late_fee_posted_fen + unposted
            bill.state, bill.changed = replace(bill.state, late_fee_posted_fen=posted), True
            fees.append(EntryIn(account_id=account.id, kind=EntryKind.late_fee, amount_fen=-unposted,
                                idempotency_key=late_fee_key(bill.id, posted), ref=f"bill:{bill.id}",
                                note=f"滞纳金 {bill.period:%Y-%m} 至 {on.isoformat()}"))
        fee = min(available, late_fee_owed_on(bill.state, on))
        if fee > 0:
            bill.state = replace(bill.state, late_fee_paid_fen=bill.state.late_fee_paid_fen + fee)
            bill.changed = True
            available -= fee
        principal = min(available, bill.state.amount_fen - bill.state.principal_paid_fen)
        if principal > 0:
            bill.move_principal(principal, on)
            available -= principal
        if fee or principal:
            lines.append(AllocationLine(bill.id, account.id, entry_id, fee, principal))
        if bill.settle_status(on, now) == "paid":
            paid.append(bill.id)


async def allocate_credit(
    session: AsyncSession,
    *,
    account_ids: Sequence[int],
    on: date,
    now: datetime,
    entry_id: int | None = None,
    bill_ids: Sequence[int] = (),
    by: str = "系统",
    entry_ids: Mapping[int, int] | None = None,
) -> Allocations:
    """Allocate the money available on each of ``account_ids`` (postpaid ones; others are
    skipped) to its open bills as of day ``on`` (module docstring). ``entry_id`` is the
    credit that brought the money (one account's payment) or None; ``entry_ids`` names
    each account's own credit instead (a day of many accounts' payments, as the demo's
    history posts them); ``bill_ids`` are paid first (check them with
    :func:`check_payable_bills`). Set-based: a few statements for any number of accounts."""
    driver = await raw_connection(session)
    candidates = [row[0] for row in await driver.fetch(_WITH_CREDIT, sorted(set(account_ids)))]
    accounts = await lock_accounts(session, candidates)
    postpaid = sorted(i for i, a in accounts.items() if a.mode is BillingMode.postpaid)
    if not postpaid:
        return Allocations()
    by_account: dict[int, list[_Bill]] = {}
    for row in await driver.fetch(_OPEN_BILLS, postpaid):
        by_account.setdefault(row["account_id"], []).append(_Bill.of(row))
    fees: list[EntryIn] = []
    lines: list[AllocationLine] = []
    paid: list[int] = []
    named = set(bill_ids)
    for account_id in postpaid:
        credit = entry_ids.get(account_id, entry_id) if entry_ids is not None else entry_id
        _allocate_account(accounts[account_id], by_account.get(account_id, []), on=on, now=now, entry_id=credit,
                          named=named, fees=fees, lines=lines, paid=paid)
    if fees:
        await post_entries(session, fees, posted_by=by, posted_at=now)
    await _write(session, (bill for bills in by_account.values() for bill in bills), lines, now)
    return Allocations(tuple(lines), -sum(f.amount_fen for f in fees), tuple(paid))


_STANDING = """
SELECT a.id, a.bill_id, a.entry_id,
       a.late_fee_fen + coalesce(sum(u.late_fee_fen), 0) AS fee,
       a.principal_fen + coalesce(sum(u.principal_fen), 0) AS principal
FROM bill_allocations a
JOIN bills b ON b.id = a.bill_id
LEFT JOIN bill_allocations u ON u.undoes_id = a.id
WHERE b.account_id = $1 AND b.status <> 'voided' AND a.undoes_id IS NULL
  AND (a.entry_id = $2 OR a.entry_id IS NULL)
GROUP BY a.id
HAVING a.late_fee_fen + coalesce(sum(u.late_fee_fen), 0) > 0 OR a.principal_fen + coalesce(sum(u.principal_fen), 0) > 0
ORDER BY a.id DESC
"""


def _take_back(bill: _Bill, *, fee: int, principal: int, on: date, now: datetime, undoes_id: int,
               entry_id: int | None, write_offs: list[EntryIn], lines: list[AllocationLine],
               reopened: list[int]) -> None:
    """Undo ``fee`` and ``principal`` of one allocation of ``bill`` in memory."""
    if principal:
        bill.move_principal(-principal, on)
    if fee:
        state = replace(bill.state, late_fee_paid_fen=bill.state.late_fee_paid_fen - fee)
        if state.waived:
            # The waiver said no more fee is owed: the undone part joins the waived part.
            state = replace(state, late_fee_waived_fen=state.late_fee_waived_fen + fee)
            write_offs.append(EntryIn(account_id=bill.account_id, kind=EntryKind.write_off, amount_fen=fee,
                                      idempotency_key=f"late-fee-waive:{bill.id}:{undoes_id}", ref=f"bill:{bill.id}",
                                      note=f"减免滞纳金 {bill.period:%Y-%m} (冲正)"))
        bill.state, bill.changed = state, True
    lines.append(AllocationLine(bill.id, bill.account_id, entry_id, -fee, -principal, undoes_id))
    if bill.settle_status(on, now) == "open":
        reopened.append(bill.id)


async def undo_allocations(
    session: AsyncSession,
    *,
    account_id: int,
    entry_id: int,
    reversal_entry_id: int | None,
    on: date,
    now: datetime,
    by: str = "系统",
) -> Allocations:
    """Undo the allocations of credit ``entry_id`` (its payment was reversed by
    ``reversal_entry_id``, already posted), then make the account's bills agree with its
    money again (module docstring). Nothing for an account that is not postpaid."""
    accounts = await lock_accounts(session, [account_id])
    account = accounts.get(account_id)
    if account is None or account.mode is not BillingMode.postpaid:
        return Allocations()
    driver = await raw_connection(session)
    bills = {row["id"]: _Bill.of(row) for row in await driver.fetch(_LIVE_BILLS, account_id)}
    standing = await driver.fetch(_STANDING, account_id, entry_id)
    write_offs: list[EntryIn] = []
    lines: list[AllocationLine] = []
    reopened: list[int] = []

    def take_back(row: Any, fee: int, principal: int) -> None:
        _take_back(bills[row["bill_id"]], fee=fee, principal=principal, on=on, now=now, undoes_id=row["id"],
                   entry_id=reversal_entry_id, write_offs=write_offs, lines=lines, reopened=reopened)

    for row in standing:
        if row["entry_id"] == entry_id:
            take_back(row, int(row["fee"]), int(row["principal"]))
    # A write-off raises the balance by what it covers: count it in.
    short = -(available_fen(account.balance_fen + sum(w.amount_fen for w in write_offs), bills.values()))
    for row in standing:
        if short <= 0:
            break
        if row["entry_id"] is None:
            principal = min(int(row["principal"]), short)
            fee = min(int(row["fee"]), short - principal)
            take_back(row, fee, principal)
            short -= principal + fee
    if write_offs:
        await post_entries(session, write_offs, posted_by=by, posted_at=now)
    await _write(session, bills.values(), lines, now)
    undone = Allocations(tuple(lines), 0, (), tuple(dict.fromkeys(reopened)))
    if short < 0:
        # Credit from elsewhere is still on the account: it pays the re-opened bills.
        undone = undone + await allocate_credit(session, account_ids=[account_id], on=on, now=now, by=by)
    return undone
