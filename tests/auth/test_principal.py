"""Principals: permissions and a minimal data scope re-read from roles (backend/auth/principal.py)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.service import areas_statement
from backend.auth import service as auth
from backend.auth.models import PrincipalKind, RoleKind
from backend.auth.principal import Principal
from backend.auth.service import StaffUserChanges, minimal_paths
from tests.auth.support import NOW
from tests.factories import ROOT, make_area_tree, unique


def test_in_scope_matches_the_subtree_and_not_a_sibling_sharing_a_prefix() -> None:
    principal = Principal(kind=PrincipalKind.staff, id=1, name="王五", scope_paths=("/1/4/",))

    assert principal.in_scope("/1/4/")
    assert principal.in_scope("/1/4/17/")
    assert not principal.in_scope("/1/40/")
    assert not principal.in_scope("/1/")
    assert principal.scope_patterns() == ["/1/4/%"]


def test_a_principal_without_scope_sees_nothing() -> None:
    principal = Principal(kind=PrincipalKind.staff, id=1, name="王五")

    assert not principal.in_scope("/1/")
    assert principal.scope_patterns() == []


def test_minimal_paths_drops_paths_inside_another_and_keeps_prefix_siblings() -> None:
    assert minimal_paths(["/1/4/17/", "/1/4/", "/1/40/", "/1/4/"]) == ("/1/4/", "/1/40/")


async def test_load_principal_unites_roles_and_keeps_only_the_outermost_scope_paths(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    district = await auth.create_role(
        session, actor=ROOT, name=unique("片区"), kind=RoleKind.operator,
        permissions={"readings:read"}, area_ids=[tree.east.id or 0],
    )
    community = await auth.create_role(
        session, actor=ROOT, name=unique("小区"), kind=RoleKind.operator,
        permissions={"statistics:read"}, area_ids=[tree.east_community.id or 0],
    )
    user = await auth.create_staff_user(
        session, actor=ROOT, username=unique("zhao"), full_name="赵六", password="Passw0rd!x",
        role_ids=[district.id or 0, community.id or 0], now=NOW,
    )
    assert user.id is not None

    principal = await auth.load_principal(session, kind=PrincipalKind.staff, principal_id=user.id)

    assert principal is not None
    assert principal.scope_paths == (tree.east.path,)
    assert principal.permissions == frozenset({"readings:read", "statistics:read"})
    assert (principal.kind, principal.id, principal.name) == (PrincipalKind.staff, user.id, "赵六")


async def test_scope_patterns_filter_areas_to_the_principals_subtrees(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    principal = Principal(kind=PrincipalKind.staff, id=1, name="王五", scope_paths=(tree.east.path,))

    visible = (await session.execute(areas_statement(scope_patterns=principal.scope_patterns()))).scalars().all()

    tree_ids = {tree.company.id, tree.east.id, tree.west.id, tree.east_community.id, tree.west_community.id}
    ids = [area.id for area in visible if area.id in tree_ids]
    assert ids == [tree.east.id, tree.east_community.id]


async def test_an_inactive_or_unknown_staff_user_has_no_principal(session: AsyncSession) -> None:
    user = await auth.create_staff_user(
        session, actor=ROOT, username=unique("qian"), full_name="钱七", password="Passw0rd!x", now=NOW
    )
    assert user.id is not None
    await auth.update_staff_user(session, actor=ROOT, user_id=user.id, changes=StaffUserChanges(is_active=False), now=NOW)

    assert await auth.load_principal(session, kind=PrincipalKind.staff, principal_id=user.id) is None
    assert await auth.load_principal(session, kind=PrincipalKind.staff, principal_id=10**12) is None


async def test_a_user_without_roles_has_no_permissions_and_no_scope(session: AsyncSession) -> None:
    user = await auth.create_staff_user(
        session, actor=ROOT, username=unique("sun"), full_name="孙八", password="Passw0rd!x", now=NOW
    )
    assert user.id is not None

    principal = await auth.load_principal(session, kind=PrincipalKind.staff, principal_id=user.id)

    assert principal is not None
    assert (principal.permissions, principal.scope_paths) == (frozenset(), ())
