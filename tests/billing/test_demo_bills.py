"""The postpaid demo history (backend.billing.demo_bills) on the small demo: every ended
month billed for every postpaid account on the 3rd at 02:30, most bills paid within their
due days with the money allocated as the counter would, some paid late with the fee
posted at payment, a few households overdue at ``now``, a business in credit, bill.issued
kept out of the relay, and nothing written twice."""

from __future__ import annotations

from datetime import date, datetime, time

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.billing.demo import demo_step
from backend.billing.late_fees import late_fee_owed
from backend.domain import DemoPlan, system_principal
from backend.domains import installed
from tests import small_demo
from tests.small_demo import HOUSEHOLDS, NOW, SEED, SHANGHAI
from tests.small_demo import rows as _rows

# This module reads a copy of the small demo, loaded once per run (tests/small_demo.py).
database_url, demo = small_demo.database_url, small_demo.demo

# The window opens 2025-10-20; October 2026 is the last period issued by NOW (2026-11-03).
PERIODS = [date(2025 + (9 + i) // 12, (9 + i) % 12 + 1, 1) for i in range(13)]


async def test_every_ended_month_is_billed_for_every_postpaid_account_on_the_3rd_at_0230(
    demo: None, committed_sessions: async_sessionmaker[AsyncSession]
) -> None:
    accounts = [row[0] for row in await _rows(committed_sessions,
                                              "SELECT id FROM accounts WHERE mode = 'postpaid' ORDER BY id")]
    assert len(accounts) >= 5
    billed = await _rows(committed_sessions, """
        SELECT b.account_id, array_agg(b.period ORDER BY b.period), bool_and(b.issued_by = '系统'),
               bool_and(b.entry_id IS NULL OR e.posted_at = b.issued_at), array_agg(DISTINCT b.issued_at)
        FROM bills b LEFT JOIN ledger_entries e ON e.id = b.entry_id GROUP BY b.account_id ORDER BY b.account_id""")
    pending = dict(await _rows(committed_sessions, "SELECT account_id, array_agg(period) FROM reading_reviews "
                                                   "WHERE state = 'pending' GROUP BY account_id"))
    assert [row[0] for row in billed] == accounts
    for account_id, periods, by_system, posted_at_issue, issued in billed:
        assert periods == [p for p in PERIODS if p not in pending.get(account_id, [])]  # type: ignore[union-attr]
        assert by_system and posted_at_issue
        for instant in issued:  # type: ignore[attr-defined]
            local = instant.astimezone(SHANGHAI)
            assert local.day == 3 and local.time() == time(2, 30)
    [(runs, voided)] = await _rows(committed_sessions, "SELECT (SELECT count(*) FROM billing_runs), "
                                                       "(SELECT count(*) FROM bills WHERE status = 'voided')")
    assert runs == len(PERIODS) and voided == 0  # nobody held: one run a month


async def test_most_bills_are_paid_in_time_some_late_with_their_fee_and_a_few_households_stand_overdue(
    demo: None, committed_sessions: async_sessionmaker[AsyncSession]
) -> None:
    [(bills, paid, paid_in_time, paid_late_with_fee, open_overdue, overdue_accounts, fee_entries)] = await _rows(
        committed_sessions, """
        SELECT count(*), count(*) FILTER (WHERE status = 'paid'),
               count(*) FILTER (WHERE status = 'paid' AND (paid_at AT TIME ZONE 'Asia/Shanghai')::date <= due_date),
               count(*) FILTER (WHERE status = 'paid' AND late_fee_paid_fen > 0
                                AND (paid_at AT TIME ZONE 'Asia/Shanghai')::date > due_date),
               count(*) FILTER (WHERE status = 'open' AND due_date < :today),
               count(DISTINCT account_id) FILTER (WHERE status = 'open' AND due_date < :today),
               (SELECT count(*) FROM ledger_entries WHERE kind = 'late_fee')
        FROM bills""", today=NOW.date())
    assert paid_in_time > 0.8 * bills  # type: ignore[operator]
    assert paid_late_with_fee >= 1 and fee_entries >= paid_late_with_fee  # type: ignore[operator]
    assert open_overdue >= 2 and overdue_accounts >= 1  # type: ignore[operator]
    assert paid + open_overdue == bills  # type: ignore[operator]
    overdue = [row[0] for row in await _rows(committed_sessions,
                                             "SELECT id FROM bills WHERE status = 'open' AND due_date < :today "
                                             "ORDER BY period", today=NOW.date())]
    async with committed_sessions() as session:
        owed = await late_fee_owed(session, bill_ids=overdue, on=NOW.date())
    assert owed[overdue[0]] > 0  # the oldest unpaid bill is accruing its late fee
    # The month-end job posted the fees of the unpaid bills as of each month's last day.
    [(posted_at_month_end,)] = await _rows(committed_sessions, """
        SELECT count(*) FROM bills b WHERE b.status = 'open' AND b.late_fee_posted_fen > 0
          AND EXISTS (SELECT FROM ledger_entries e WHERE e.ref = 'bill:' || b.id AND e.kind = 'late_fee'
                      AND e.posted_at = date_trunc('month', e.posted_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                                        + interval '5 minutes')""")
    assert posted_at_month_end >= 1  # type: ignore[operator]


async def test_allocations_add_up_to_what_each_bill_was_paid_and_name_the_payment(
    demo: None, committed_sessions: async_sessionmaker[AsyncSession]
) -> None:
    [(bills_off, foreign_entries, payments, allocated_payments)] = await _rows(committed_sessions, """
        SELECT (SELECT count(*) FROM bills b
                JOIN LATERAL (SELECT coalesce(sum(a.principal_fen), 0) AS principal,
                                     coalesce(sum(a.late_fee_fen), 0) AS fee
                              FROM bill_allocations a WHERE a.bill_id = b.id) a ON true
                WHERE (b.principal_paid_fen, b.late_fee_paid_fen) <> (a.principal, a.fee)),
               (SELECT count(*) FROM bill_allocations a LEFT JOIN ledger_entries e ON e.id = a.entry_id
                WHERE a.entry_id IS NOT NULL AND (e.kind <> 'payment' OR e.account_id <> a.account_id)),
               (SELECT count(*) FROM ledger_entries WHERE kind = 'payment' AND ref = 'demo:bills'),
               (SELECT count(DISTINCT entry_id) FROM bill_allocations)""")
    assert bills_off == foreign_entries == 0
    assert payments == allocated_payments and payments > 50  # type: ignore[operator]
    # Every demo payment is recorded as a bills payment by payments' demo step.
    [(unrecorded,)] = await _rows(committed_sessions, """
        SELECT count(*) FROM ledger_entries e WHERE e.ref = 'demo:bills' AND NOT EXISTS (
            SELECT FROM payments p WHERE p.entry_id = e.id AND p.purpose = 'bills' AND p.amount_fen = e.amount_fen)""")
    assert unrecorded == 0


async def test_a_business_paid_ahead_and_its_credit_pays_its_next_bills_at_issue(
    demo: None, committed_sessions: async_sessionmaker[AsyncSession]
) -> None:
    [(account_id, customer_type, balance, paid_by_credit)] = await _rows(committed_sessions, """
        SELECT a.id, h.customer_type, a.balance_fen,
               (SELECT count(*) FROM bill_allocations x JOIN bills b ON b.id = x.bill_id
                WHERE x.account_id = a.id AND x.entry_id IS NULL AND x.allocated_at = b.issued_at)
        FROM accounts a JOIN households h ON h.id = a.household_id
        WHERE a.mode = 'postpaid' AND a.balance_fen > 0""")
    assert customer_type != "residential" and balance > 0 and paid_by_credit >= 1  # type: ignore[operator]
    [(round_sum,)] = await _rows(committed_sessions, "SELECT max(amount_fen) FROM ledger_entries "
                                                     "WHERE account_id = :a AND kind = 'payment'", a=account_id)
    assert round_sum % 100_000 == 0  # type: ignore[operator]


async def test_bill_issued_events_are_history_relayed_at_their_run(
    demo: None, committed_sessions: async_sessionmaker[AsyncSession]
) -> None:
    [(events, unrelayed, at_issue, payments_succeeded)] = await _rows(committed_sessions, """
        SELECT count(*), count(*) FILTER (WHERE relayed_at IS NULL OR relayed_at <> created_at),
               count(*) FILTER (WHERE EXISTS (SELECT FROM bills b WHERE b.issued_at = e.created_at
                                              AND b.id = (e.payload -> 'bill_ids' ->> 0)::bigint)),
               (SELECT count(*) FROM domain_events WHERE kind = 'payment.succeeded')
        FROM domain_events e WHERE kind = 'bill.issued'""")
    assert events == at_issue == len(PERIODS) and unrelayed == 0 and payments_succeeded == 0


async def test_loading_again_with_the_same_now_writes_no_bill_payment_or_fee(
    demo: None, committed_sessions: async_sessionmaker[AsyncSession]
) -> None:
    figures = """SELECT (SELECT count(*) FROM bills), (SELECT count(*) FROM bill_allocations),
                        (SELECT count(*) FROM billing_runs), (SELECT count(*) FROM reading_reviews),
                        (SELECT count(*) FROM ledger_entries), (SELECT count(*) FROM domain_events),
                        (SELECT sum(balance_fen) FROM accounts)"""
    before = await _rows(committed_sessions, figures)
    plan = DemoPlan(households=HOUSEHOLDS, seed=SEED, readings=True, now=NOW, timezone="Asia/Shanghai",
                    progress=lambda _: None, actor=system_principal(installed()))
    async with committed_sessions() as session, session.begin():
        await demo_step(session, plan)
    assert await _rows(committed_sessions, figures) == before


async def test_a_later_now_holds_the_unread_month_approves_all_but_two_a_day_later_and_keeps_entries_in_order(
    demo: None, committed_sessions: async_sessionmaker[AsyncSession]
) -> None:
    later = datetime(2026, 12, 20, 10, 30, tzinfo=SHANGHAI)
    plan = DemoPlan(households=HOUSEHOLDS, seed=SEED, readings=False, now=later, timezone="Asia/Shanghai",
                    progress=lambda _: None, actor=system_principal(installed()))
    async with committed_sessions() as session, session.begin():
        # Billing's step bills only with readings; the readings up to NOW bill November.
        from backend.billing.demo_bills import bill_demo_history

        await bill_demo_history(session, seed=SEED, now=later, zone=SHANGHAI, by=plan.actor.name)
    # No reading after NOW: every account is held for November (missing reading); the
    # demo's reviewer approves all but two a day after the run, and they are billed then.
    [(november, at_approval, accounts, pending, approved_by_system, out_of_order)] = await _rows(
        committed_sessions, """
        SELECT (SELECT count(*) FROM bills WHERE period = '2026-11-01'),
               (SELECT count(*) FROM bills WHERE period = '2026-11-01' AND issued_at = :approved_at),
               (SELECT count(*) FROM accounts WHERE mode = 'postpaid'),
               (SELECT count(*) FROM reading_reviews WHERE period = '2026-11-01' AND state = 'pending'),
               (SELECT bool_and(decided_by = '系统' AND decided_at = :approved_at) FROM reading_reviews
                WHERE period = '2026-11-01' AND state = 'approved'),
               (SELECT count(*) FROM (SELECT e.balance_after_fen, e.amount_fen,
                                             lag(e.balance_after_fen) OVER (PARTITION BY e.account_id
                                                                            ORDER BY e.posted_at, e.id) AS before
                                      FROM ledger_entries e JOIN accounts a ON a.id = e.account_id
                                      WHERE a.mode = 'postpaid') AS e
                WHERE e.before IS NOT NULL AND e.before + e.amount_fen <> e.balance_after_fen)""",
        approved_at=datetime(2026, 12, 4, 2, 30, tzinfo=SHANGHAI))
    assert pending == 2 and november == at_approval == accounts - 2 and approved_by_system  # type: ignore[operator]
    assert out_of_order == 0
