"""The first administrator of an installation (``shuiwu admin create``).

A fresh database has no area and no user, and everything in shuiwu hangs below a
company (the root of the area tree: roles, users and data scope are areas). So the
first administrator comes with the company: this module makes the company when the
tree has none, the role 系统管理员 over it holding every permission the installed
domains declare, and the staff user with that role. It lives in archives because the
company is an area; the user and role are made through auth's service like any other.

The command is also how a utility adds another administrator later (a second one, or
after the only one left): the company is then found, not created, and the role reused.
A role 系统管理员 that misses permissions a newer release declares gets them here, since
nobody below it could grant them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.archives.models import Area, AreaKind
from backend.archives.service.areas import create_area
from backend.audit.service import record_operation
from backend.auth import service as auth
from backend.auth.catalog import all_permissions
from backend.auth.models import PrincipalKind, Role, RoleKind, RolePermission, StaffUser
from backend.auth.principal import Principal
from backend.errors import DomainError, ErrorCode

ADMIN_ROLE = "系统管理员"
# Who the operation log names for what the command does.
INSTALLER_NAME = "命令行 shuiwu admin create"


class CompanyRequired(DomainError):
    """The tree has no company yet (or several, and none was named)."""

    code = ErrorCode.BAD_USER_INPUT
    message = "请用 --company 指定公司名称 (供水单位)"
    message_en = "Name the company (the utility) with --company"


@dataclass(frozen=True)
class Administrator:
    user: StaffUser
    role: Role
    company: Area
    company_created: bool
    role_created: bool


def installer() -> Principal:
    """Who the command acts as: a staff principal with no roles (the highest rank, as
    the demo loader) holding every permission over the whole tree."""
    return Principal(kind=PrincipalKind.staff, id=0, name=INSTALLER_NAME, permissions=all_permissions(),
                     scope_paths=("/",))


async def create_administrator(
    session: AsyncSession, *, username: str, full_name: str, password: str, now: datetime,
    company: str | None = None, phone: str | None = None, email: str | None = None,
) -> Administrator:
    """A staff user holding 系统管理员 over the company; the caller commits.

    ``company`` names the root area: created when the tree has none, else it must name
    an existing company (it may be left out when there is exactly one). Weak passwords
    and taken usernames are refused with auth's typed errors, before anything is written.
    """
    actor = installer()
    root, created = await _company(session, company)
    role, role_created = await _admin_role(session, actor, root)
    assert role.id is not None and root.id is not None
    user = await auth.create_staff_user(
        session, actor=actor, username=username, full_name=full_name, password=password, role_ids=[role.id],
        email=email, phone=phone, now=now, unit_id=root.id,
    )
    what = f"新增系统管理员 {user.username}" + (f", 新建公司 {root.name}" if created else "")
    await record_operation(session, at=now, actor=actor, module="users", action="createStaffUser", summary=what,
                           payload={"username": user.username, "company": root.name, "role": role.name},
                           success=True, ip=None, request_id=None, subject_area_id=root.id)
    return Administrator(user, role, root, created, role_created)


async def _company(session: AsyncSession, name: str | None) -> tuple[Area, bool]:
    roots = list((await session.execute(
        select(Area).where(col(Area.parent_id).is_(None)).order_by(col(Area.id))
    )).scalars())
    if name is not None:
        name = name.strip()
        for root in roots:
            if root.name == name:
                return root, False
        if roots:
            raise DomainError("没有这个公司; 已有: " + "、".join(r.name for r in roots),
                              "No such company; the companies are: " + ", ".join(r.name for r in roots),
                              field="company", code=ErrorCode.UNKNOWN_AREA)
        return await create_area(session, name=name, kind=AreaKind.company), True
    if len(roots) == 1:
        return roots[0], False
    raise CompanyRequired(field="company")


async def _admin_role(session: AsyncSession, actor: Principal, company: Area) -> tuple[Role, bool]:
    """The company's 系统管理员 role: the one belonging to it (its unit is the company),
    else a new one over the company. Role names are unique across companies, so a
    second company's role is named 系统管理员 (<company>); another company's role is never
    reused (its areas would give the new administrator that company's data)."""
    assert company.id is not None
    everything = all_permissions()
    names = (ADMIN_ROLE, f"{ADMIN_ROLE} ({company.name})")
    role = (await session.execute(
        select(Role).where(col(Role.name).in_(names), col(Role.area_id) == company.id).order_by(col(Role.id))
    )).scalars().first()
    if role is None:
        taken = (await session.execute(select(col(Role.id)).where(col(Role.name) == ADMIN_ROLE))).first() is not None
        role = await auth.create_role(session, actor=actor, name=names[1] if taken else names[0],
                                      kind=RoleKind.system_admin, permissions=everything, area_ids=[company.id],
                                      unit_id=company.id, description="全部菜单, 全部区域 (shuiwu admin create)")
        return role, True
    if role.kind is not RoleKind.system_admin:
        raise DomainError(f"已有名为「{role.name}」的角色, 但不是系统管理员类型",
                          f"A role named {role.name} exists but is not a system administrator role",
                          field="role", code=ErrorCode.DUPLICATE)
    held = set((await session.execute(
        select(col(RolePermission.permission)).where(col(RolePermission.role_id) == role.id)
    )).scalars())
    session.add_all(RolePermission(role_id=role.id, permission=p) for p in sorted(everything - held))  # type: ignore[arg-type]
    return role, False
