"""Payments' demo step (backend.payments.domain): the history's recharges and bill payments
as the payments they were, and the demo cashier's handed-over days.

**Why after the fact.** Billing's demo step runs first (domain order) and posts 13
months of residents' recharges straight into the ledger (ref ``demo:recharge``, note
``充值 (<channel>)``, key ``demo:recharge:<account>:<n>``, backdated): billing never
imports payments, so it cannot write their payment rows. This step records each such
entry as the payment it was: one ``payments`` row per entry, ``entry_id`` that entry, the
same account and amount, ``paid_at`` its ``posted_at``, the business day in the demo's
zone, a 流水号 from :func:`backend.payments.counter.serial_number` and the idempotency key
``demo:payment:<entry id>``. The postpaid history's bill payments (ref ``demo:bills``, kind
``payment``, note ``缴费 (<channel>)``, allocated to the bills by billing's step with the
entry named) are recorded the same way with purpose ``bills``.

**Channels** come from the entry's note (:data:`CHANNELS`): 营业厅现金 is cash taken at the
counter by the demo cashier (``plan.logins["cashier"]``, 李秀英), who also takes 刷卡 (with a
POS 参考号) and 转账 (with its serial) should billing's demo ever write them; 支付宝 and 微信支付
came in by themselves (no operator; the trade number as reference); 银行代扣 is a bank
direct debit with its partner (a household's debit stays with one of :data:`BANKS`), an
outlet and the bank's transaction number. A note this table does not know is ``other``.

**No events.** No ``payment.succeeded`` is emitted for history: the rows are history,
and the handlers of that event that act outside the database (a "充值成功" message, a
push, reopening a valve) must not act on a year of old payments when ``demo run``'s relay
starts. The balances they would report were posted by billing's step already.

**The cashier's days (日结).** Every business day on which the demo cashier took payments
is handed over (a ``cashier_days`` row, its takings by channel computed from the
payments as the day-end does, at 21:30 that day), except the cashier's last day, which
stays open: the 日结 screen shows both states.

**Again.** Entries that already have a payment and days already handed over are
skipped, so loading again writes nothing; a later ``now`` records the new recharges and
hands over the day that is no longer the last.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import time, tzinfo
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from backend.db import raw_connection
from backend.payments.counter import business_day, serial_number
from backend.payments.models import PaymentChannel
from backend.readings.partitions import as_zone

if TYPE_CHECKING:
    from backend.domain import DemoPlan

RECHARGE_REF = "demo:recharge"  # billing's demo history (backend.billing.demo)
BILLS_REF = "demo:bills"  # its postpaid payments (backend.billing.demo_bills)
PAYMENT_KEY_PREFIX = "demo:payment:"  # + the entry id
HANDED_OVER_AT = time(21, 30)  # after the hall's last customer (billing's demo posts until 20:59)
DEMO_NAME = "示范数据"  # the operator of a payment of an unknown channel, and the days' note

# The channel label in billing's note "充值 (<label>)" -> (channel, taken at the counter).
CHANNELS: dict[str, tuple[PaymentChannel, bool]] = {
    "营业厅现金": (PaymentChannel.cash, True),
    "现金": (PaymentChannel.cash, True),
    "营业厅刷卡": (PaymentChannel.card, True),
    "刷卡": (PaymentChannel.card, True),
    "转账": (PaymentChannel.transfer, True),
    "支付宝": (PaymentChannel.alipay, False),
    "微信支付": (PaymentChannel.wechat, False),
    "微信": (PaymentChannel.wechat, False),
    "银行代扣": (PaymentChannel.bank, False),
    "银行代收": (PaymentChannel.bank, False),
}
# Who a payment without a cashier shows as its operator.
_OPERATOR_NAMES = {PaymentChannel.alipay: "支付宝", PaymentChannel.wechat: "微信"}
# (partner, outlet): a household's direct debit stays with one bank (its account id picks it).
BANKS = (("工商银行", "城东支行"), ("建设银行", "解放路支行"), ("农业银行", "城西支行"))

_UNRECORDED = """
SELECT e.id, e.posted_at FROM ledger_entries e
WHERE ((e.ref = $1 AND e.kind = 'recharge') OR (e.ref = $2 AND e.kind = 'payment'))
  AND NOT EXISTS (SELECT FROM payments p WHERE p.entry_id = e.id)
ORDER BY e.id
"""
_RESERVE = "SELECT nextval('payments_id_seq') FROM generate_series(1, $1)"
# One row per entry; $1–$4 the entries, their payment ids, 流水号 and business days;
# $5–$8 the channel table; $9–$10 the cashier; $11–$12 the banks; $13 the operator
# name of an unknown channel; $14 the idempotency key's prefix.
_RECORD = """
INSERT INTO payments (id, serial_no, idempotency_key, account_id, household_id, kind, channel, purpose, amount_fen,
                      reference, bank_partner, bank_outlet, operator_id, operator_name, status, entry_id, note,
                      paid_at, business_day)
