"""Payments' declaration (收费): payments of every channel, counter recharge and bill
payment, reversal, closing an account with its refund, the cashier's day, receipts and
payment queries (issue 16). It comes after billing and calls its ``post_entry`` and
``final_charge``; billing never imports it. Online payments, IC-card purchases and bank
channels add their channels to the same payments table in their own issues.
"""

from __future__ import annotations

from backend.auth.menus import Menu, Operation
from backend.auth.menus import permission as _p
from backend.domain import Check, Domain, Gateway, Job, PersonalData
from backend.payments.online.alipay import AlipaySettings
from backend.payments.online.wechat import WechatSettings
from backend.payments.settings import PaymentsSettings

DOMAIN = Domain(
    name="payments",
    title="收费",
    models=("backend.payments.models", "backend.payments.receipts.models", "backend.payments.online.models",
            "backend.payments.online.reconcile_models"),
    schema="backend.payments.schema",
    routes="backend.payments.http:routes",
    menus=(
        Menu("counter", "柜台收费", "Counter", (
            _p("counter:collect", "收费 (充值缴费)", "Take payments"),
            _p("counter:reverse_any", "冲正他人或往日收费", "Reverse any payment"),
            _p("counter:close_account", "销户退费", "Close accounts with their refund"),
            _p("counter:day_all", "查看与日结所有收费员", "See and hand over every cashier's day"),
            _p("counter:refund_online", "原路退款 (错缴退款)", "Refund a payment through its original channel"),
        )),
        Menu("payments", "缴费查询", "Payment queries", (
            _p("payments:read", "查看与导出缴费记录", "View and export payments"),
        )),
        Menu("receipts", "票据", "Receipts", (
            _p("receipts:print", "打印 / 补打票据, 作废本人票据", "Print and reprint receipts, void one's own forms"),
            _p("receipts:manage", "票据格式与票据领用", "Receipt layouts and form stock"),
        )),
    ),
    demo_grants={"cashier": frozenset({"counter:collect", "counter:close_account", "payments:read", "receipts:print"})},
    operations=(
        Operation("takePayment", "收费", "Take payment", "counter"),
        Operation("reversePayment", "冲正", "Reverse payment", "counter"),
        Operation("closeAccount", "销户", "Close account", "counter"),
        Operation("handOverDay", "日结", "Hand over the day", "counter"),
        Operation("exportPayments", "导出缴费记录", "Export payments", "payments"),
        Operation("printReceipt", "打印票据", "Print receipt", "receipts"),
        Operation("printReceipts", "批量打印票据", "Print receipts", "receipts"),
        Operation("saveReceiptLayout", "保存票据格式", "Save receipt layout", "receipts"),
        Operation("issueReceiptForms", "票据领用", "Issue receipt forms", "receipts"),
        Operation("voidReceiptForm", "票据作废", "Void receipt form", "receipts"),
        Operation("createPaymentOrder", "在线支付下单", "Create payment order", "payments"),
        Operation("counterBarcodePay", "付款码收款", "Counter barcode payment", "counter"),
        Operation("counterQrOrder", "扫码收款", "Counter QR order", "counter"),
        Operation("printStaticQr", "打印静态缴费码", "Print static QR stickers", "payments"),
        Operation("refundPayment", "原路退款", "Refund payment", "counter"),
    ),
    # The SDKs' endpoints and bounds (SHUIWU_ALIPAY_* / SHUIWU_WECHAT_*: the local fakes by
    # default); the merchants' keys are in the merchants file. Money moves: every call kept.
    gateways=(
        Gateway("alipay", "支付宝", AlipaySettings, fake="backend.payments.online.fakes.alipay:fake_app",
                keeps_exchanges=True, description="Alipay OpenAPI (python-alipay-sdk, RSA2)"),
        Gateway("wechat", "微信支付", WechatSettings, fake="backend.payments.online.fakes.wechat:fake_app",
                keeps_exchanges=True, description="WeChat Pay API v2 (wechatpy) and v3 (wechatpayv3)"),
    ),
    jobs=(
        # Every minute: orders still unpaid query_after_minutes after they were made (the
        # notification may never come) are asked about, credited, or closed when expired.
        Job("query_payment_orders", "backend.payments.online.jobs:query_payment_orders", cron="* * * * *",
            description="Ask the gateways about unpaid online orders; credit the paid, close the expired"),
        Job("query_refunds", "backend.payments.online.refunds:refund_job", cron="* * * * *",
            permissions=frozenset({"counter:refund_online"}),
            description="Send and query refunds through the original channel until the gateway settles them"),
        Job("reconcile", "backend.payments.online.reconcile:reconcile_yesterday", cron="30 2 * * *",
            permissions=frozenset({"payments:read"}),
            description="对账: yesterday of every configured channel against its merchants' statements"),
    ),
    commands={"pay": "backend.payments.online.cli:pay_app"},
    events=("backend.payments.events",),
    settings=PaymentsSettings,
    # payments.online: the merchants file loaded at start (a mistake stops the host) and
    # one gateway per merchant (backend.payments.online.registry).
    services="backend.payments.online.registry:offered",
    checks=(
        Check("payments.ledger", "backend.payments.checks:payments_match_ledger",
              "Every payment's ledger entries exist as it says; every handed-over day equals its entries"),
        Check("payments.receipt_font", "backend.payments.receipts.checks:receipt_font",
              description="The CJK TrueType font receipts embed (SHUIWU_PAYMENTS_RECEIPT_FONT) is there"),
        Check("payments.merchants", "backend.payments.online.registry:merchants_check",
              description="The merchants file (SHUIWU_PAYMENTS_CONFIG) reads: one line per mistake"),
    ),
    # After billing's (domain order): it records billing's history of recharges as payments.
    demo="backend.payments.demo:demo_step",
    # `shuiwu demo run`: test merchants with their own keys under DATA_DIR/payments (unless
    # SHUIWU_PAYMENTS_CONFIG is set), so the local gateways and the API agree.
    demo_environment="backend.payments.online.demo:demo_environment",
    personal_data=PersonalData(excluded={
        "payments.operator_name": "the cashier who took the payment, not the resident",
        "payments.reversed_by": "the cashier who reversed the payment, not the resident",
        "payments.reversal_reason": "the cashier's reason for a reversal (收错金额), about the payment, not a person",
        "cashier_days.handed_over_by": "the cashier who handed the day over, not the resident",
        "receipt_prints.printed_by": "the cashier who printed the receipt, not the resident",
        "receipt_form_voids.voided_by": "the cashier who voided the form, not the resident",
        "receipt_form_batches.issued_by": "the staff member who issued the forms, not the resident",
        "receipt_layouts.updated_by": "the staff member who saved the layout, not the resident",
        "receipt_layouts.name": "a receipt layout's name, not a person's",
        "payment_orders.created_by": "who started an order: 'resident:<id>', a staff login or 'anonymous', never a name",
        "payment_orders.client_payload": "what the gateway returned to pay with (a pay URL, a QR link, signed parameters)",
        "payment_notifications.reason": "why a gateway's notification failed verification ('bad signature')",
        "payment_refunds.reason": "the staff member's reason for a refund (销户退费, 错缴), about the payment",
        "payment_refunds.requested_by": "the staff member who asked for the refund, not the resident",
        "payment_refunds.requested_at": "when the refund was asked for, a time not a person",
        "pending_writes.settled_by": "the staff member or device that wrote the money to the card or meter",
        "pending_writes.held_reason": "why a meter write waits for staff (the meter's purchase count), not a person",
        "reconciliation_runs.run_by": "the staff login, 系统 (the job) or the CLI that ran a reconciliation, not the resident",
        "receipt_form_voids.reason": "why a cashier voided a blank form (卡纸, 填错); no resident is named on a voided form",
    }),
)
