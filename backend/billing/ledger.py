"""The ledger (账务): the one writer of ledger entries and account balances (DESIGN.md
"Money", "Contracts": ``post_entry``).

Every change of a balance is an entry carrying the balance after it; the account row's
balance changes in the same statement batch, under a row lock, so the balance always
equals the sum of the account's entries (``shuiwu check``'s ``billing.ledger`` line and the
tests hold it to that). Entries are never edited or deleted (a trigger refuses it): a
mistake is undone by a ``reversal``, a re-priced cycle by an ``adjustment``.

**Signs.** ``amount_fen`` is the change of the balance: credits (``recharge``,
``payment``, ``write_off``) are positive, debits (``charge``, ``bill``, ``late_fee``,
``refund``) negative, ``adjustment`` and ``reversal`` either; zero is refused, and so is
anything beyond ¥10 billion.

**Idempotency.** Every entry has a caller-chosen ``idempotency_key`` (``payment:42``,
``prepaid:7:2026-11-01:3``). Posting a key again with the same account, kind and amount
returns the stored entry (``replayed``) and changes nothing; with anything else it is
IDEMPOTENCY_CONFLICT.

**Locks.** A posting locks its accounts in id order (``FOR UPDATE``), as settlement and a
threshold change do, so two of them never deadlock; concurrent postings to one account
serialize on its row.

**Thresholds.** A master-station prepaid account (``prepaid_station``) is ``normal`` above
its alert threshold, ``alert`` at or below it, and ``close`` at or below the close
threshold minus the grace amount (透支额度: how far the balance may go below the close
threshold before the valve closes). Other modes keep their money on a card or a meter,
or are billed (postpaid), and stay ``normal``. Whenever a posting (or a change of the
thresholds, :func:`apply_alert_states`) moves accounts into another state, one
``account.threshold_crossed`` event per state reached names them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from backend.billing.errors import AccountClosed, EntryAmountInvalid, IdempotencyConflict
from backend.billing.events import AccountThresholdCrossed
from backend.billing.models import AccountStatus, AlertState, BillingMode, EntryKind
from backend.db import raw_connection
from backend.errors import DomainError, NotFound
from backend.events.service import emit_event

__all__ = [
    "ALERT_STATES", "CREDIT_KINDS", "DEBIT_KINDS", "MAX_ENTRY_FEN", "EntryIn", "PostedEntry", "alert_state_of", "apply_alert_states",
    "lock_accounts", "opening_state", "post_entries", "post_entry",
]

CREDIT_KINDS = frozenset({EntryKind.recharge, EntryKind.payment, EntryKind.write_off})
DEBIT_KINDS = frozenset({EntryKind.charge, EntryKind.bill, EntryKind.late_fee, EntryKind.refund})
MAX_ENTRY_FEN = 10**12  # ¥10 billion: no water bill or payment comes near it
MAX_KEY_LENGTH = 200


@dataclass(frozen=True, slots=True)
class EntryIn:
    """One entry to post (:func:`post_entries`)."""

    account_id: int
    kind: EntryKind
    amount_fen: int
    idempotency_key: str
    ref: str = ""
    note: str = ""
    cycle_start: date | None = None
    volume_m3: Decimal | None = None


@dataclass(frozen=True, slots=True)
class PostedEntry:
    id: int
    account_id: int
    kind: EntryKind
    amount_fen: int
    balance_after_fen: int
    posted_at: datetime
    # True when the idempotency key was posted before: nothing changed this time.
    replayed: bool = False


@dataclass(slots=True)
class LockedAccount:
    """An account row as a posting needs it, locked ``FOR UPDATE``."""

    id: int
    household_id: int
    mode: BillingMode
    status: AccountStatus
    balance_fen: int
    alert_threshold_fen: int
    close_threshold_fen: int
    grace_fen: int
    alert_state: AlertState
    vulnerable: bool


def alert_state_of(account: LockedAccount, balance_fen: int | None = None) -> AlertState:
    """The state ``account`` stands in with ``balance_fen`` (default: its balance)."""
    balance = account.balance_fen if balance_fen is None else balance_fen
    if account.mode is not BillingMode.prepaid_station:
        return AlertState.normal
    if balance <= account.close_threshold_fen - account.grace_fen:
        return AlertState.close
    if balance <= account.alert_threshold_fen:
        return AlertState.alert
    return AlertState.normal


def opening_state(mode: BillingMode, *, alert_threshold_fen: int, close_threshold_fen: int,
                  grace_fen: int) -> AlertState:
    """The state an account opens in, with a zero balance. Opening is not crossing a
    threshold: no event is emitted (nobody has been told anything yet, and a valve
    handler must not shut the valves of a fresh migration); the first recharge that
    lifts the balance emits ``normal``."""
    return alert_state_of(LockedAccount(0, 0, mode, AccountStatus.open, 0, alert_threshold_fen, close_threshold_fen,
                                        grace_fen, AlertState.normal, False))


_MODES = {mode.value: mode for mode in BillingMode}
_STATUSES = {status.value: status for status in AccountStatus}
ALERT_STATES = {state.value: state for state in AlertState}
# By value or member (a StrEnum member hashes as its value): checked entries' kinds are
# looked up, not constructed (a billing run posts a city's bills at once).
_KINDS = {kind.value: kind for kind in EntryKind}

_LOCK = """
SELECT id, household_id, mode, status, balance_fen, alert_threshold_fen, close_threshold_fen, grace_fen,
       alert_state, vulnerable
