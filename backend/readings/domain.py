"""Readings' declaration (数据查询 / 用水统计 / 台账 / 对比 / 数据监测 / 异常水表)."""

from __future__ import annotations

from backend.auth.menus import Menu, Operation
from backend.auth.menus import permission as _p
from backend.domain import Check, Domain, Job, PersonalData

DOMAIN = Domain(
    name="readings",
    title="读数与分析",
    models=("backend.readings.models", "backend.readings.alarms.models", "backend.readings.schemes.models"),
    schema="backend.readings.schema",
    routes="backend.readings.http:routes",
    menus=(
        Menu("readings", "数据查询", "Data query", (
            _p("readings:read", "查看实时/历史数据", "View latest and historical readings"),
            _p("readings:write", "录入/修正读数", "Enter and correct readings"),
        ), ("staff_web", "staff_mobile")),
        Menu("statistics", "用水统计", "Usage statistics", (
            _p("statistics:read", "查看用水统计", "View usage statistics"),
        ), ("staff_web", "staff_mobile")),
        Menu("ledgers", "用水台账", "Usage ledgers", (
            _p("ledgers:read", "查看用水台账", "View usage ledgers"),
        )),
        Menu("comparisons", "同期/环期对比", "Comparisons", (
            _p("comparisons:read", "查看对比分析", "View comparisons"),
        )),
        Menu("monitoring", "数据监测", "Monitoring", (
            _p("monitoring:read", "查看管网监测", "View trunk-main monitoring"),
        ), ("staff_web", "staff_mobile")),
        # 异常水表 (alarms:read / alarms:manage) is the alarms domain's menu: it gates the
        # alarms of every subject, and readings' abnormal-meter screen with them.
    ),
    demo_grants={
        "cashier": frozenset({"readings:read", "statistics:read"}),
        "repair": frozenset({"readings:read"}),
    },
    operations=(
        Operation("saveQueryScheme", "保存查询方案", "Save query scheme", "readings"),
        Operation("deleteQueryScheme", "删除查询方案", "Delete query scheme", "readings"),
        Operation("enterReading", "录入读数", "Enter reading", "readings"),
        Operation("correctReading", "修正读数", "Correct reading", "readings"),
        Operation("estimateReadings", "估算读数", "Estimate readings", "readings"),
        Operation("importReadings", "导入读数", "Import readings", "readings"),
        Operation("exportRealtime", "导出实时数据", "Export latest readings", "readings"),
        Operation("exportHistory", "导出历史数据", "Export reading history", "readings"),
        Operation("exportStatistics", "导出用水统计", "Export usage statistics", "statistics"),
        Operation("exportLedger", "导出用水台账", "Export usage ledger", "ledgers"),
        Operation("exportComparison", "导出对比分析", "Export comparison", "comparisons"),
        Operation("exportMonitoring", "导出监测数据", "Export monitoring data", "monitoring"),
        Operation("exportAlarms", "导出异常水表", "Export abnormal meters", "alarms"),
        Operation("acknowledgeMeterAlarm", "确认告警", "Acknowledge alarm", "alarms"),
        Operation("closeMeterAlarm", "关闭告警", "Close alarm", "alarms"),
        Operation("setAlarmRule", "设置告警规则", "Set alarm rule", "alarms"),
        Operation("deleteAlarmRule", "删除告警规则", "Delete alarm rule", "alarms"),
    ),
    jobs=(
        # The alarm job closes alarms whose condition cleared: the system actor needs to manage them.
        Job("evaluate_alarms", "backend.readings.jobs:evaluate_alarms", cron="*/15 * * * *",
            permissions=frozenset({"alarms:manage"}), description="Evaluate the abnormal-meter rules"),
        Job("ensure_reading_partitions", "backend.readings.jobs:ensure_reading_partitions", cron="23 3 * * *",
            description="Attach the readings partitions of this month and the next three"),
    ),
    events=("backend.readings.events",),
    checks=(Check("readings.partitions", "backend.readings.checks:partitions_ahead",
                  "This month's readings partition and the next three are attached"),),
    commands={"partitions": "backend.readings.cli:partitions_app"},
    demo="backend.readings.demo:demo_step",
    personal_data=PersonalData(
        export="backend.readings.privacy:export",
        held={"readings.total_m3": "the readings of the meters that served their households while they owned them: "
                                  "exported; kept (bills are priced from them; erased households name nobody)"},
        excluded={
            "alarm_rules.updated_by": "the staff member who changed a rule",
            "meter_link_status.last_failure_reason": "why a meter's link last failed (a device's)",
            "query_schemes.owner_user_id": "the staff user who saved a query scheme",
            "query_schemes.name": "a staff user's name for a saved query",
            "reading_entries.entered_by": "the staff member who entered a field reading",
            "reading_entries.photo_key": "the stored photo of a meter's dial, which shows no person",
        },
    ),
)
