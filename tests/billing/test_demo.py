"""The billing demo (backend.billing.demo): accounts in every mode from the readings' first
day, a year of master-station history settled month by month that adds up, a few
accounts planted near the thresholds, old crossings kept out of the relay, and nothing
written twice."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.billing.demo import demo_step
from backend.checks import run_checks
from backend.domain import DemoPlan, system_principal
from backend.domains import installed
from backend.readings.demo import window_start
from backend.settings import Settings
from tests import small_demo
from tests.small_demo import HOUSEHOLDS, NOW, SEED, SHANGHAI
from tests.small_demo import rows as _rows

# This module reads a copy of the small demo, loaded once per run (tests/small_demo.py).
database_url, demo = small_demo.database_url, small_demo.demo


async def test_every_demo_household_has_an_account_in_a_mix_of_modes_from_the_first_day(
    demo: None, committed_sessions: async_sessionmaker[AsyncSession]
) -> None:
    modes = dict(await _rows(committed_sessions, "SELECT mode, count(*) FROM accounts GROUP BY mode"))
    assert set(modes) == {"prepaid_station", "prepaid_card", "prepaid_meter", "postpaid"}
    assert modes["prepaid_station"] > sum(modes.values()) / 3
    [(accounts, households, opened, vulnerable_station, with_persons, wrong_tariff)] = await _rows(committed_sessions, """
        SELECT count(a.id), (SELECT count(*) FROM households), min(a.opened_at) = max(a.opened_at) AND min(a.opened_at) = :start,
               count(*) FILTER (WHERE a.vulnerable AND a.mode = 'prepaid_station'), count(a.persons),
               count(*) FILTER (WHERE a.tariff_code <> CASE h.customer_type WHEN 'residential' THEN 'SH-RES'
                                WHEN 'non_residential' THEN 'HZ-NR' ELSE 'HZ-SP' END)
        FROM accounts a JOIN households h ON h.id = a.household_id""", start=window_start(NOW, SHANGHAI))
    assert accounts == households == HOUSEHOLDS and opened is True
    assert vulnerable_station >= 1 and with_persons >= 1 and wrong_tariff == 0


async def test_the_ledger_adds_up_for_every_account_and_the_check_line_says_so(
    demo: None, committed_sessions: async_sessionmaker[AsyncSession], database_url: str
) -> None:
    [(disagreeing, entries, cycles_off)] = await _rows(committed_sessions, """
        SELECT (SELECT count(*) FROM accounts a WHERE a.balance_fen <>
                    (SELECT coalesce(sum(amount_fen), 0) FROM ledger_entries e WHERE e.account_id = a.id)),
               (SELECT count(*) FROM ledger_entries),
               (SELECT count(*) FROM prepaid_cycles c WHERE c.charged_fen <>
                    (SELECT -coalesce(sum(amount_fen), 0) FROM ledger_entries e WHERE e.account_id = c.account_id
                     AND e.cycle_start = c.cycle_start AND e.kind IN ('charge', 'adjustment')))""")
    assert disagreeing == 0 and cycles_off == 0 and entries > 100  # type: ignore[operator]
    lines: list[str] = []
    await run_checks(Settings(), database_url, echo=lines.append)
    assert f"ok    billing.ledger  {HOUSEHOLDS} accounts: balances and prepaid cycles equal their entries" in lines


async def test_only_master_station_accounts_are_settled_month_by_month_with_backdated_recharges(
    demo: None, committed_sessions: async_sessionmaker[AsyncSession]
) -> None:
    by_mode = dict(await _rows(committed_sessions, "SELECT a.mode, count(e.id) FROM accounts a "
                                                   "LEFT JOIN ledger_entries e ON e.account_id = a.id GROUP BY a.mode"))
    assert by_mode["prepaid_card"] == by_mode["prepaid_meter"] == 0
    # Postpaid accounts have bills, payments and late fees (tests/billing/test_demo_bills.py).
    [(postpaid_kinds,)] = await _rows(committed_sessions, "SELECT array_agg(DISTINCT e.kind) FROM ledger_entries e "
                                                          "JOIN accounts a ON a.id = e.account_id "
                                                          "WHERE a.mode = 'postpaid'")
    assert set(postpaid_kinds) == {"bill", "payment", "late_fee"}  # type: ignore[arg-type]
    [(charge_instants, first_charge, last_charge, recharges, keyed, recharge_hours, early)] = await _rows(
        committed_sessions, """
        SELECT count(DISTINCT e.posted_at) FILTER (WHERE e.kind = 'charge'),
               min(e.posted_at) FILTER (WHERE e.kind = 'charge'), max(e.posted_at) FILTER (WHERE e.kind = 'charge'),
               count(*) FILTER (WHERE e.kind = 'recharge'),
               count(*) FILTER (WHERE e.kind = 'recharge' AND e.idempotency_key ~ '^demo:recharge:[0-9]+:[0-9]+$'),
               count(DISTINCT extract(hour FROM e.posted_at AT TIME ZONE 'Asia/Shanghai')) FILTER (WHERE e.kind = 'recharge'),
               count(*) FILTER (WHERE e.posted_at <= a.opened_at)
        FROM ledger_entries e JOIN accounts a ON a.id = e.account_id WHERE a.mode = 'prepaid_station'""")
    # The window opens 2025-10-20: 13 month ends (2025-11-01 … 2026-11-01) and NOW, each
    # settlement posted in the second before it (the month's statement holds its charges).
    assert charge_instants == 14
    second = timedelta(seconds=1)
    assert first_charge == datetime(2025, 11, 1, tzinfo=SHANGHAI) - second and last_charge == NOW - second
    assert recharges == keyed and recharges > 20 and recharge_hours > 3 and early == 0  # type: ignore[operator]


async def test_some_accounts_stand_near_the_thresholds_and_a_vulnerable_one_in_close(
    demo: None, committed_sessions: async_sessionmaker[AsyncSession]
) -> None:
    states = await _rows(committed_sessions, "SELECT alert_state, vulnerable, balance_fen FROM accounts "
                                             "WHERE alert_state <> 'normal' ORDER BY balance_fen")
    alert = [balance for state, _, balance in states if state == "alert"]
    close = [(vulnerable, balance) for state, vulnerable, balance in states if state == "close"]
    assert len(alert) >= 3 and all(500 < b <= 1500 for b in alert)  # type: ignore[operator]
    assert 1 <= len(close) <= 2 and any(vulnerable for vulnerable, _ in close)
    assert all(-1500 < b <= -500 for _, b in close)  # type: ignore[operator]


async def test_history_events_are_old_news_and_the_settlements_are_recorded_as_handled(
    demo: None, committed_sessions: async_sessionmaker[AsyncSession]
) -> None:
    [(crossings, unrelayed, late, at_posting)] = await _rows(committed_sessions, """
        SELECT count(*), count(*) FILTER (WHERE relayed_at IS NULL), count(*) FILTER (WHERE created_at > :now),
               count(*) FILTER (WHERE EXISTS (SELECT FROM ledger_entries l WHERE l.posted_at = e.created_at))
        FROM domain_events e WHERE kind = 'account.threshold_crossed'""", now=NOW)
    assert crossings > 0 and unrelayed == late == 0 and at_posting == crossings
    [(ingested, unhandled)] = await _rows(committed_sessions, """
        SELECT count(*), count(*) FILTER (WHERE NOT EXISTS (SELECT FROM handled_events h
                                                         WHERE h.event_id = e.id AND h.handler = 'billing.settle'))
        FROM domain_events e WHERE kind = 'readings.ingested'""")
    assert ingested > 0 and unhandled == 0


async def test_running_the_billing_step_again_writes_nothing(
    demo: None, committed_sessions: async_sessionmaker[AsyncSession]
) -> None:
    figures = """SELECT (SELECT count(*) FROM ledger_entries), (SELECT count(*) FROM domain_events),
                        (SELECT count(*) FROM accounts), (SELECT sum(balance_fen) FROM accounts),
                        (SELECT count(*) FROM prepaid_cycles), (SELECT count(*) FROM tariffs),
                        (SELECT count(*) FROM handled_events)"""
    before = await _rows(committed_sessions, figures)
    plan = DemoPlan(households=HOUSEHOLDS, seed=SEED, readings=True, now=NOW, timezone="Asia/Shanghai",
                    progress=lambda _: None, actor=system_principal(installed()))
    async with committed_sessions() as session, session.begin():
        await demo_step(session, plan)
    assert await _rows(committed_sessions, figures) == before
