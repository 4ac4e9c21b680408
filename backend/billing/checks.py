"""Billing's lines in ``shuiwu check`` (backend.billing.domain): the ledger adds up, so do
the bills, and the bill notices' font is there."""

from __future__ import annotations

from sqlalchemy import text

from backend.domain import CheckResult
from backend.exports.pdf import FontUnavailable, register_font
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


# Bills whose money disagrees with the ledger or their allocations: the bill's entry is not
# −amount (a bill of ¥0 has none), a voided bill's reversing entry is not +amount, a final
# bill's credit entry is not +credit_fen (none without a credit), what
# was paid of principal or fee is not the sum of the bill's allocations, the fee posted
# is not the sum of its late_fee entries, a paid bill still owes principal, or the fee
# written off for it (write_off entries with ref 'bill:<id>') is not exactly the posted fee
# left unpaid when the bill is waived or voided (the waiver writes it off, a reversal of a
# waived bill's fee writes that part off too, a void of an unwaived bill writes off the
# rest) and 0 otherwise: a fee written off twice, or not at all, shows here.
_BILLS_DISAGREEING = text("""
WITH allocated AS (
    SELECT bill_id, sum(principal_fen) AS principal, sum(late_fee_fen) AS fee FROM bill_allocations GROUP BY bill_id
), fees AS (
    SELECT CAST(substr(ref, 6) AS bigint) AS bill_id, -sum(amount_fen) AS posted FROM ledger_entries
    WHERE kind = 'late_fee' AND ref LIKE 'bill:%' GROUP BY 1
), write_offs AS (
    SELECT CAST(substr(ref, 6) AS bigint) AS bill_id, sum(amount_fen) AS written_off FROM ledger_entries
    WHERE kind = 'write_off' AND ref LIKE 'bill:%' GROUP BY 1
), wrong AS (
    SELECT b.id FROM bills b
    LEFT JOIN ledger_entries e ON e.id = b.entry_id
    LEFT JOIN ledger_entries v ON v.id = b.void_entry_id
    LEFT JOIN allocated al ON al.bill_id = b.id
    LEFT JOIN fees f ON f.bill_id = b.id
    LEFT JOIN write_offs w ON w.bill_id = b.id
    LEFT JOIN ledger_entries c ON c.id = b.credit_entry_id
    WHERE (b.amount_fen > 0 AND (e.id IS NULL OR e.amount_fen <> -b.amount_fen OR e.account_id <> b.account_id))
       OR (b.amount_fen = 0 AND b.entry_id IS NOT NULL)
       OR (b.status = 'voided' AND b.entry_id IS NOT NULL AND (v.id IS NULL OR v.amount_fen <> b.amount_fen))
       OR (b.credit_fen > 0 AND (c.id IS NULL OR c.amount_fen <> b.credit_fen OR c.account_id <> b.account_id))
       OR (b.credit_fen = 0 AND b.credit_entry_id IS NOT NULL)
       OR b.principal_paid_fen <> coalesce(al.principal, 0)
       OR b.late_fee_paid_fen <> coalesce(al.fee, 0)
       OR b.late_fee_posted_fen <> coalesce(f.posted, 0)
       OR (b.status = 'paid' AND b.principal_paid_fen <> b.amount_fen)
       OR coalesce(w.written_off, 0) <> CASE WHEN b.late_fee_waived_at IS NOT NULL OR b.status = 'voided'
                                             THEN b.late_fee_posted_fen - b.late_fee_paid_fen ELSE 0 END
)
SELECT (SELECT count(*) FROM wrong) AS wrong, (SELECT count(*) FROM bills) AS total,
       (SELECT count(*) FROM bill_allocations) AS allocations
""")


async def bills_add_up(runtime: Runtime) -> CheckResult:
    """Every bill's money agrees with its ledger entries and its allocations (read-only):
    its debit, a voided bill's credit, a final bill's credit, principal and fee paid, fee
    posted, fee written off."""
    async with runtime.sessions() as session:
        row = (await session.execute(_BILLS_DISAGREEING)).one()
    if row.wrong:
        return CheckResult(False, f"{row.wrong} of {row.total} bills disagree with their entries or allocations")
    return CheckResult(True, f"{row.total} bills and {row.allocations} allocations agree with their entries")


async def notice_font(runtime: Runtime) -> CheckResult:
    """The bill notices' font (``SHUIWU_BILLING_NOTICE_FONT``) exists and is a TrueType face
    reportlab can embed: without it no 缴费通知单 or 催缴单 prints."""
    settings = runtime.settings_group("billing")
    try:
        register_font(settings.font)
    except FontUnavailable:
        return CheckResult(False, f"{settings.notice_font} (face {settings.notice_font_index}) is missing or not a "
                                  "TrueType font: install Debian's fonts-wqy-microhei or set SHUIWU_BILLING_NOTICE_FONT")
    return CheckResult(True, f"{settings.notice_font} (face {settings.notice_font_index})")
