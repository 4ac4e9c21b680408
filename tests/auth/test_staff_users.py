"""Staff users: validation, assigning only roles one could have granted, deactivation, deletion."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth import errors
from backend.auth import service as auth
from backend.auth.models import RoleKind
from backend.auth.service import StaffUserChanges
from backend.errors import ErrorCode, NotFound, ValidationFailed
from tests.auth.support import NOW, POLICY, log_in, row_counts
from tests.factories import ROOT, AreaTree, Staff, make_area_tree, make_staff

USER_TABLES = ("staff_users", "staff_user_roles")
GOOD_PASSWORD = "Str0ng-enough"


async def east_user_manager(session: AsyncSession, tree: AreaTree) -> Staff:
    return await make_staff(
        session, permissions={"users:manage", "readings:read"}, areas=[tree.east], kind=RoleKind.unit_admin
    )


async def role_id(session: AsyncSession, *, permissions: set[str], tree: AreaTree, area: str = "east") -> int:
    role = await auth.create_role(
        session, actor=ROOT, name=f"角色-{area}-{'-'.join(sorted(permissions))}", kind=RoleKind.operator,
        permissions=permissions, area_ids=[getattr(tree, area).id], unit_id=tree.east.id,
    )
    assert role.id is not None
    return role.id


# --------------------------------------------------------------------------- create


async def test_a_manager_creates_a_user_with_a_role_they_could_have_granted(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    manager = await east_user_manager(session, tree)
    reader = await role_id(session, permissions={"readings:read"}, tree=tree, area="east_community")

    user = await auth.create_staff_user(
        session, actor=manager.principal, username=" li.na_01 ", full_name=" 李娜 ", password=GOOD_PASSWORD,
        role_ids=[reader], email="lina@example.com", phone="0571-8888888", now=NOW,
    )

    assert (user.username, user.full_name, user.email, user.phone) == ("li.na_01", "李娜", "lina@example.com", "0571-8888888")
    assert user.password_hash.startswith("$argon2")
    assert GOOD_PASSWORD not in user.password_hash
    assert user.id is not None
    assert await auth.user_role_ids(session, [user.id]) == {user.id: [reader]}
    pair = await auth.login_staff(session, username="li.na_01", password=GOOD_PASSWORD, now=NOW, policy=POLICY)
    assert pair.principal.scope_paths == (tree.east_community.path,)


async def test_bad_username_email_and_phone_are_reported_together_on_their_fields(session: AsyncSession) -> None:
    before = await row_counts(session, *USER_TABLES)

    with pytest.raises(ValidationFailed) as refused:
        await auth.create_staff_user(
            session, actor=ROOT, username="a b", full_name="张三", password=GOOD_PASSWORD,
            email="not-an-email", phone="call me", now=NOW,
        )

    assert [(e.code, e.field) for e in refused.value.errors] == [
        (ErrorCode.INVALID, "username"), (ErrorCode.INVALID, "email"), (ErrorCode.INVALID, "phone"),
    ]
    assert await row_counts(session, *USER_TABLES) == before


@pytest.mark.parametrize("username", ["ab", "x" * 65, "张三", "with space", "semi;colon"])
async def test_a_malformed_username_is_refused(session: AsyncSession, username: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        await auth.create_staff_user(
            session, actor=ROOT, username=username, full_name="张三", password=GOOD_PASSWORD, now=NOW
        )

    assert refused.value.field == "username"


@pytest.mark.parametrize("full_name", ["", "   ", "名" * 65])
async def test_a_blank_or_overlong_full_name_is_refused(session: AsyncSession, full_name: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        await auth.create_staff_user(
            session, actor=ROOT, username="zhang.san", full_name=full_name, password=GOOD_PASSWORD, now=NOW
        )

    assert refused.value.field == "fullName"


@pytest.mark.parametrize("password", ["Sh0rt", "onlyletters", "1234567890", "x1" * 65])
async def test_a_weak_password_is_refused(session: AsyncSession, password: str) -> None:
    before = await row_counts(session, *USER_TABLES)

    with pytest.raises(errors.PasswordTooWeak) as refused:
        await auth.create_staff_user(
            session, actor=ROOT, username="zhang.san", full_name="张三", password=password, now=NOW
        )

    assert (refused.value.code, refused.value.field) == (ErrorCode.PASSWORD_TOO_WEAK, "password")
    assert await row_counts(session, *USER_TABLES) == before


async def test_a_taken_username_is_refused_as_a_duplicate(session: AsyncSession) -> None:
    staff = await make_staff(session)
    before = await row_counts(session, *USER_TABLES)

    with pytest.raises(errors.Duplicate) as refused:
        await auth.create_staff_user(
            session, actor=ROOT, username=f" {staff.username}", full_name="重名", password=GOOD_PASSWORD, now=NOW
        )

    assert refused.value.field == "username"
    assert await row_counts(session, *USER_TABLES) == before


async def test_assigning_a_role_above_the_actor_is_refused(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    manager = await east_user_manager(session, tree)
    more_permissions = await role_id(session, permissions={"readings:read", "readings:write"}, tree=tree)
    other_district = await role_id(session, permissions={"readings:read"}, tree=tree, area="west")
    before = await row_counts(session, *USER_TABLES)

    for role in (more_permissions, other_district):
        with pytest.raises(errors.GrantExceedsOwn) as refused:
            await auth.create_staff_user(
                session, actor=manager.principal, username="zhang.san", full_name="张三",
                password=GOOD_PASSWORD, role_ids=[role], now=NOW,
            )
        assert refused.value.field == "roleIds"

    assert await row_counts(session, *USER_TABLES) == before


async def test_assigning_an_unknown_role_is_not_found(session: AsyncSession) -> None:
    with pytest.raises(NotFound) as refused:
        await auth.create_staff_user(
            session, actor=ROOT, username="zhang.san", full_name="张三", password=GOOD_PASSWORD,
            role_ids=[10**12], now=NOW,
        )

    assert refused.value.field == "roleIds"


# --------------------------------------------------------------------------- update


async def test_update_staff_user_changes_only_what_it_names(session: AsyncSession) -> None:
    staff = await make_staff(session)
    assert staff.user.id is not None

    user = await auth.update_staff_user(
        session, actor=ROOT, user_id=staff.user.id, changes=StaffUserChanges(phone="13912345678"), now=NOW
    )

    assert (user.phone, user.is_active, user.updated_at) == ("13912345678", True, NOW)
    assert user.full_name == staff.user.full_name


async def test_an_actor_cannot_edit_a_user_holding_more_than_they_do(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    manager = await east_user_manager(session, tree)
    bigger = await make_staff(session, permissions={"readings:read", "readings:write"}, areas=[tree.east])
    assert bigger.user.id is not None

    with pytest.raises(errors.GrantExceedsOwn) as refused:
        await auth.update_staff_user(
            session, actor=manager.principal, user_id=bigger.user.id,
            changes=StaffUserChanges(is_active=False), now=NOW,
        )
    with pytest.raises(errors.GrantExceedsOwn):
        await auth.set_staff_password(
            session, actor=manager.principal, user_id=bigger.user.id, password=GOOD_PASSWORD, now=NOW
        )

    assert refused.value.field == "id"
    assert bigger.user.is_active is True


async def test_a_user_cannot_deactivate_themselves(session: AsyncSession) -> None:
    staff = await make_staff(session)
    assert staff.user.id is not None

    with pytest.raises(errors.CannotDeactivateSelf) as refused:
        await auth.update_staff_user(
            session, actor=staff.principal, user_id=staff.user.id, changes=StaffUserChanges(is_active=False), now=NOW
        )

    assert refused.value.field == "isActive"
    assert staff.user.is_active is True


async def test_a_user_cannot_delete_themselves(session: AsyncSession) -> None:
    staff = await make_staff(session)
    assert staff.user.id is not None

    with pytest.raises(errors.CannotDeactivateSelf) as refused:
        await auth.delete_staff_user(session, actor=staff.principal, user_id=staff.user.id)

    assert refused.value.field == "id"


async def test_set_staff_password_refuses_a_weak_password(session: AsyncSession) -> None:
    staff = await make_staff(session)
    assert staff.user.id is not None

    with pytest.raises(errors.PasswordTooWeak) as refused:
        await auth.set_staff_password(session, actor=ROOT, user_id=staff.user.id, password="weak", now=NOW)

    assert refused.value.field == "password"


# --------------------------------------------------------------------------- delete


async def test_a_user_without_history_is_deleted_with_their_role_links(session: AsyncSession) -> None:
    staff = await make_staff(session)
    assert staff.user.id is not None
    before = await row_counts(session, *USER_TABLES)

    await auth.delete_staff_user(session, actor=ROOT, user_id=staff.user.id)

    assert await row_counts(session, *USER_TABLES) == {
        "staff_users": before["staff_users"] - 1, "staff_user_roles": before["staff_user_roles"] - 1,
    }


async def test_a_user_who_has_logged_in_cannot_be_deleted(session: AsyncSession) -> None:
    staff = await make_staff(session)
    assert staff.user.id is not None
    await log_in(session, staff)
    before = await row_counts(session, *USER_TABLES)

    with pytest.raises(errors.HasHistory) as refused:
        await auth.delete_staff_user(session, actor=ROOT, user_id=staff.user.id)

    assert refused.value.field == "id"
    assert await row_counts(session, *USER_TABLES) == before


async def test_a_user_who_registered_an_api_client_cannot_be_deleted(session: AsyncSession) -> None:
    staff = await make_staff(session, areas=[(await make_area_tree(session)).company])
    assert staff.user.id is not None
    await auth.create_api_client(session, actor=staff.principal, name="大屏", scopes=["areas:read"], area_ids=[])

    with pytest.raises(errors.HasHistory):
        await auth.delete_staff_user(session, actor=ROOT, user_id=staff.user.id)


async def test_delete_of_an_unknown_user_is_not_found(session: AsyncSession) -> None:
    with pytest.raises(NotFound) as refused:
        await auth.delete_staff_user(session, actor=ROOT, user_id=10**12)

    assert refused.value.field == "id"