FROM accounts WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE
"""


async def lock_accounts(session: AsyncSession, account_ids: Iterable[int]) -> dict[int, LockedAccount]:
    """Lock the accounts ``account_ids`` in id order and return them by id (missing ids
    are left out). Every writer of accounts locks this way, so none deadlocks another."""
    ids = sorted(set(account_ids))
    if not ids:
        return {}
    driver = await raw_connection(session)
    rows = await driver.fetch(_LOCK, ids)
    # The columns' CHECKs hold them to the enums' values: looked up, not constructed (a
    # settlement locks 100k rows).
    return {row["id"]: LockedAccount(
        id=row["id"], household_id=row["household_id"], mode=_MODES[row["mode"]],
        status=_STATUSES[row["status"]], balance_fen=row["balance_fen"],
        alert_threshold_fen=row["alert_threshold_fen"], close_threshold_fen=row["close_threshold_fen"],
        grace_fen=row["grace_fen"], alert_state=ALERT_STATES[row["alert_state"]], vulnerable=row["vulnerable"],
    ) for row in rows}


def _check_entry(entry: EntryIn, field_prefix: str = "") -> None:
    amount = entry.amount_fen
    if isinstance(amount, bool) or not isinstance(amount, int) or amount == 0 or abs(amount) > MAX_ENTRY_FEN:
        raise EntryAmountInvalid(field=f"{field_prefix}amount")
    kind = EntryKind(entry.kind)
    if (kind in CREDIT_KINDS and amount < 0) or (kind in DEBIT_KINDS and amount > 0):
        raise EntryAmountInvalid(field=f"{field_prefix}amount")
    if not entry.idempotency_key or len(entry.idempotency_key) > MAX_KEY_LENGTH:
        raise DomainError("幂等键须为 1 至 200 个字符", "The idempotency key must be 1 to 200 characters",
                          field=f"{field_prefix}idempotencyKey")
    if len(entry.ref) > 100 or len(entry.note) > 200:
        raise DomainError("摘要过长", "The entry's reference or note is too long", field=f"{field_prefix}note")


_EXISTING = """
SELECT id, idempotency_key, account_id, kind, amount_fen, balance_after_fen, posted_at
FROM ledger_entries WHERE idempotency_key = ANY($1::text[])
"""

_INSERT = """
INSERT INTO ledger_entries (account_id, kind, amount_fen, balance_after_fen, ref, idempotency_key, cycle_start,
                            volume_m3, note, posted_by, posted_at)
SELECT e.account_id, e.kind, e.amount_fen, e.balance_after_fen, e.ref, e.idempotency_key, e.cycle_start,
       e.volume_m3, e.note, $10, coalesce($11::timestamptz, now())
FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::date[],
            $8::numeric[], $9::text[]) WITH ORDINALITY
     AS e(account_id, kind, amount_fen, balance_after_fen, ref, idempotency_key, cycle_start, volume_m3, note, ord)
