"""Payments' declaration (收费): payments of every channel, counter recharge and bill
payment, reversal, closing an account with its refund, the cashier's day, receipts and
payment queries (issue 16). It comes after billing and calls its ``post_entry`` and
``final_charge``; billing never imports it. Online payments, IC-card purchases and bank
channels add their channels to the same payments table in their own issues.
"""

from __future__ import annotations

from backend.auth.menus import Menu, Operation
from backend.auth.menus import permission as _p
from backend.domain import Check, Domain, PersonalData
from backend.payments.settings import PaymentsSettings

DOMAIN = Domain(
    name="payments",
    title="收费",
    models=("backend.payments.models",),
    schema="backend.payments.schema",
    routes="backend.payments.http:routes",
    menus=(
        Menu("counter", "柜台收费", "Counter", (
            _p("counter:collect", "收费 (充值缴费)", "Take payments"),
            _p("counter:reverse_any", "冲正他人或往日收费", "Reverse any payment"),
            _p("counter:close_account", "销户退费", "Close accounts with their refund"),
            _p("counter:day_all", "查看与日结所有收费员", "See and hand over every cashier's day"),
        )),
        Menu("payments", "缴费查询", "Payment queries", (
            _p("payments:read", "查看与导出缴费记录", "View and export payments"),
        )),
    ),
    demo_grants={"cashier": frozenset({"counter:collect", "counter:close_account", "payments:read"})},
    operations=(
        Operation("takePayment", "收费", "Take payment", "counter"),
        Operation("reversePayment", "冲正", "Reverse payment", "counter"),
        Operation("closeAccount", "销户", "Close account", "counter"),
        Operation("handOverDay", "日结", "Hand over the day", "counter"),
        Operation("exportPayments", "导出缴费记录", "Export payments", "payments"),
    ),
    events=("backend.payments.events",),
    settings=PaymentsSettings,
    checks=(Check("payments.ledger", "backend.payments.checks:payments_match_ledger",
                  "Every payment's ledger entries exist as it says; every handed-over day equals its entries"),),
    # After billing's (domain order): it records billing's history of recharges as payments.
    demo="backend.payments.demo:demo_step",
    personal_data=PersonalData(excluded={
        "payments.operator_name": "the cashier who took the payment, not the resident",
        "payments.reversed_by": "the cashier who reversed the payment, not the resident",
        "payments.reversal_reason": "the cashier's reason for a reversal (收错金额), about the payment, not a person",
        "cashier_days.handed_over_by": "the cashier who handed the day over, not the resident",
    }),
)
