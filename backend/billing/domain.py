"""Billing's declaration (计费): tariffs (水价: ``shuiwu tariff load|quote``,
``saveTariff``, ``tariffs``, ``tariffQuote``, the anonymous ``publicTariffs``), accounts
and their ledger (``accounts``, ``accountStatement`` and its Excel export at
``/exports/accounts/statement.xlsx``, ``prepaidStatements``, ``Household.account``, the
account mutations) and prepaid settlement, run by the handler of ``readings.ingested``.

It comes after readings (settlement reads usage through
``backend.readings.usage.usage_between``) and before payments, which it never imports.
Its menus gate the screens and are the operation log's modules: 水价管理 (``tariffs``),
账户管理 (``accounts``: ``accounts:read`` / ``accounts:manage``) and 主站预付费
(``prepaid``: ``prepaid:settle``), 抄表管理 (``routes``: reading routes, ``routes:read``
/ ``routes:manage``; a reader's own ``myReadingRoute`` needs only readings:write) and
抄表审核 (``review``: ``review:read`` / ``review:decide``, ``backend.billing.review``)
and 账单管理 (``bills``: postpaid bills, runs, voids, late fees and notices,
``backend.billing.bills``).
"""

from __future__ import annotations

from backend.auth.menus import Menu, Operation
from backend.auth.menus import permission as _p
from backend.billing.settings import BillingSettings
from backend.domain import Check, Domain, Job, PersonalData
from backend.events.service import Handler

