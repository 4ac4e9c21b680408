"""Roles: a user grants only what they hold, and a child role never outranks its parent."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth import errors
from backend.auth import service as auth
from backend.auth.models import Role, RoleKind
from backend.auth.service import RoleChanges
from backend.errors import ErrorCode, NotFound, ValidationFailed
from tests.auth.support import NOW, POLICY, row_counts
from tests.factories import ROOT, AreaTree, Staff, make_area_tree, make_staff

ROLE_TABLES = ("roles", "role_permissions", "role_areas")


async def east_role_manager(session: AsyncSession, tree: AreaTree) -> Staff:
    """A manager of the east district holding roles:manage and two read permissions."""
    return await make_staff(
        session, permissions={"roles:manage", "readings:read", "statistics:read"}, areas=[tree.east],
        kind=RoleKind.unit_admin,
    )


async def parent_role(session: AsyncSession, tree: AreaTree, *, kind: RoleKind = RoleKind.unit_admin) -> Role:
    return await auth.create_role(
        session, actor=ROOT, name="片区主管", kind=kind, permissions={"readings:read", "statistics:read"},
        area_ids=[tree.east.id or 0],
    )


async def grants_of(session: AsyncSession, role_id: int | None) -> tuple[list[str], list[int]]:
    assert role_id is not None
    permissions = await auth.role_permissions(session, [role_id])
    areas = await auth.role_area_ids(session, [role_id])
    return permissions[role_id], areas[role_id]


async def unknown_area_id(session: AsyncSession) -> int:
    return int((await session.execute(text("SELECT coalesce(max(id), 0) + 1000 FROM areas"))).scalar_one())


# --------------------------------------------------------------------------- create


async def test_a_manager_creates_a_role_within_their_permissions_and_scope(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    manager = await east_role_manager(session, tree)

    role = await auth.create_role(
        session, actor=manager.principal, name=" 抄表员 ", kind=RoleKind.operator,
        permissions={"readings:read"}, area_ids=[tree.east_community.id or 0], description="  only reads ",
    )

    assert (role.name, role.kind, role.description) == ("抄表员", RoleKind.operator, "only reads")
    assert await grants_of(session, role.id) == (["readings:read"], [tree.east_community.id])


async def test_a_role_granting_a_permission_the_actor_lacks_is_refused_and_nothing_is_written(
    session: AsyncSession,
) -> None:
    tree = await make_area_tree(session)
    manager = await east_role_manager(session, tree)
    before = await row_counts(session, *ROLE_TABLES)

    with pytest.raises(errors.GrantExceedsOwn) as refused:
        await auth.create_role(
            session, actor=manager.principal, name="收费员", kind=RoleKind.operator,
            permissions={"readings:read", "readings:write"}, area_ids=[tree.east.id or 0],
        )

    assert refused.value.field == "permissions"
    assert await row_counts(session, *ROLE_TABLES) == before


async def test_a_role_over_an_area_outside_the_actors_scope_is_refused_and_nothing_is_written(
    session: AsyncSession,
) -> None:
    tree = await make_area_tree(session)
    manager = await east_role_manager(session, tree)
    before = await row_counts(session, *ROLE_TABLES)

    for outside in (tree.west, tree.west_community, tree.company):
        with pytest.raises(errors.GrantExceedsOwn):
            await auth.create_role(
                session, actor=manager.principal, name="城西抄表员", kind=RoleKind.operator,
                permissions={"readings:read"}, area_ids=[outside.id or 0],
            )

    assert await row_counts(session, *ROLE_TABLES) == before


async def test_an_area_outside_the_actors_scope_is_reported_on_the_area_field(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    manager = await east_role_manager(session, tree)

    with pytest.raises(errors.GrantExceedsOwn) as refused:
        await auth.create_role(
            session, actor=manager.principal, name="城西抄表员", kind=RoleKind.operator,
            permissions={"readings:read"}, area_ids=[tree.west.id or 0],
        )

    assert refused.value.field == "areaIds"


async def test_an_unknown_permission_is_refused_and_named(session: AsyncSession) -> None:
    before = await row_counts(session, *ROLE_TABLES)

    with pytest.raises(errors.UnknownPermission) as refused:
        await auth.create_role(
            session, actor=ROOT, name="拼写错误", kind=RoleKind.operator,
            permissions={"readings:read", "readings:raed"}, area_ids=[],
        )

    assert refused.value.field == "permissions"
    assert "readings:raed" in refused.value.message_en
    assert await row_counts(session, *ROLE_TABLES) == before


async def test_an_unknown_area_id_is_refused(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    before = await row_counts(session, *ROLE_TABLES)

    with pytest.raises(errors.UnknownArea) as refused:
        await auth.create_role(
            session, actor=ROOT, name="幽灵片区", kind=RoleKind.operator,
            permissions={"readings:read"}, area_ids=[tree.east.id or 0, await unknown_area_id(session)],
        )

    assert refused.value.field == "areaIds"
    assert await row_counts(session, *ROLE_TABLES) == before


async def test_a_duplicate_role_name_is_a_validation_error_on_the_name(session: AsyncSession) -> None:
    await auth.create_role(session, actor=ROOT, name="收费员", kind=RoleKind.operator, permissions=[], area_ids=[])
    before = await row_counts(session, *ROLE_TABLES)

    with pytest.raises(ValidationFailed) as refused:
        await auth.create_role(
            session, actor=ROOT, name=" 收费员 ", kind=RoleKind.operator, permissions=[], area_ids=[]
        )

    assert (refused.value.code, refused.value.field) == (ErrorCode.DUPLICATE, "name")
    assert [type(e) for e in refused.value.errors] == [errors.Duplicate]
    assert await row_counts(session, *ROLE_TABLES) == before


@pytest.mark.parametrize("name", ["", "   ", "角" * 65])
async def test_a_blank_or_overlong_role_name_is_invalid(session: AsyncSession, name: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        await auth.create_role(session, actor=ROOT, name=name, kind=RoleKind.operator, permissions=[], area_ids=[])

    assert (refused.value.code, refused.value.field) == (ErrorCode.INVALID, "name")


# --------------------------------------------------------------------------- hierarchy


async def test_a_child_role_within_its_parent_is_created(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    parent = await parent_role(session, tree)

    child = await auth.create_role(
        session, actor=ROOT, name="抄表员", kind=RoleKind.operator, permissions={"readings:read"},
        area_ids=[tree.east_community.id or 0], parent_id=parent.id,
    )

    assert child.parent_id == parent.id


async def test_a_child_role_with_a_permission_its_parent_lacks_is_refused(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    parent = await parent_role(session, tree)
    before = await row_counts(session, *ROLE_TABLES)

    with pytest.raises(errors.RoleHierarchy) as refused:
        await auth.create_role(
            session, actor=ROOT, name="抄表员", kind=RoleKind.operator,
            permissions={"readings:read", "readings:write"}, area_ids=[tree.east.id or 0], parent_id=parent.id,
        )

    assert refused.value.field == "permissions"
    assert await row_counts(session, *ROLE_TABLES) == before


async def test_a_child_role_ranking_above_its_parent_is_refused(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    parent = await parent_role(session, tree, kind=RoleKind.department_admin)
    before = await row_counts(session, *ROLE_TABLES)

    with pytest.raises(errors.RoleHierarchy) as refused:
        await auth.create_role(
            session, actor=ROOT, name="单位管理员", kind=RoleKind.unit_admin,
            permissions={"readings:read"}, area_ids=[], parent_id=parent.id,
        )

    assert refused.value.field == "kind"
    assert await row_counts(session, *ROLE_TABLES) == before


async def test_a_child_role_over_an_area_outside_its_parents_is_refused(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    parent = await parent_role(session, tree)

    with pytest.raises(errors.RoleHierarchy) as refused:
        await auth.create_role(
            session, actor=ROOT, name="城西抄表员", kind=RoleKind.operator,
            permissions={"readings:read"}, area_ids=[tree.west_community.id or 0], parent_id=parent.id,
        )

    assert refused.value.field == "areaIds"


async def test_a_role_cannot_be_its_own_parent(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    role = await parent_role(session, tree)

    with pytest.raises(errors.RoleHierarchy) as refused:
        await auth.update_role(session, actor=ROOT, role_id=role.id or 0, changes=RoleChanges(parent_id=role.id))

    assert refused.value.field == "parentId"


async def test_an_unknown_parent_role_is_not_found(session: AsyncSession) -> None:
    with pytest.raises(NotFound) as refused:
        await auth.create_role(
            session, actor=ROOT, name="孤儿", kind=RoleKind.operator, permissions=[], area_ids=[], parent_id=10**12
        )

    assert refused.value.field == "parentId"


async def test_a_role_cannot_become_the_child_of_its_own_child(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    parent = await parent_role(session, tree)
    child = await auth.create_role(
        session, actor=ROOT, name="副主管", kind=parent.kind, permissions={"readings:read", "statistics:read"},
        area_ids=[tree.east.id or 0], parent_id=parent.id,
    )

    with pytest.raises(errors.RoleHierarchy) as refused:
        await auth.update_role(session, actor=ROOT, role_id=parent.id or 0, changes=RoleChanges(parent_id=child.id))

    assert refused.value.field == "parentId"


async def test_narrowing_a_parent_below_what_its_child_holds_is_refused(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    parent = await parent_role(session, tree)
    await auth.create_role(
        session, actor=ROOT, name="收费员", kind=RoleKind.operator, permissions={"statistics:read"},
        area_ids=[tree.east.id or 0], parent_id=parent.id,
    )

    with pytest.raises(errors.RoleHierarchy):
        await auth.update_role(
            session, actor=ROOT, role_id=parent.id or 0, changes=RoleChanges(permissions=frozenset({"readings:read"}))
        )


# --------------------------------------------------------------------------- update and delete


async def test_update_role_changes_only_what_it_names(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    role = await parent_role(session, tree)

    updated = await auth.update_role(
        session, actor=ROOT, role_id=role.id or 0, changes=RoleChanges(permissions=frozenset({"readings:read"}))
    )

    assert (updated.name, updated.kind) == ("片区主管", RoleKind.unit_admin)
    assert await grants_of(session, role.id) == (["readings:read"], [tree.east.id])


async def test_update_role_keeps_its_own_name_without_a_duplicate_error(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    role = await parent_role(session, tree)

    updated = await auth.update_role(
        session, actor=ROOT, role_id=role.id or 0, changes=RoleChanges(name="片区主管", description="东区")
    )

    assert (updated.name, updated.description) == ("片区主管", "东区")


async def test_an_actor_cannot_edit_or_delete_a_role_holding_more_than_they_do(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    manager = await east_role_manager(session, tree)
    # Both belong to the manager's own unit: what they grant is what makes them not the manager's.
    bigger = await auth.create_role(
        session, actor=ROOT, name="收费主管", kind=RoleKind.operator,
        permissions={"readings:read", "readings:write"}, area_ids=[tree.east.id or 0], unit_id=tree.east.id,
    )
    wider = await auth.create_role(
        session, actor=ROOT, name="全公司抄表", kind=RoleKind.operator,
        permissions={"readings:read"}, area_ids=[tree.company.id or 0], unit_id=tree.east.id,
    )
    before = await row_counts(session, *ROLE_TABLES)

    for role in (bigger, wider):
        with pytest.raises(errors.GrantExceedsOwn) as refused_edit:
            await auth.update_role(
                session, actor=manager.principal, role_id=role.id or 0, changes=RoleChanges(description="mine now")
            )
        assert refused_edit.value.field == "id"
        with pytest.raises(errors.GrantExceedsOwn) as refused_delete:
            await auth.delete_role(session, actor=manager.principal, role_id=role.id or 0)
        assert refused_delete.value.field == "id"

    assert await row_counts(session, *ROLE_TABLES) == before
    assert await grants_of(session, bigger.id) == (["readings:read", "readings:write"], [tree.east.id])


async def test_delete_role_is_refused_while_a_user_holds_it(session: AsyncSession) -> None:
    staff = await make_staff(session, permissions={"readings:read"})
    assert staff.user.id is not None
    (role_id,) = (await auth.user_role_ids(session, [staff.user.id]))[staff.user.id]
    before = await row_counts(session, *ROLE_TABLES)

    with pytest.raises(errors.RoleInUse) as refused:
        await auth.delete_role(session, actor=ROOT, role_id=role_id)

    assert refused.value.field == "id"
    assert await row_counts(session, *ROLE_TABLES) == before


async def test_delete_role_is_refused_while_a_child_role_names_it(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    parent = await parent_role(session, tree)
    await auth.create_role(
        session, actor=ROOT, name="抄表员", kind=RoleKind.operator, permissions={"readings:read"},
        area_ids=[], parent_id=parent.id,
    )

    with pytest.raises(errors.RoleInUse):
        await auth.delete_role(session, actor=ROOT, role_id=parent.id or 0)


async def test_delete_role_removes_an_unused_role_and_its_grants(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    role = await parent_role(session, tree)
    before = await row_counts(session, *ROLE_TABLES)

    await auth.delete_role(session, actor=ROOT, role_id=role.id or 0)

    assert await row_counts(session, *ROLE_TABLES) == {
        "roles": before["roles"] - 1,
        "role_permissions": before["role_permissions"] - 2,
        "role_areas": before["role_areas"] - 1,
    }
    assert await auth.roles_by_ids(session, [role.id or 0]) == {}


async def test_delete_of_an_unknown_role_is_not_found(session: AsyncSession) -> None:
    with pytest.raises(NotFound) as refused:
        await auth.delete_role(session, actor=ROOT, role_id=10**12)

    assert refused.value.field == "id"


async def test_a_user_holding_a_role_loses_its_permissions_when_the_role_is_narrowed(session: AsyncSession) -> None:
    staff = await make_staff(session, permissions={"readings:read", "statistics:read"})
    assert staff.user.id is not None
    (role_id,) = (await auth.user_role_ids(session, [staff.user.id]))[staff.user.id]
    pair = await auth.login_staff(session, username=staff.username, password=staff.password, now=NOW, policy=POLICY)

    await auth.update_role(session, actor=ROOT, role_id=role_id, changes=RoleChanges(permissions=frozenset({"statistics:read"})))

    principal = await auth.authenticate(session, token=pair.access_token, now=NOW, policy=POLICY)
    assert principal.permissions == frozenset({"statistics:read"})


async def test_a_department_admin_cannot_create_a_role_ranked_above_their_own(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    department_admin = await make_staff(
        session, permissions={"roles:manage", "readings:read"}, areas=[tree.east], kind=RoleKind.department_admin
    )

    with pytest.raises(errors.RoleHierarchy) as refused:
        await auth.create_role(
            session, actor=department_admin.principal, name="冒名系统管理员", kind=RoleKind.system_admin,
            permissions={"readings:read"}, area_ids=[tree.east.id] if tree.east.id else [],
        )

    assert refused.value.field == "kind"