SELECT n.payment_id, n.serial_no, $14 || e.id, e.account_id, a.household_id, 'collect',
       coalesce(m.channel, 'other'), CASE e.kind WHEN 'payment' THEN 'bills' ELSE 'recharge' END, e.amount_fen,
       CASE coalesce(m.channel, 'other')
           WHEN 'card' THEN to_char(n.day, 'MMDD') || lpad((e.id % 100000000)::text, 8, '0')
           WHEN 'transfer' THEN 'ZZ' || to_char(n.day, 'YYYYMMDD') || lpad((e.id % 100000000)::text, 8, '0')
           WHEN 'alipay' THEN to_char(n.day, 'YYYYMMDD') || '2200' || lpad(e.id::text, 16, '0')
           WHEN 'wechat' THEN '4200' || to_char(n.day, 'YYYYMMDD') || lpad(e.id::text, 16, '0')
           WHEN 'bank' THEN 'DK' || to_char(n.day, 'YYYYMMDD') || lpad(e.id::text, 12, '0')
       END,
       b.partner, b.outlet,
       CASE WHEN m.counter THEN $9::bigint END,
       CASE WHEN m.counter THEN $10 ELSE coalesce(b.partner, m.operator_name, $13) END,
       'succeeded', e.id, '', e.posted_at, n.day
FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::date[]) AS n(entry_id, payment_id, serial_no, day)
JOIN ledger_entries e ON e.id = n.entry_id
JOIN accounts a ON a.id = e.account_id
LEFT JOIN unnest($5::text[], $6::text[], $7::bool[], $8::text[]) AS m(label, channel, counter, operator_name)
       ON e.note IN ('充值 (' || m.label || ')', '缴费 (' || m.label || ')')
LEFT JOIN unnest($11::text[], $12::text[]) WITH ORDINALITY AS b(partner, outlet, n)
       ON m.channel = 'bank' AND b.n = e.account_id % cardinality($11::text[]) + 1
ORDER BY n.payment_id
ON CONFLICT (idempotency_key) DO NOTHING
"""
# The day-end's takings (per channel: collected, refunded, reversed, net, count) of each
# of the cashier's days before the last, not yet handed over. A day's net is the sum of
# its payments' entries and of their reversals' (a handed-over day's payments can no
# longer be reversed, so it stays put). $1 the cashier, $2 the name, $3 the zone, $4 the
# time of day handed over, $5 the note.
_HAND_OVER = """
WITH open_days AS (
    SELECT p.business_day, p.channel, count(*) AS payments,
           coalesce(sum(p.amount_fen) FILTER (WHERE p.kind = 'collect'), 0) AS collected,
           coalesce(sum(p.amount_fen) FILTER (WHERE p.kind = 'refund'), 0) AS refunded,
           coalesce(sum(p.amount_fen) FILTER (WHERE p.status = 'reversed'), 0) AS reversed
    FROM payments p
    WHERE p.operator_id = $1
      AND p.business_day < (SELECT max(business_day) FROM payments WHERE operator_id = $1)
      AND NOT EXISTS (SELECT FROM cashier_days d WHERE d.operator_id = $1 AND d.business_day = p.business_day)
    GROUP BY p.business_day, p.channel
)
INSERT INTO cashier_days (operator_id, business_day, takings, net_fen, handed_over_at, handed_over_by, note)
SELECT $1, business_day,
       jsonb_object_agg(channel, jsonb_build_object(
           'collected_fen', collected, 'refunded_fen', refunded, 'reversed_fen', reversed,
           'net_fen', collected - refunded - reversed, 'count', payments)),
       sum(collected - refunded - reversed), (business_day + $4::time) AT TIME ZONE $3, $2, $5
FROM open_days
GROUP BY business_day
ORDER BY business_day
ON CONFLICT (operator_id, business_day) DO NOTHING
"""
_CASHIER = "SELECT id, full_name FROM staff_users WHERE username = $1"


@dataclass(frozen=True, slots=True)
class DemoPayments:
    """What one run wrote."""

    payments: int
    handed_over_days: int


async def record_demo_payments(session: AsyncSession, *, cashier_username: str, tz: str | tzinfo) -> DemoPayments:
    """Record every ``demo:recharge`` and ``demo:bills`` ledger entry without a payment as its payment, and
    hand over the cashier's days before the last (module docstring). Set-based: one
    ``INSERT … SELECT`` for the payments, one for the days. The caller commits."""
    zone = as_zone(tz)
    driver = await raw_connection(session)
    cashier = await driver.fetchrow(_CASHIER, cashier_username)
    if cashier is None:
        raise LookupError(f"the demo cashier {cashier_username!r} does not exist: backend.demo loads it first")
    entries = await driver.fetch(_UNRECORDED, RECHARGE_REF, BILLS_REF)
    written = 0
    if entries:
        ids = [row[0] for row in await driver.fetch(_RESERVE, len(entries))]
        days = [business_day(row["posted_at"], zone) for row in entries]
        labels = list(CHANNELS)
        status = await driver.execute(
            _RECORD, [row["id"] for row in entries], ids,
            [serial_number(number, day) for number, day in zip(ids, days, strict=True)], days,
            labels, [CHANNELS[label][0].value for label in labels], [CHANNELS[label][1] for label in labels],
            [_OPERATOR_NAMES.get(CHANNELS[label][0]) for label in labels],
            cashier["id"], cashier["full_name"][:100], [bank for bank, _ in BANKS], [outlet for _, outlet in BANKS],
            DEMO_NAME, PAYMENT_KEY_PREFIX,
        )
        written = int(status.split()[-1])
    status = await driver.execute(_HAND_OVER, cashier["id"], cashier["full_name"][:100], str(zone), HANDED_OVER_AT,
                                  DEMO_NAME)
    return DemoPayments(written, int(status.split()[-1]))


async def demo_step(session: AsyncSession, plan: DemoPlan) -> None:
    """Payments' demo step (module docstring): the history's recharges and bill payments as payments, and
    the demo cashier's days handed over but the last."""
    plan.progress("收费记录")
    # The demo's people are loaded before this step (backend.demo).
    await record_demo_payments(session, cashier_username=plan.logins.get("cashier", "cashier"), tz=plan.timezone)
