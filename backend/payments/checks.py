"""Payments' line in ``shuiwu check`` (backend.payments.domain): every payment has the
ledger entries it claims, and every handed-over cashier's day (日结) adds up to them."""

from __future__ import annotations

from sqlalchemy import text

from backend.domain import CheckResult
from backend.runtime import Runtime

# One pass over the payments with their entry and reversal entry, one over the days:
# - a collect payment (succeeded or reversed) whose entry is missing, on another account,
#   of another amount or not a recharge or payment;
# - a refund whose entry is not a refund of minus its amount on its account;
# - a reversed payment without a reversal entry of minus its amount on its account;
# - a handed-over day whose net_fen is not the sum of the entries of the payments its
#   cashier took that day and of the reversals they made that day.
_DISAGREEING = text("""
WITH joined AS (
    SELECT p.id, p.kind, p.status, p.account_id, p.amount_fen, p.operator_id, p.business_day,
           p.reversed_by_id, p.reversal_business_day,
           e.account_id AS entry_account, e.amount_fen AS entry_fen, e.kind AS entry_kind,
           r.account_id AS reversal_account, r.amount_fen AS reversal_fen, r.kind AS reversal_kind
    FROM payments p
    LEFT JOIN ledger_entries e ON e.id = p.entry_id
    LEFT JOIN ledger_entries r ON r.id = p.reversal_entry_id
), moves AS (
    SELECT operator_id, business_day, coalesce(entry_fen, 0) AS fen FROM joined WHERE operator_id IS NOT NULL
    UNION ALL
    SELECT reversed_by_id, reversal_business_day, coalesce(reversal_fen, 0) FROM joined
    WHERE status = 'reversed' AND reversed_by_id IS NOT NULL
), day_sums AS (
    SELECT operator_id, business_day, sum(fen) AS fen FROM moves GROUP BY operator_id, business_day
), days AS (
    SELECT d.net_fen, coalesce(s.fen, 0) AS entries_fen
    FROM cashier_days d LEFT JOIN day_sums s USING (operator_id, business_day)
)
SELECT count(*) AS payments,
       count(*) FILTER (WHERE kind = 'collect' AND (entry_account IS DISTINCT FROM account_id
                        OR entry_fen IS DISTINCT FROM amount_fen
                        OR entry_kind NOT IN ('recharge', 'payment') OR entry_kind IS NULL)) AS collects,
       count(*) FILTER (WHERE kind = 'refund' AND (entry_account IS DISTINCT FROM account_id
                        OR entry_fen IS DISTINCT FROM -amount_fen OR entry_kind IS DISTINCT FROM 'refund')) AS refunds,
       count(*) FILTER (WHERE status = 'reversed' AND (reversal_account IS DISTINCT FROM account_id
                        OR reversal_fen IS DISTINCT FROM -amount_fen
                        OR reversal_kind IS DISTINCT FROM 'reversal')) AS reversals,
       (SELECT count(*) FROM days) AS days,
       (SELECT count(*) FROM days WHERE net_fen <> entries_fen) AS days_off
FROM joined
""")


async def payments_match_ledger(runtime: Runtime) -> CheckResult:
    """Every payment's entries exist as it says, and every handed-over day's net is the
    sum of its payments' entries (read-only, one statement)."""
    async with runtime.sessions() as session:
        row = (await session.execute(_DISAGREEING)).one()
    wrong = row.collects + row.refunds + row.reversals
    if wrong or row.days_off:
        return CheckResult(False, f"{wrong} of {row.payments} payments disagree with their ledger entries "
                                  f"({row.collects} collected, {row.refunds} refunds, {row.reversals} reversals); "
                                  f"{row.days_off} of {row.days} handed-over days differ from their entries")
    return CheckResult(True, f"{row.payments} payments and {row.days} handed-over days equal their ledger entries")