ORDER BY e.ord
RETURNING id, idempotency_key, posted_at
"""

_UPDATE_BALANCES = """
UPDATE accounts a SET balance_fen = v.balance_fen, alert_state = v.alert_state
FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS v(id, balance_fen, alert_state)
WHERE a.id = v.id
"""


async def post_entries(
    session: AsyncSession,
    entries: Sequence[EntryIn],
    *,
    posted_by: str = "",
    posted_at: datetime | None = None,
) -> list[PostedEntry]:
    """Post ``entries`` in order (several may hit one account: each sees the balance the
    one before left) and return them as posted, in the same order. A handful of
    statements for any number of entries; the caller commits. ``posted_at`` backdates the
    entries (the demo's history); None is the transaction's time.

    Refusals (nothing written): ENTRY_AMOUNT_INVALID (zero, the wrong sign for the kind,
    beyond ¥10 billion), NOT_FOUND (an unknown account, field ``accountId``),
    ACCOUNT_CLOSED, IDEMPOTENCY_CONFLICT (a key posted before with another account, kind
    or amount, or twice in one call with different contents)."""
    if not entries:
        return []
    for entry in entries:
        _check_entry(entry)
    accounts = await lock_accounts(session, (entry.account_id for entry in entries))
    driver = await raw_connection(session)
    keys = [entry.idempotency_key for entry in entries]
    stored = {row["idempotency_key"]: row for row in await driver.fetch(_EXISTING, keys)}
    seen: dict[str, EntryIn] = {}
    fresh: list[EntryIn] = []
    for entry in entries:
        if entry.account_id not in accounts:
            raise NotFound(field="accountId")
        previous = stored.get(entry.idempotency_key)
        if previous is not None:
            if (previous["account_id"], previous["kind"], previous["amount_fen"]) != (
                    entry.account_id, _KINDS[entry.kind].value, entry.amount_fen):
                raise IdempotencyConflict(field="idempotencyKey")
            continue
        twin = seen.get(entry.idempotency_key)
        if twin is not None:
            if twin != entry:
                raise IdempotencyConflict(field="idempotencyKey")
            continue
        seen[entry.idempotency_key] = entry
        if accounts[entry.account_id].status is not AccountStatus.open:
            raise AccountClosed(field="accountId")
        fresh.append(entry)

    before = {account_id: account.alert_state for account_id, account in accounts.items()}
    balances_after: list[int] = []
    for entry in fresh:
        account = accounts[entry.account_id]
        account.balance_fen += entry.amount_fen
        balances_after.append(account.balance_fen)
    inserted: dict[str, tuple[int, datetime]] = {}
    if fresh:
        try:
            rows = await driver.fetch(
                _INSERT,
            [e.account_id for e in fresh], [_KINDS[e.kind].value for e in fresh], [e.amount_fen for e in fresh],
                balances_after, [e.ref for e in fresh], [e.idempotency_key for e in fresh],
                [e.cycle_start for e in fresh], [e.volume_m3 for e in fresh], [e.note for e in fresh],
                posted_by[:100], posted_at,
            )
        except asyncpg.UniqueViolationError:
            # The same key posted at once to another account (ours are locked, so a race on
            # one account replays instead): the transaction is spoiled and rolls back.
            raise IdempotencyConflict(field="idempotencyKey") from None
        inserted = {row["idempotency_key"]: (row["id"], row["posted_at"]) for row in rows}
        touched = sorted({entry.account_id for entry in fresh})
        for account_id in touched:
            accounts[account_id].alert_state = alert_state_of(accounts[account_id])
        await driver.execute(
            _UPDATE_BALANCES, touched, [accounts[i].balance_fen for i in touched],
            [accounts[i].alert_state.value for i in touched],
        )
        await _emit_crossings(session, accounts, before)

    posted: list[PostedEntry] = []
    balance_of_fresh = dict(zip((e.idempotency_key for e in fresh), balances_after, strict=True))
    for entry in entries:
        key = entry.idempotency_key
        if key in inserted:
            entry_id, when = inserted[key]
            posted.append(PostedEntry(entry_id, entry.account_id, _KINDS[entry.kind], entry.amount_fen,
                                      balance_of_fresh[key], when))
        else:
            row: Any = stored.get(key)
            if row is None:  # a twin of an entry of this call
                entry_id, when = inserted[key]
                posted.append(PostedEntry(entry_id, entry.account_id, _KINDS[entry.kind], entry.amount_fen,
                                          balance_of_fresh[key], when, replayed=True))
            else:
                posted.append(PostedEntry(row["id"], row["account_id"], EntryKind(row["kind"]), row["amount_fen"],
                                          row["balance_after_fen"], row["posted_at"], replayed=True))
    return posted


async def post_entry(
    session: AsyncSession,
    *,
    account_id: int,
    kind: EntryKind,
    amount_fen: int,
    ref: str,
    idempotency_key: str,
    note: str = "",
    posted_by: str = "",
    posted_at: datetime | None = None,
) -> PostedEntry:
    """Post one entry (DESIGN.md's signature; :func:`post_entries` is the set form and
    says what is refused). The caller commits."""
    (posted,) = await post_entries(
        session, [EntryIn(account_id=account_id, kind=kind, amount_fen=amount_fen, ref=ref,
                          idempotency_key=idempotency_key, note=note)],
        posted_by=posted_by, posted_at=posted_at,
    )
    return posted


async def apply_alert_states(session: AsyncSession, accounts: dict[int, LockedAccount]) -> None:
    """Store the state each of ``accounts`` (locked by the caller, thresholds or mode just
    changed) now stands in, and emit ``account.threshold_crossed`` for those that moved."""
    before = {account_id: account.alert_state for account_id, account in accounts.items()}
    changed = []
    for account in accounts.values():
        account.alert_state = alert_state_of(account)
        if account.alert_state is not before[account.id]:
            changed.append(account.id)
    if changed:
        driver = await raw_connection(session)
        await driver.execute("UPDATE accounts a SET alert_state = v.s FROM unnest($1::bigint[], $2::text[]) AS v(id, s) "
                             "WHERE a.id = v.id", changed, [accounts[i].alert_state.value for i in changed])
        await _emit_crossings(session, accounts, before)


async def _emit_crossings(session: AsyncSession, accounts: dict[int, LockedAccount],
                          before: dict[int, AlertState]) -> None:
    by_state: dict[AlertState, list[LockedAccount]] = {}
    for account_id, account in sorted(accounts.items()):
        if account.alert_state is not before[account_id]:
            by_state.setdefault(account.alert_state, []).append(account)
    for state, moved in by_state.items():
        await emit_event(session, "account.threshold_crossed", AccountThresholdCrossed(
            account_ids=tuple(a.id for a in moved), household_ids=tuple(a.household_id for a in moved), to_state=state,
        ), key=f"account:{moved[0].id}" if len(moved) == 1 else None)
