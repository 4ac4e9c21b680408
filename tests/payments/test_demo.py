"""The payments demo (backend.payments.demo): every recharge and bill payment of billing's
history is one payment of a mix of channels with its entry, no ``payment.succeeded`` is emitted for
history, the demo cashier's days but the last are handed over and add up, the check line
agrees, and running the step again writes nothing."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.checks import run_checks
from backend.demo import CASHIER
from backend.domain import DemoPlan, system_principal
from backend.domains import installed
from backend.payments.demo import demo_step
from backend.settings import Settings
from tests import small_demo
from tests.small_demo import HOUSEHOLDS, NOW, SEED, SHANGHAI
from tests.small_demo import rows as _rows

# This module reads a copy of the small demo, loaded once per run (tests/small_demo.py).
database_url, demo = small_demo.database_url, small_demo.demo


async def test_every_demo_recharge_and_bill_payment_entry_is_exactly_one_payment_of_its_account_amount_and_instant(
    demo: None, committed_sessions: async_sessionmaker[AsyncSession]
) -> None:
    [(entries, payments, unmatched, duplicated, wrong_keys, wrong_days, events)] = await _rows(committed_sessions, """
        SELECT (SELECT count(*) FROM ledger_entries WHERE ref IN ('demo:recharge', 'demo:bills')),
               (SELECT count(*) FROM payments),
               (SELECT count(*) FROM ledger_entries e WHERE e.ref IN ('demo:recharge', 'demo:bills') AND NOT EXISTS (
                    SELECT FROM payments p WHERE p.entry_id = e.id AND p.account_id = e.account_id
                    AND p.amount_fen = e.amount_fen AND p.paid_at = e.posted_at AND p.kind = 'collect'
                    AND p.purpose = CASE e.ref WHEN 'demo:bills' THEN 'bills' ELSE 'recharge' END
                    AND p.status = 'succeeded')),
               (SELECT count(*) FROM (SELECT entry_id FROM payments GROUP BY entry_id HAVING count(*) > 1) AS twice),
               (SELECT count(*) FROM payments WHERE idempotency_key <> 'demo:payment:' || entry_id
                    OR serial_no <> 'SW' || to_char(business_day, 'YYYYMMDD') || lpad(id::text, 10, '0')),
               (SELECT count(*) FROM payments WHERE business_day <> (paid_at AT TIME ZONE 'Asia/Shanghai')::date),
               (SELECT count(*) FROM domain_events WHERE kind = 'payment.succeeded')""")
    assert entries == payments and payments > 20  # type: ignore[operator]
    assert unmatched == duplicated == wrong_keys == wrong_days == 0
    assert events == 0  # history: no handler acts on it


async def test_the_channels_are_mixed_and_each_has_its_operator_reference_and_bank(
    demo: None, committed_sessions: async_sessionmaker[AsyncSession]
) -> None:
    rows = await _rows(committed_sessions, """
        SELECT p.channel, count(*), count(DISTINCT p.operator_id), min(p.operator_name), max(p.operator_name),
               count(p.reference), count(p.bank_partner), count(p.bank_outlet), min(u.username)
        FROM payments p LEFT JOIN staff_users u ON u.id = p.operator_id GROUP BY p.channel""")
    channels = {row[0]: row[1:] for row in rows}
    assert set(channels) == {"cash", "alipay", "wechat", "bank"}  # what billing's demo writes
    count, operators, first_name, last_name, references, partners, outlets, username = channels["cash"]
    assert (operators, first_name, last_name, username, partners) == (1, "李秀英", "李秀英", CASHIER.username, 0)
    for online, name in (("alipay", "支付宝"), ("wechat", "微信")):
        count, operators, first_name, last_name, references, partners, outlets, username = channels[online]
        assert (operators, first_name, last_name, references, partners) == (0, name, name, count, 0)
    count, operators, first_name, last_name, references, partners, outlets, username = channels["bank"]
    assert operators == 0 and references == partners == outlets == count
    assert {first_name, last_name} <= {"工商银行", "建设银行", "农业银行"}
    [(banks_per_account,)] = await _rows(committed_sessions, """
        SELECT coalesce(max(n), 0) FROM (SELECT count(DISTINCT bank_partner) AS n FROM payments
                                         WHERE channel = 'bank' GROUP BY account_id) AS debits""")
    assert banks_per_account == 1  # a household's direct debit stays with its bank


async def test_the_cashiers_days_but_the_last_are_handed_over_and_equal_their_payments(
    demo: None, committed_sessions: async_sessionmaker[AsyncSession]
) -> None:
    [(cash_days, last_day)] = await _rows(committed_sessions, """
        SELECT count(DISTINCT business_day), max(business_day) FROM payments p
        JOIN staff_users u ON u.id = p.operator_id WHERE u.username = :cashier""", cashier=CASHIER.username)
    days = await _rows(committed_sessions, """
        SELECT d.business_day, d.net_fen, d.takings, d.handed_over_at,
               (SELECT sum(p.amount_fen) FROM payments p WHERE p.operator_id = d.operator_id
                AND p.business_day = d.business_day),
               (SELECT count(*) FROM payments p WHERE p.operator_id = d.operator_id AND p.business_day = d.business_day)
        FROM cashier_days d JOIN staff_users u ON u.id = d.operator_id
        WHERE u.username = :cashier ORDER BY d.business_day""", cashier=CASHIER.username)
    assert cash_days >= 2 and len(days) == cash_days - 1  # type: ignore[operator]
    assert all(day < last_day for day, *_ in days)  # type: ignore[operator]
    for day, net, takings, handed_over_at, paid, count in days:
        assert net == paid
        assert takings == {"cash": {"collected_fen": paid, "refunded_fen": 0, "reversed_fen": 0, "net_fen": paid,
                                    "count": count}}
        assert handed_over_at.astimezone(SHANGHAI).date() == day  # type: ignore[attr-defined]


async def test_the_check_line_agrees_with_the_demo(
    demo: None, committed_sessions: async_sessionmaker[AsyncSession], database_url: str
) -> None:
    [(payments, days)] = await _rows(committed_sessions,
                                     "SELECT (SELECT count(*) FROM payments), (SELECT count(*) FROM cashier_days)")
    lines: list[str] = []
    await run_checks(Settings(), database_url, echo=lines.append)
    assert f"ok    payments.ledger  {payments} payments and {days} handed-over days equal their ledger entries" in lines


async def test_running_the_payments_step_again_writes_nothing(
    demo: None, committed_sessions: async_sessionmaker[AsyncSession]
) -> None:
    figures = """SELECT (SELECT count(*) FROM payments), (SELECT max(id) FROM payments),
                        (SELECT count(*) FROM cashier_days), (SELECT count(*) FROM domain_events),
                        (SELECT count(*) FROM ledger_entries)"""
    before = await _rows(committed_sessions, figures)
    plan = DemoPlan(households=HOUSEHOLDS, seed=SEED, readings=True, now=NOW, timezone="Asia/Shanghai",
                    progress=lambda _: None, actor=system_principal(installed()))
    async with committed_sessions() as session, session.begin():
        await demo_step(session, plan)
    assert await _rows(committed_sessions, figures) == before
