"""``shuiwu demo load``: a small but realistic utility, loaded idempotently.

Every object is found by its natural key before it is created, so loading twice changes
nothing. Later issues extend the loader (meters, readings, accounts, …) the same way.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.models import Area, AreaKind
from backend.archives.service import create_area
from backend.auth import service as auth
from backend.auth.catalog import ALL_PERMISSIONS, CLIENT_SCOPES
from backend.auth.models import ApiClient, PrincipalKind, Role, RoleKind, StaffUser
from backend.auth.principal import Principal
from backend.auth.security import token_digest
from backend.clock import utcnow


@dataclass(frozen=True)
class DemoLogin:
    who: str
    username: str
    password: str
    role: str


COMPANY = "示范水务有限公司"
DISTRICTS = {
    "城东片区": ["翠湖小区", "阳光花园", "锦绣家园"],
    "城西片区": ["西山名苑", "金桂小区"],
    "城南片区": ["南湖新村", "滨江一号", "幸福里"],
}
SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任"
    "沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
)
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华玉兰萍红鹏飞建华志强海燕晓东丹丹文博雨欣子涵浩然梓轩"

ADMIN = DemoLogin("系统管理员", "admin", "Admin@2026", "系统管理员")
CASHIER = DemoLogin("收费员 (城东片区)", "cashier", "Cashier@2026", "收费员")
REPAIR = DemoLogin("维修员 (城东片区)", "repair", "Repair@2026", "维修员")
MANAGER = DemoLogin("单位管理员", "manager", "Manager@2026", "单位管理员")
RESIDENT_PHONE = "13800000001"
CLIENT_ID = "swc_demo_client"
CLIENT_SECRET = "demo-client-secret-change-me"

_SYSTEM = Principal(kind=PrincipalKind.staff, id=0, name="demo", permissions=ALL_PERMISSIONS, scope_paths=("/",))


async def _area(session: AsyncSession, name: str, kind: AreaKind, parent: Area | None) -> Area:
    statement = select(Area).where(Area.name == name, Area.kind == kind)  # type: ignore[arg-type]
    statement = statement.where(Area.parent_id == (parent.id if parent else None)) if parent else statement.where(Area.parent_id.is_(None))  # type: ignore[union-attr,arg-type]
    found = (await session.execute(statement)).scalars().first()
    return found or await create_area(session, name=name, kind=kind, parent_id=parent.id if parent else None)


async def _role(session: AsyncSession, name: str, kind: RoleKind, permissions: frozenset[str], areas: list[Area],
                parent: Role | None, description: str) -> Role:
    found = (await session.execute(select(Role).where(Role.name == name))).scalars().first()  # type: ignore[arg-type]
    return found or await auth.create_role(
        session, actor=_SYSTEM, name=name, kind=kind, permissions=permissions,
        area_ids=[a.id for a in areas if a.id is not None], parent_id=parent.id if parent else None, description=description,
    )


async def _user(session: AsyncSession, login: DemoLogin, full_name: str, role: Role) -> None:
    if (await session.execute(select(StaffUser.id).where(StaffUser.username == login.username))).first():  # type: ignore[call-overload]
        return
    assert role.id is not None
    await auth.create_staff_user(
        session, actor=_SYSTEM, username=login.username, full_name=full_name, password=login.password,
        role_ids=[role.id], phone=f"0571-8888{zlib.crc32(login.username.encode()) % 10000:04d}", now=utcnow(),
    )


async def load_demo(session: AsyncSession, *, households: int = 2000, seed: int = 7,
                    progress: Callable[[str], None] = lambda _: None) -> list[DemoLogin]:
    """Load (or top up) the demo utility. Returns the staff logins to print."""
    rng = random.Random(seed)
    progress("区域")
    company = await _area(session, COMPANY, AreaKind.company, None)
    buildings: list[Area] = []
    district_rows: dict[str, Area] = {}
    for district_name, communities in DISTRICTS.items():
        district = district_rows[district_name] = await _area(session, district_name, AreaKind.district, company)
        for community_name in communities:
            community = await _area(session, community_name, AreaKind.community, district)
            for number in range(1, 5):
                buildings.append(await _area(session, f"{number}号楼", AreaKind.building, community))

    progress("角色与用户")
    everything = frozenset(ALL_PERMISSIONS)
    admin_role = await _role(session, ADMIN.role, RoleKind.system_admin, everything, [company], None, "全部菜单, 全部区域")
    manager_perms = frozenset(p for p in everything if not p.startswith(("clients:",)))
    manager_role = await _role(session, MANAGER.role, RoleKind.unit_admin, manager_perms, [company], admin_role, "本单位的业务与人员")
    cashier_perms = frozenset({"readings:read", "statistics:read", "prepaid:read", "billing:recharge", "bills:read",
                               "payments:collect", "accounts:read", "archives:read", "areas:read", "reports:read"})
    east = district_rows["城东片区"]
    cashier_role = await _role(session, CASHIER.role, RoleKind.operator, cashier_perms, [east], manager_role, "柜台收费, 城东片区")
    repair_perms = frozenset({"workorders:read", "workorders:handle", "notices:read", "readings:read",
                              "alarms:read", "archives:read", "areas:read"})
    repair_role = await _role(session, REPAIR.role, RoleKind.operator, repair_perms, [east], manager_role, "维修接单, 城东片区")
    await _user(session, ADMIN, "系统管理员", admin_role)
    await _user(session, MANAGER, "周建华", manager_role)
    await _user(session, CASHIER, "李秀英", cashier_role)
    await _user(session, REPAIR, "王磊", repair_role)

    progress(f"住户 ({households})")
    account_nos, names, area_ids = [], [], []
    for index in range(households):
        building = buildings[index % len(buildings)]
        account_nos.append(f"01{index + 1:08d}")
        names.append(rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2)))))
        area_ids.append(building.id)
    # Set-based and idempotent: existing account numbers are left as they are.
    await session.execute(
        text(
            "INSERT INTO households (account_no, name, area_id) "
            "SELECT * FROM unnest(CAST(:account_nos AS text[]), CAST(:names AS text[]), CAST(:area_ids AS bigint[])) "
            "ON CONFLICT (account_no) DO NOTHING"
        ),
        {"account_nos": account_nos, "names": names, "area_ids": area_ids},
    )

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
            session, actor=admin, name="示范第三方 (营业厅大屏)", scopes=CLIENT_SCOPES, area_ids=[company.id] if company.id else [],
        )
        issued.client.client_id = CLIENT_ID
        issued.client.secret_hash = token_digest(CLIENT_SECRET)
    await session.flush()
    return [ADMIN, MANAGER, CASHIER, REPAIR]
