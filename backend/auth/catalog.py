"""The menu catalog (菜单): the brochure's menus, each mapped to the ``resource:action``
permissions that open it. Both apps build their menus from it, role editors offer it, and
the audit log names a mutation's module by the menu that owns its permission.

A permission belongs to exactly one menu. Later issues add their permissions here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Permission:
    code: str
    name: str
    name_en: str


@dataclass(frozen=True, slots=True)
class Menu:
    code: str
    name: str
    name_en: str
    permissions: tuple[Permission, ...]
    # Where each app shows it: "staff_web" (counter / managers), "staff_mobile" (field).
    apps: tuple[str, ...] = ("staff_web",)


def _p(code: str, name: str, name_en: str) -> Permission:
    return Permission(code, name, name_en)


MENUS: tuple[Menu, ...] = (
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
    Menu("alarms", "异常水表", "Abnormal meters", (
        _p("alarms:read", "查看异常水表", "View abnormal meters"),
        _p("alarms:manage", "确认/关闭告警", "Acknowledge and close alarms"),
    ), ("staff_web", "staff_mobile")),
    Menu("zones", "DMA分区计量", "DMA zones", (
        _p("zones:read", "查看分区与水平衡", "View zones and water balance"),
        _p("zones:manage", "维护分区", "Maintain zones"),
    )),
    Menu("prepaid", "预付费", "Prepaid", (
        _p("prepaid:read", "查看预付费监控", "View prepaid monitoring"),
        _p("billing:recharge", "充值", "Recharge accounts"),
        _p("cards:manage", "IC卡开卡/写卡/补卡/销卡", "Issue, write, reissue and cancel IC cards"),
    )),
    Menu("postpaid", "后付费", "Postpaid", (
        _p("bills:read", "查看账单", "View bills"),
        _p("bills:manage", "出账/作废账单", "Issue and void bills"),
        _p("payments:collect", "收费", "Collect payments"),
        _p("payments:refund", "退费", "Refund payments"),
    )),
    Menu("accounts", "账户管理", "Accounts", (
        _p("accounts:read", "查看账户与流水", "View accounts and ledger"),
        _p("accounts:manage", "开户/销户/调整", "Open, close and adjust accounts"),
        _p("tariffs:manage", "维护水价", "Maintain tariffs"),
    )),
    Menu("reports", "报表", "Reports", (
        _p("reports:read", "查看与导出报表", "View and export reports"),
    ), ("staff_web", "staff_mobile")),
    Menu("archives", "档案管理", "Archives", (
        _p("archives:read", "查看档案", "View archives"),
        _p("archives:manage", "维护档案", "Maintain archives"),
    )),
    Menu("acquisition", "数据采集", "Data acquisition", (
        _p("acquisition:read", "查看采集任务", "View acquisition tasks"),
        _p("acquisition:manage", "维护巡测与补采", "Maintain patrols and backfills"),
    )),
    Menu("remote", "远程控制", "Remote control", (
        _p("remote:read", "实时召测", "Read meters on demand"),
        _p("remote:control", "阀门控制与参数设置", "Valve control and parameters"),
    ), ("staff_web", "staff_mobile")),
    Menu("workorders", "报修工单", "Repair orders", (
        _p("workorders:read", "查看工单", "View repair orders"),
        _p("workorders:handle", "接单与上报结果", "Take orders and report results"),
        _p("workorders:manage", "派单与关闭", "Dispatch and close orders"),
    ), ("staff_web", "staff_mobile")),
    Menu("notices", "物业通知", "Notices", (
        _p("notices:read", "查看通知", "View notices"),
        _p("notices:manage", "发布通知", "Publish notices"),
    ), ("staff_web", "staff_mobile")),
    Menu("audit", "操作日志", "Operation log", (
        _p("audit:read", "查看操作日志", "View the operation log"),
        _p("audit:export", "导出操作日志", "Export the operation log"),
    )),
    Menu("system", "系统管理", "System", (
        _p("users:read", "查看用户", "View users"),
        _p("users:manage", "维护用户", "Maintain users"),
        _p("roles:read", "查看角色", "View roles"),
        _p("roles:manage", "维护角色与权限", "Maintain roles and permissions"),
        _p("areas:read", "查看区域", "View areas"),
        _p("clients:manage", "维护第三方接口", "Maintain API clients"),
    )),
)

ALL_PERMISSIONS: frozenset[str] = frozenset(p.code for menu in MENUS for p in menu.permissions)
MENU_OF_PERMISSION: dict[str, Menu] = {p.code: menu for menu in MENUS for p in menu.permissions}
MENU_BY_CODE: dict[str, Menu] = {menu.code: menu for menu in MENUS}

# What an API client may be granted: business data, read only. System menus (users,
# roles, the operation log) are never open to third parties, whatever the granter holds.
CLIENT_SCOPES: frozenset[str] = frozenset(
    code
    for menu in MENUS
    if menu.code not in {"system", "audit", "remote"}
    for code in (p.code for p in menu.permissions)
    if code.endswith(":read")
) | {"areas:read"}

# Resident tokens carry these, and every resident query narrows to their households.
RESIDENT_PERMISSIONS: frozenset[str] = frozenset({"resident:self"})


def module_of(permission: str) -> str:
    """The audit module (menu code) of a permission."""
    menu = MENU_OF_PERMISSION.get(permission)
    return menu.code if menu else "system"


# Modules that are not menus: sign-in and token operations anyone may attempt.
EXTRA_MODULES: dict[str, str] = {"auth": "登录认证", "resident": "住户服务"}


def module_name(module: str) -> str:
    menu = MENU_BY_CODE.get(module)
    return menu.name if menu else EXTRA_MODULES.get(module, module)
