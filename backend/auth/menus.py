"""The shapes of the menu catalog (菜单): a menu and the ``resource:action`` permissions
that open it. Domains declare their menus with these (``backend.domain.Domain.menus``);
``backend.auth.catalog`` collects them. No imports: every declaration can use it."""

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


def permission(code: str, name: str, name_en: str) -> Permission:
    return Permission(code, name, name_en)


@dataclass(frozen=True, slots=True)
class LogModule:
    """A 操作模块 of the operation log that is not a menu (用户登录, 用户管理, 角色管理 …):
    menus name their own modules; these tell apart what one menu holds."""

    code: str
    name: str
    name_en: str


@dataclass(frozen=True, slots=True)
class Operation:
    """The 操作 an operation-log entry shows for ``action`` (a mutation's name, or an
    HTTP route's such as ``exportHouseholds``), and the module its entries are written
    under (a menu code or a :class:`LogModule` code)."""

    action: str
    name: str
    name_en: str
    module: str
