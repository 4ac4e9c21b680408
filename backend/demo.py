"""``shuiwu demo load``: a small but realistic utility, loaded idempotently.

Each installed domain's demo step runs in domain order (``Domain.demo``: the archives'
area tree, households and devices; readings' 13 months of readings; billing's accounts
and prepaid history; payments' record of that history). As soon as the area tree exists
(right after archives' step) come the demo's people: roles granted what the domains
declare for them (``Domain.demo_grants``), the staff logins ``demo run`` prints, a
resident and an API client; later steps can name them (the cashier who took the
history's counter payments). Every object is found by its natural key before it is
created, so loading twice changes nothing.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth import service as auth
from backend.auth.catalog import all_permissions, client_scopes
from backend.auth.models import ApiClient, PrincipalKind, Role, RoleKind, StaffUser
from backend.auth.principal import Principal
from backend.auth.security import token_digest, verify_password_off_loop
from backend.clock import utcnow
from backend.domain import DemoPlan, load, system_principal
from backend.domains import installed


@dataclass(frozen=True)
class DemoLogin:
    who: str
    username: str
    password: str
    role: str


ADMIN = DemoLogin("系统管理员", "admin", "Admin@2026", "系统管理员")
CASHIER = DemoLogin("收费员 (城东片区)", "cashier", "Cashier@2026", "收费员")
REPAIR = DemoLogin("维修员 (城东片区)", "repair", "Repair@2026", "维修员")
MANAGER = DemoLogin("单位管理员", "manager", "Manager@2026", "单位管理员")
RESIDENT_PHONE = "13800000001"
CLIENT_ID = "swc_demo_client"
CLIENT_SECRET = "demo-client-secret-change-me"


def _demo_actor() -> Principal:
    return Principal(kind=PrincipalKind.staff, id=0, name="demo", permissions=all_permissions(), scope_paths=("/",))


def demo_grants(role: str) -> frozenset[str]:
    """What the installed domains grant the demo role ``role`` ("cashier", "repair")."""
    return frozenset(p for domain in installed() for p in domain.demo_grants.get(role, frozenset()))


async def _role(session: AsyncSession, name: str, kind: RoleKind, permissions: frozenset[str], area_id: int,
                parent: Role | None, description: str) -> Role:
    found = (await session.execute(select(Role).where(Role.name == name))).scalars().first()  # type: ignore[arg-type]
    # A role belongs to the unit of its area (the district of a district's role).
    return found or await auth.create_role(
        session, actor=_demo_actor(), name=name, kind=kind, permissions=permissions,
        area_ids=[area_id], parent_id=parent.id if parent else None, description=description, unit_id=area_id,
    )


async def _user(session: AsyncSession, login: DemoLogin, full_name: str, role: Role) -> None:
    if (await session.execute(select(StaffUser.id).where(StaffUser.username == login.username))).first():  # type: ignore[call-overload]
        return
    assert role.id is not None
    # A user belongs to their role's unit: the cashier to 城东片区, the administrators to the company.
    await auth.create_staff_user(
        session, actor=_demo_actor(), username=login.username, full_name=full_name, password=login.password,
        role_ids=[role.id], phone=f"0571-8888{zlib.crc32(login.username.encode()) % 10000:04d}", now=utcnow(),
        unit_id=role.area_id,
    )



async def load_demo(session: AsyncSession, *, households: int = 2000, seed: int = 7,
                    progress: Callable[[str], None] = lambda _: None, readings: bool = False,
                    now: datetime | None = None, tz: str = "Asia/Shanghai") -> list[DemoLogin]:
    """Load (or top up) the demo utility. Returns the staff logins to print. With
    ``readings``, also 13 months of readings up to ``now`` (backend.readings.demo)."""
    plan = DemoPlan(households=households, seed=seed, readings=readings, now=now or utcnow(), timezone=tz,
                    progress=progress, actor=system_principal(installed()),
                    logins={"admin": ADMIN.username, "manager": MANAGER.username, "cashier": CASHIER.username,
                            "repair": REPAIR.username})
    people = False
    for domain in installed():
        if domain.demo is not None:
            await load(domain.demo)(session, plan)
        if not people and {"company", "east"} <= plan.areas.keys():
            # The people come as soon as the area tree exists (archives), so later steps can
            # name them: payments' history is taken at the counter by the demo cashier.
            await _load_people(session, company=plan.areas["company"], east=plan.areas["east"], progress=progress)
            people = True
    if not people:
        await _load_people(session, company=plan.areas["company"], east=plan.areas["east"], progress=progress)
    # A bulk load leaves the planner's statistics behind (as after pg_restore): until
    # autovacuum gets to them, a year of statistics took a nested-loop plan, 3x slower.
    progress("统计信息 (ANALYZE)")
    await session.execute(text("ANALYZE"))
    return [ADMIN, MANAGER, CASHIER, REPAIR]


async def _load_people(session: AsyncSession, *, company: int, east: int, progress: Callable[[str], None]) -> None:
    progress("角色与用户")
    everything = all_permissions()
    admin_role = await _role(session, ADMIN.role, RoleKind.system_admin, everything, company, None, "全部菜单, 全部区域")
    manager_perms = frozenset(p for p in everything if not p.startswith(("clients:",)))
    manager_role = await _role(session, MANAGER.role, RoleKind.unit_admin, manager_perms, company, admin_role, "本单位的业务与人员")
    cashier_role = await _role(session, CASHIER.role, RoleKind.operator, demo_grants("cashier"), east, manager_role,
                               "柜台收费, 城东片区")
    repair_role = await _role(session, REPAIR.role, RoleKind.operator, demo_grants("repair"), east, manager_role,
                              "维修接单, 城东片区")
    await _user(session, ADMIN, "系统管理员", admin_role)
    await _user(session, MANAGER, "周建华", manager_role)
    await _user(session, CASHIER, "李秀英", cashier_role)
    await _user(session, REPAIR, "王磊", repair_role)

    progress("住户登录与第三方接口")
    await session.execute(
        text(
            "WITH r AS (INSERT INTO residents (phone) VALUES (:phone) "
            "ON CONFLICT (phone) DO UPDATE SET phone = EXCLUDED.phone RETURNING id) "
            "INSERT INTO resident_households (resident_id, household_id) "
            "SELECT r.id, h.id FROM r, households h WHERE h.account_no = '0100000001' ON CONFLICT DO NOTHING"
        ),
        {"phone": RESIDENT_PHONE},
    )
    if (await session.execute(select(ApiClient.id).where(ApiClient.client_id == CLIENT_ID))).first() is None:  # type: ignore[call-overload]
        admin_id = (await session.execute(select(StaffUser.id).where(StaffUser.username == ADMIN.username))).scalar_one()  # type: ignore[call-overload]
        admin = await auth.load_principal(session, kind=PrincipalKind.staff, principal_id=admin_id)
        assert admin is not None
        issued = await auth.create_api_client(
            session, actor=admin, name="示范第三方 (营业厅大屏)", scopes=client_scopes(), area_ids=[company],
        )
        issued.client.client_id = CLIENT_ID
        issued.client.secret_hash = token_digest(CLIENT_SECRET)
    await session.flush()


async def published_credentials_in_use(session: AsyncSession) -> list[str]:
    """The demo's published credentials (README prints them) that still open this
    database: the staff logins whose password is the published one, and the API client
    with the published secret. Empty on an installation made with ``shuiwu admin
    create``; a real utility's database that lists any is open to whoever read README."""
    published = {login.username: login.password for login in (ADMIN, MANAGER, CASHIER, REPAIR)}
    users = (await session.execute(
        select(StaffUser.username, StaffUser.password_hash)  # type: ignore[call-overload]
        .where(StaffUser.username.in_(published), StaffUser.is_active)  # type: ignore[attr-defined]
    )).all()
    found = [f"login {username}" for username, password_hash in sorted(users)
             if await verify_password_off_loop(password_hash, published[username])]
    client = (await session.execute(
        select(ApiClient.id).where(ApiClient.client_id == CLIENT_ID, ApiClient.secret_hash == token_digest(CLIENT_SECRET),  # type: ignore[call-overload,arg-type]
                                   ApiClient.is_active)
    )).first()
    if client is not None:
        found.append(f"API client {CLIENT_ID}")
    return found
