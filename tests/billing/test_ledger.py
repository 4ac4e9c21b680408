"""The ledger: every balance change is an entry with the balance after it, through
``post_entry`` alone; refusals write nothing; keys make a posting idempotent; entries are
never edited; threshold crossings are events in either direction."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from backend.billing.accounts import AccountTerms
from backend.billing.ledger import EntryIn, post_entries, post_entry
from backend.billing.models import EntryKind
from backend.errors import DomainError, ErrorCode
from tests.billing.factories import at, balance, entries, ledger_sum, served_household, tariff


async def threshold_events(session: AsyncSession) -> list[tuple[list[int], str]]:
    rows = (await session.execute(text(
        "SELECT payload FROM domain_events WHERE kind = 'account.threshold_crossed' ORDER BY id"))).scalars().all()
    return [(row["account_ids"], row["to_state"]) for row in rows]


async def test_each_entry_carries_the_balance_after_it_and_the_balance_is_their_sum(session: AsyncSession) -> None:
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 1, 1))
    account = served.account_id
    first = await post_entry(session, account_id=account, kind=EntryKind.recharge, amount_fen=10000, ref="payment:1",
                             idempotency_key="t:1")
    second = await post_entry(session, account_id=account, kind=EntryKind.charge, amount_fen=-1234, ref="cycle:x",
                              idempotency_key="t:2")
    third = await post_entry(session, account_id=account, kind=EntryKind.adjustment, amount_fen=34, ref="by hand",
                             idempotency_key="t:3")
    assert [first.balance_after_fen, second.balance_after_fen, third.balance_after_fen] == [10000, 8766, 8800]
    assert await balance(session, account) == await ledger_sum(session, account) == 8800


async def test_a_key_posted_again_changes_nothing_and_a_key_reused_for_another_entry_is_refused(
        session: AsyncSession) -> None:
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 1, 1))
    account = served.account_id
    first = await post_entry(session, account_id=account, kind=EntryKind.recharge, amount_fen=5000, ref="",
                             idempotency_key="pay:9")
    again = await post_entry(session, account_id=account, kind=EntryKind.recharge, amount_fen=5000, ref="",
                             idempotency_key="pay:9")
    assert again.replayed and again.id == first.id and await balance(session, account) == 5000
    with pytest.raises(DomainError) as refused:
        await post_entry(session, account_id=account, kind=EntryKind.recharge, amount_fen=6000, ref="",
                         idempotency_key="pay:9")
    assert refused.value.code is ErrorCode.IDEMPOTENCY_CONFLICT
    assert len(await entries(session, account)) == 1


@pytest.mark.parametrize(("kind", "amount"), [
    (EntryKind.recharge, 0), (EntryKind.recharge, -100), (EntryKind.payment, -1), (EntryKind.charge, 100),
    (EntryKind.bill, 1), (EntryKind.refund, 500), (EntryKind.adjustment, 0), (EntryKind.recharge, 10**12 + 1),
])
async def test_an_amount_of_the_wrong_sign_zero_or_absurd_is_refused_and_nothing_is_written(
        session: AsyncSession, kind: EntryKind, amount: int) -> None:
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 1, 1))
    with pytest.raises(DomainError) as refused:
        await post_entries(session, [
            EntryIn(served.account_id, EntryKind.recharge, 100, "ok:1"),
            EntryIn(served.account_id, kind, amount, "bad:1"),
        ])
    assert refused.value.code is ErrorCode.ENTRY_AMOUNT_INVALID
    assert await entries(session, served.account_id) == [] and await balance(session, served.account_id) == 0


async def test_entries_cannot_be_edited_or_deleted(session: AsyncSession) -> None:
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 1, 1))
    await post_entry(session, account_id=served.account_id, kind=EntryKind.recharge, amount_fen=100, ref="",
                     idempotency_key="x:1")
    for statement in ("UPDATE ledger_entries SET amount_fen = 1", "DELETE FROM ledger_entries"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with session.begin_nested():
                await session.execute(text(statement + " WHERE account_id = :a"), {"a": served.account_id})


async def test_crossing_a_threshold_emits_an_event_each_way(session: AsyncSession) -> None:
    terms = AccountTerms(alert_threshold_fen=2000, close_threshold_fen=0, grace_fen=500)
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 1, 1), terms=terms)
    account = served.account_id
    await session.execute(text("DELETE FROM domain_events WHERE kind = 'account.threshold_crossed'"))

    async def post(kind: EntryKind, fen: int, key: str) -> None:
        await post_entry(session, account_id=account, kind=kind, amount_fen=fen, ref="", idempotency_key=key)

    await post(EntryKind.recharge, 5000, "a")  # ¥0 (close, opened so) → ¥50: normal
    await post(EntryKind.charge, -2000, "b")  # ¥30: still normal, no event
    await post(EntryKind.charge, -1000, "c")  # ¥20: at the alert threshold
    await post(EntryKind.charge, -2400, "d")  # −¥4: below close but within the ¥5 grace: still alert
    await post(EntryKind.charge, -100, "e")  # −¥5: close
    await post(EntryKind.recharge, 10000, "f")  # ¥95: normal again
    assert await threshold_events(session) == [
        ([account], "normal"), ([account], "alert"), ([account], "close"), ([account], "normal")]


async def test_posting_to_a_closed_or_unknown_account_is_refused(session: AsyncSession) -> None:
    served = await served_household(session, raw_tariff=tariff(), opened_at=at(2026, 1, 1))
    await session.execute(text("UPDATE accounts SET status = 'closed' WHERE id = :a"), {"a": served.account_id})
    for account_id, code in ((served.account_id, ErrorCode.ACCOUNT_CLOSED), (-1, ErrorCode.NOT_FOUND)):
        with pytest.raises(DomainError) as refused:
            await post_entry(session, account_id=account_id, kind=EntryKind.recharge, amount_fen=100, ref="",
                             idempotency_key=f"z:{account_id}")
        assert refused.value.code is code