DOMAIN = Domain(
    name="billing",
    title="计费",
    models=("backend.billing.models", "backend.billing.routes_models", "backend.billing.bills_models"),
    schema="backend.billing.schema",
    routes="backend.billing.http:routes",
    menus=(
        Menu("tariffs", "水价管理", "Tariffs", (
            _p("tariffs:read", "查看水价", "View tariffs"),
            _p("tariffs:manage", "维护水价", "Maintain tariffs"),
        )),
        Menu("accounts", "账户管理", "Accounts", (
            _p("accounts:read", "查看账户与账务", "View accounts and their ledgers"),
            _p("accounts:manage", "开户 / 修改 / 销户", "Open, change and close accounts"),
        )),
        Menu("prepaid", "主站预付费", "Master-station prepaid", (
            _p("prepaid:settle", "手工结算", "Settle prepaid accounts now"),
        )),
        Menu("routes", "抄表管理", "Reading routes", (
            _p("routes:read", "查看抄表本与抄见率", "View reading routes and their completion"),
            _p("routes:manage", "维护抄表本 / 分配抄表员", "Maintain reading routes and assign readers"),
        )),
        Menu("review", "抄表审核", "Reading review", (
            _p("review:read", "查看抄表审核", "View reading reviews"),
            _p("review:decide", "审核抄表 (核准 / 调整 / 估算)", "Decide reading reviews (approve, adjust, estimate)"),
        )),
        Menu("bills", "账单管理", "Bills", (
            _p("bills:read", "查看账单 / 打印通知单", "View bills and print notices"),
            _p("bills:run", "出账 (账单计算)", "Run billing"),
            _p("bills:void", "作废与重开账单", "Void and re-issue bills"),
            _p("bills:waive", "减免滞纳金", "Waive late fees"),
            _p("bills:configure", "设置抄表周期与滞纳金规则", "Set billing periods and late-fee rules"),
        )),
    ),
    demo_grants={"cashier": frozenset({"tariffs:read", "accounts:read", "accounts:manage"})},
    operations=(
        Operation("saveTariff", "保存水价", "Save tariff", "tariffs"),
        Operation("openAccount", "开户", "Open account", "accounts"),
        Operation("openAccounts", "批量开户", "Open accounts in bulk", "accounts"),
        Operation("updateAccount", "修改账户", "Change account", "accounts"),
        Operation("closeSettledAccount", "销户 (已结清)", "Close a settled account", "accounts"),
        Operation("finalCharge", "最终结算", "Final charge", "accounts"),
        Operation("settlePrepaid", "预付费结算", "Settle prepaid accounts", "prepaid"),
        Operation("exportAccountStatement", "导出账户流水", "Export account statement", "accounts"),
        Operation("createReadingRoute", "新建抄表本", "Create reading route", "routes"),
        Operation("updateReadingRoute", "修改抄表本", "Change reading route", "routes"),
        Operation("deleteReadingRoute", "删除抄表本", "Delete reading route", "routes"),
        Operation("setReadingRouteMeters", "设置抄表本表计", "Set a reading route's meters", "routes"),
        Operation("assignReadingRouteReader", "分配抄表员", "Assign a route's reader", "routes"),
        Operation("prepareReadingReview", "生成抄表审核", "Prepare reading review", "review"),
        Operation("approveReading", "核准抄表", "Approve reading", "review"),
        Operation("adjustReading", "调整抄表读数", "Adjust reading", "review"),
        Operation("estimateReading", "估算抄表读数", "Estimate reading", "review"),
        Operation("reopenReadingReview", "退回抄表审核", "Reopen reading review", "review"),
        Operation("runBilling", "出账", "Run billing", "bills"),
        Operation("voidBill", "作废账单", "Void bill", "bills"),
        Operation("waiveLateFee", "减免滞纳金", "Waive late fee", "bills"),
        Operation("setAreaBillingCycle", "设置抄表周期", "Set an area's billing period", "bills"),
        Operation("setLateFeeRule", "设置滞纳金规则", "Set a late-fee rule", "bills"),
        Operation("exportBills", "导出账单", "Export bills", "bills"),
        Operation("printBillNotices", "打印缴费通知单 / 催缴单", "Print bill notices", "bills"),
    ),
    jobs=(
        # 00:05 UTC on the 1st (08:05 in Shanghai): posts as of the last day of the month
        # that just ended (backend.billing.late_fees). Posting is billing's money-writing,
        # as a run is: the system actor holds bills:run for it.
        Job("post_late_fees", "backend.billing.late_fees:post_month_end_late_fees", cron="5 0 1 * *",
            permissions=frozenset({"bills:run"}),
            description="Post every overdue bill's late fee as of the last day of the month just ended"),
        # Daily: the latest period of each cycle that ended 5 days ago, once some account
        # of it is unbilled (backend.billing.bills, "Scheduled"); a re-run bills nothing twice.
        Job("run_billing", "backend.billing.bills:scheduled_run", cron="30 2 * * *",
            permissions=frozenset({"bills:run", "review:read"}),
            description="出账: bill each billing cycle's latest period once its readings are in"),
    ),
    handlers=(
        # All its effects are in the database (entries, threshold events), so a replay of
        # history settles it too: no horizon.
        Handler("readings.ingested", "billing.settle", "backend.billing.settlement:settle_ingested",
                permissions=frozenset({"prepaid:settle"})),
    ),
    events=("backend.billing.events",),
    services="backend.billing.accounts:offered",
    checks=(Check("billing.ledger", "backend.billing.checks:ledger_adds_up",
                  "Every balance is the sum of its entries; every prepaid cycle's charge the sum of its entries"),
            Check("billing.bills", "backend.billing.checks:bills_add_up",
                  "Every bill's debit, void, payments and late fees agree with its entries and allocations"),
            Check("billing.notice_font", "backend.billing.checks:notice_font",
                  "The CJK TrueType font bill notices embed (SHUIWU_BILLING_NOTICE_FONT) is there")),
    demo="backend.billing.demo:demo_step",
    # What the printed bill notices say of the utility, and their font (SHUIWU_BILLING_…).
    settings=BillingSettings,
    commands={"tariff": "backend.billing.cli:tariff_app", "bill": "backend.billing.cli:bill_app"},
    personal_data=PersonalData(excluded={
        "tariffs.name": "the name of a published water price (居民生活用水), not a person's",
        "accounts.opened_by": "the staff member (or 系统) who opened the account, not the resident",
        "accounts.closed_by": "the staff member who closed the account, not the resident",
        "ledger_entries.posted_by": "the staff member or process that posted the entry, not the resident",
        "reading_routes.name": "a reading route's name (翠湖小区 1-3 栋), not a person's",
        "reading_routes.reader_user_id": "the staff member who reads the route, not the resident",
        "reading_reviews.decided_by": "the staff member who decided the reading review, not the resident",
        "reading_reviews.decision_reason": "the reviewer's note on a period's readings (表坏估算), about the meter, "
                                           "not a person",
        "billing_runs.started_by": "the staff member (or 系统) who started the billing run, not the resident",
        "billing_runs.error": "why a billing run failed (a database message), not about a person",
        "bills.issued_by": "the staff member (or 系统) who issued the bill, not the resident",
        "bills.voided_by": "the staff member who voided the bill, not the resident",
        "bills.void_reason": "the staff member's note on why a bill was voided (读数错误), about the bill",
        "bills.late_fee_waived_by": "the staff member who waived the late fee, not the resident",
        "bills.late_fee_waiver_reason": "the staff member's note on why a late fee was waived, about the bill",
        "late_fee_rules.updated_by": "the staff member who set the rule, not the resident",
        "area_billing_cycles.updated_by": "the staff member who set the area's period, not the resident",
    }),
)
