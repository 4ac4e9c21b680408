"""Billing's line in ``shuiwu check`` (backend.billing.domain): the ledger adds up."""

from __future__ import annotations

from sqlalchemy import text

from backend.domain import CheckResult
from backend.runtime import Runtime

# Accounts whose cached balance is not the sum of their entries, and accounts with a
# prepaid cycle whose charged_fen is not the sum of that cycle's charge and adjustment
# entries (they carry its cycle_start); one pass over the entries each.
_DISAGREEING = text("""
WITH sums AS (
    SELECT account_id, sum(amount_fen) AS total FROM ledger_entries GROUP BY account_id
), balances AS (
    SELECT a.id FROM accounts a LEFT JOIN sums s ON s.account_id = a.id
    WHERE a.balance_fen <> coalesce(s.total, 0)
), cycle_sums AS (
    SELECT account_id, cycle_start, -sum(amount_fen) AS charged FROM ledger_entries
    WHERE kind IN ('charge', 'adjustment') AND cycle_start IS NOT NULL
    GROUP BY account_id, cycle_start
), cycles AS (
    SELECT DISTINCT c.account_id AS id FROM prepaid_cycles c
    LEFT JOIN cycle_sums s ON s.account_id = c.account_id AND s.cycle_start = c.cycle_start
    WHERE c.charged_fen <> coalesce(s.charged, 0)
)
SELECT (SELECT count(*) FROM balances) AS balances, (SELECT count(*) FROM cycles) AS cycles,
       (SELECT count(*) FROM (SELECT id FROM balances UNION SELECT id FROM cycles) AS either) AS accounts,
       (SELECT count(*) FROM accounts) AS total
""")


async def ledger_adds_up(runtime: Runtime) -> CheckResult:
    """Every account's balance equals the sum of its ledger entries, and every prepaid
    cycle's ``charged_fen`` the sum of its charge and adjustment entries (read-only)."""
    async with runtime.sessions() as session:
        row = (await session.execute(_DISAGREEING)).one()
    if row.accounts:
        return CheckResult(False, f"{row.accounts} of {row.total} accounts disagree with their ledger "
                                  f"({row.balances} balances, {row.cycles} with a prepaid cycle)")
    return CheckResult(True, f"{row.total} accounts: balances and prepaid cycles equal their entries")
