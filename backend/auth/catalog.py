"""The menu catalog (菜单): every installed domain's menus, each mapped to the
``resource:action`` permissions that open it. Both apps build their menus from it, role
editors offer it, and the audit log names a mutation's module by the menu that owns its
permission.

Menus are declared by their domains (``Domain.menus``) and collected here in domain
order, so a domain that is not installed offers no permission that opens nothing. A
permission belongs to exactly one menu. Auth comes first and imports no domain: the
host's domain list (``backend.domains``) tells the catalog where its menus come from
when it is imported (:func:`use_menus_of`). The catalog follows the installed set (tests
install a domain of their own): read it through these functions, never copy it into a
module constant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from backend.auth.menus import LogModule, Menu, Operation, Permission

T = TypeVar("T")

__all__ = [
    "RESIDENT_PERMISSIONS", "Catalog", "LogNames", "Menu", "Permission", "all_permissions", "catalog", "client_scopes",
    "log_names", "menus", "module_name", "module_of", "operation_name",
]

# Menus never open to third parties, whatever the granter holds: users, roles, the
# operation log, remote control, and the push and SMS delivery records (消息管理: the
# utility's own sending log, texts to residents' phones; not business data to integrate).
NOT_FOR_CLIENTS = frozenset({"system", "audit", "remote", "messages"})

# Resident tokens carry these, and every resident query narrows to their households.
RESIDENT_PERMISSIONS: frozenset[str] = frozenset({"resident:self"})

# Module codes of entries written before modules were declared (kept by the log for a year).
FORMER_MODULES: dict[str, str] = {"auth": "登录认证"}


@dataclass(frozen=True, slots=True)
class Catalog:
    menus: tuple[Menu, ...]
    all_permissions: frozenset[str]
    menu_of_permission: dict[str, Menu]
    menu_by_code: dict[str, Menu]
    # What an API client may be granted: business data, read only.
    client_scopes: frozenset[str]

    @classmethod
    def of(cls, menus: tuple[Menu, ...]) -> Catalog:
        menu_of: dict[str, Menu] = {}
        for menu in menus:
            for permission in menu.permissions:
                if permission.code in menu_of:
                    raise ValueError(f"permission {permission.code} is in two menus: "
                                     f"{menu_of[permission.code].code} and {menu.code}")
                menu_of[permission.code] = menu
        client_scopes = frozenset(
            p.code for menu in menus if menu.code not in NOT_FOR_CLIENTS for p in menu.permissions
            if p.code.endswith(":read")
        )
        # Area names come with any scoped grant, so a client can read the tree it is scoped to.
        if "areas:read" in menu_of:
            client_scopes |= {"areas:read"}
        return cls(menus, frozenset(menu_of), menu_of, {menu.code: menu for menu in menus}, client_scopes)


# The last catalog and log names built, with the declarations they were built from: the
# sources hand back the same tuples while the installed set stays, so a lookup (one per
# operation-log row) compares pointers instead of hashing every menu and operation.
_memo: dict[str, tuple[tuple[object, ...], object]] = {}


def _memoized(name: str, declared: tuple[object, ...], build: Callable[..., T]) -> T:
    last = _memo.get(name)
    if last is None or len(last[0]) != len(declared) or any(a is not b for a, b in zip(last[0], declared, strict=True)):
        last = (declared, build(*declared))
        _memo[name] = last
    return last[1]  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class LogNames:
    """What the operation log calls its modules and operations (操作模块, 操作)."""

    modules: dict[str, LogModule]
    operations: dict[str, Operation]

    @classmethod
    def of(cls, menus: tuple[Menu, ...], modules: tuple[LogModule, ...], operations: tuple[Operation, ...]) -> LogNames:
        named = {menu.code: LogModule(menu.code, menu.name, menu.name_en) for menu in menus}
        for module in modules:
            if module.code in named:
                raise ValueError(f"log module {module.code} is declared twice")
            named[module.code] = module
        by_action: dict[str, Operation] = {}
        for operation in operations:
            if operation.action in by_action:
                raise ValueError(f"operation {operation.action} is declared twice")
            if operation.module not in named:
                raise ValueError(f"operation {operation.action} names an unknown module {operation.module}")
            by_action[operation.action] = operation
        return cls(named, by_action)



_menus_source: list[Callable[[], tuple[Menu, ...]]] = []
_log_source: list[Callable[[], tuple[tuple[LogModule, ...], tuple[Operation, ...]]]] = []


def use_menus_of(source: Callable[[], tuple[Menu, ...]],
                 log_source: Callable[[], tuple[tuple[LogModule, ...], tuple[Operation, ...]]] = lambda: ((), ())) -> None:
    """Read the installed domains' menus from ``source``, and their log modules and
    operations from ``log_source`` (``backend.domains`` calls this)."""
    _menus_source[:] = [source]
    _log_source[:] = [log_source]


def catalog() -> Catalog:
    """The catalog of the installed domains (cached per installed set)."""
    if not _menus_source:
        raise RuntimeError("the menu catalog is read before the domain list: import backend.domains first")
    return _memoized("catalog", (_menus_source[0](),), Catalog.of)


def menus() -> tuple[Menu, ...]:
    return catalog().menus


def all_permissions() -> frozenset[str]:
    return catalog().all_permissions


def client_scopes() -> frozenset[str]:
    return catalog().client_scopes


def module_of(permission: str) -> str:
    """The audit module (menu code) of a permission."""
    menu = catalog().menu_of_permission.get(permission)
    return menu.code if menu else "system"


def log_names() -> LogNames:
    """The installed domains' log modules (menus included) and operations."""
    modules, operations = _log_source[0]() if _log_source else ((), ())
    return _memoized("log_names", (menus(), modules, operations), LogNames.of)


def module_name(module: str) -> str:
    """操作模块 of a module code (an undeclared code shows as itself)."""
    named = log_names().modules.get(module)
    return named.name if named else FORMER_MODULES.get(module, module)


def operation_name(action: str) -> str:
    """操作 of an action (an undeclared action shows as itself)."""
    operation = log_names().operations.get(action)
    return operation.name if operation else action
