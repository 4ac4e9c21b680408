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
from functools import cache

from backend.auth.menus import Menu, Permission

__all__ = [
    "RESIDENT_PERMISSIONS", "Catalog", "Menu", "Permission", "all_permissions", "catalog", "client_scopes", "menus",
    "module_name", "module_of",
]

# Menus never open to third parties, whatever the granter holds: users, roles, the
# operation log, remote control.
NOT_FOR_CLIENTS = frozenset({"system", "audit", "remote"})

# Resident tokens carry these, and every resident query narrows to their households.
RESIDENT_PERMISSIONS: frozenset[str] = frozenset({"resident:self"})

# Modules that are not menus: sign-in and token operations anyone may attempt.
EXTRA_MODULES: dict[str, str] = {"auth": "登录认证", "resident": "住户服务"}


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


@cache
def _catalog_of(menus: tuple[Menu, ...]) -> Catalog:
    return Catalog.of(menus)


_menus_source: list[Callable[[], tuple[Menu, ...]]] = []


def use_menus_of(source: Callable[[], tuple[Menu, ...]]) -> None:
    """Read the installed domains' menus from ``source`` (``backend.domains`` calls this)."""
    _menus_source[:] = [source]


def catalog() -> Catalog:
    """The catalog of the installed domains (cached per installed set)."""
    if not _menus_source:
        raise RuntimeError("the menu catalog is read before the domain list: import backend.domains first")
    return _catalog_of(_menus_source[0]())


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


def module_name(module: str) -> str:
    menu = catalog().menu_by_code.get(module)
    return menu.name if menu else EXTRA_MODULES.get(module, module)
