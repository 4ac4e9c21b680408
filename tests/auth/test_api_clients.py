"""API clients: secrets shown once, client-credential tokens, scopes no wider than the creator's."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.models import Area
from backend.auth import errors
from backend.auth import service as auth
from backend.auth.catalog import client_scopes
from backend.auth.models import PrincipalKind, RoleKind
from backend.auth.principal import Principal
from backend.auth.service import IssuedClient
from backend.errors import NotFound, ValidationFailed
from tests.auth.support import NOW, POLICY, row_counts
from tests.factories import ROOT, AreaTree, Staff, make_area_tree, make_staff

CLIENT_TABLES = ("api_clients", "api_client_areas")


async def east_client_manager(session: AsyncSession, tree: AreaTree) -> Staff:
    return await make_staff(
        session, permissions={"clients:manage", "readings:read", "ledgers:read", "readings:write"},
        areas=[tree.east], kind=RoleKind.unit_admin,
    )


async def company_admin(session: AsyncSession, tree: AreaTree) -> Principal:
    """A real administrator over the whole company (a client records its creator, so the
    fictional ROOT of the factories cannot create one)."""
    return (await make_staff(session, areas=[tree.company], kind=RoleKind.system_admin)).principal


async def east_meter_reader(session: AsyncSession, tree: AreaTree) -> IssuedClient:
    """A client reading meters and bills in the east district."""
    return await auth.create_api_client(
        session, actor=await company_admin(session, tree), name="物业抄表平台", scopes={"readings:read", "ledgers:read"},
        area_ids=[tree.east.id or 0], rate_per_minute=120,
    )


async def token_for(session: AsyncSession, issued: IssuedClient, *, secret: str | None = None) -> str:
    pair = await auth.issue_client_token(
        session, client_id=issued.client.client_id, client_secret=secret or issued.secret, now=NOW, policy=POLICY
    )
    return pair.access_token


async def test_the_secret_is_returned_once_and_only_its_sha256_is_stored(session: AsyncSession) -> None:
    tree = await make_area_tree(session)

    issued = await east_meter_reader(session, tree)

    assert issued.client.client_id.startswith("swc_")
    stored = (await session.execute(
        text("SELECT secret_hash FROM api_clients WHERE id = :id"), {"id": issued.client.id}
    )).scalar_one()
    assert stored == hashlib.sha256(issued.secret.encode()).hexdigest()
    assert issued.secret not in stored
    assert len(issued.secret) >= 40


async def test_the_right_secret_gives_a_principal_with_the_clients_scopes_and_areas(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    issued = await east_meter_reader(session, tree)

    pair = await auth.issue_client_token(
        session, client_id=f" {issued.client.client_id} ", client_secret=issued.secret, now=NOW, policy=POLICY
    )

    assert pair.refresh_token is None
    assert pair.refresh_expires_at is None
    assert pair.access_expires_at == NOW + timedelta(seconds=POLICY.access_ttl_s)
    principal = await auth.authenticate(session, token=pair.access_token, now=NOW, policy=POLICY)
    assert principal.kind is PrincipalKind.client
    assert principal.id == issued.client.id
    assert principal.permissions == frozenset({"readings:read", "ledgers:read"})
    assert principal.scope_paths == (tree.east.path,)
    assert principal.rate_per_minute == 120
    assert issued.client.last_used_at == NOW


async def test_a_wrong_secret_or_unknown_client_is_refused_alike(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    issued = await east_meter_reader(session, tree)

    with pytest.raises(errors.InvalidCredentials) as wrong_secret:
        await auth.issue_client_token(
            session, client_id=issued.client.client_id, client_secret="guess", now=NOW, policy=POLICY
        )
    with pytest.raises(errors.InvalidCredentials) as unknown_client:
        await auth.issue_client_token(
            session, client_id="swc_nobody", client_secret=issued.secret, now=NOW, policy=POLICY
        )

    assert wrong_secret.value.field == unknown_client.value.field == "clientSecret"
    assert wrong_secret.value.message == unknown_client.value.message


async def test_an_inactive_client_gets_no_token_and_loses_the_ones_it_had(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    issued = await east_meter_reader(session, tree)
    earlier = await token_for(session, issued)

    await auth.set_api_client_active(session, actor=ROOT, client_pk=issued.client.id or 0, is_active=False, now=NOW)

    with pytest.raises(errors.AccountInactive) as refused:
        await token_for(session, issued)
    assert refused.value.field == "clientId"
    with pytest.raises(errors.TokenRevoked):
        await auth.authenticate(session, token=earlier, now=NOW, policy=POLICY)


async def test_a_scope_outside_the_client_scopes_is_unknown_and_nothing_is_written(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    admin = await company_admin(session, tree)
    before = await row_counts(session, *CLIENT_TABLES)
    assert "readings:write" not in client_scopes()

    for scope in ("readings:write", "no:such"):
        with pytest.raises(errors.UnknownPermission):
            await auth.create_api_client(
                session, actor=admin, name="写入平台", scopes={"readings:read", scope}, area_ids=[tree.east.id or 0]
            )

    assert await row_counts(session, *CLIENT_TABLES) == before


async def test_an_unknown_scope_is_reported_on_the_scopes_field(session: AsyncSession) -> None:
    with pytest.raises(errors.UnknownPermission) as refused:
        await auth.create_api_client(session, actor=ROOT, name="写入平台", scopes={"readings:write"}, area_ids=[])

    assert refused.value.field == "scopes"


async def test_scopes_or_areas_the_actor_lacks_are_refused_and_nothing_is_written(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    manager = await east_client_manager(session, tree)
    before = await row_counts(session, *CLIENT_TABLES)

    with pytest.raises(errors.GrantExceedsOwn) as beyond_permissions:
        await auth.create_api_client(
            session, actor=manager.principal, name="统计平台", scopes={"statistics:read"}, area_ids=[tree.east.id or 0]
        )
    with pytest.raises(errors.GrantExceedsOwn) as beyond_scope:
        await auth.create_api_client(
            session, actor=manager.principal, name="城西平台", scopes={"readings:read"}, area_ids=[tree.west.id or 0]
        )

    assert beyond_permissions.value.field == "scopes"
    assert beyond_scope.value.field == "areaIds"
    assert await row_counts(session, *CLIENT_TABLES) == before


async def test_a_manager_creates_a_client_within_their_grants(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    manager = await east_client_manager(session, tree)

    issued = await auth.create_api_client(
        session, actor=manager.principal, name=" 小区平台 ", scopes={"readings:read"},
        area_ids=[tree.east_community.id or 0],
    )

    assert (issued.client.name, issued.client.scopes, issued.client.created_by) == (
        "小区平台", ["readings:read"], manager.user.id,
    )


async def test_a_blank_name_and_a_zero_rate_are_reported_together(session: AsyncSession) -> None:
    with pytest.raises(ValidationFailed) as refused:
        await auth.create_api_client(
            session, actor=ROOT, name="  ", scopes={"readings:read"}, area_ids=[], rate_per_minute=0
        )

    assert [e.field for e in refused.value.errors] == ["name", "ratePerMinute"]


async def test_rotating_the_secret_revokes_old_tokens_and_the_old_secret(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    issued = await east_meter_reader(session, tree)
    old_token = await token_for(session, issued)

    rotated = await auth.rotate_api_client_secret(session, actor=ROOT, client_pk=issued.client.id or 0, now=NOW)

    assert rotated.secret != issued.secret
    with pytest.raises(errors.TokenRevoked):
        await auth.authenticate(session, token=old_token, now=NOW, policy=POLICY)
    with pytest.raises(errors.InvalidCredentials):
        await token_for(session, issued)
    new_token = await token_for(session, rotated)
    assert (await auth.authenticate(session, token=new_token, now=NOW, policy=POLICY)).id == issued.client.id


async def test_an_actor_cannot_rotate_or_disable_a_client_wider_than_they_are(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    manager = await east_client_manager(session, tree)
    # In the manager's district, but with a scope the manager does not hold.
    wider = await auth.create_api_client(
        session, actor=await company_admin(session, tree), name="城东档案平台", scopes={"archives:read"},
        area_ids=[tree.east.id or 0],
    )
    old_hash = wider.client.secret_hash

    with pytest.raises(errors.GrantExceedsOwn) as refused_rotate:
        await auth.rotate_api_client_secret(session, actor=manager.principal, client_pk=wider.client.id or 0, now=NOW)
    with pytest.raises(errors.GrantExceedsOwn):
        await auth.set_api_client_active(
            session, actor=manager.principal, client_pk=wider.client.id or 0, is_active=False, now=NOW
        )

    assert refused_rotate.value.field == "id"
    assert (wider.client.secret_hash, wider.client.is_active) == (old_hash, True)
    assert (await token_for(session, wider)) != ""


async def test_a_district_manager_lists_and_edits_only_clients_whose_areas_all_lie_in_its_district(
    session: AsyncSession,
) -> None:
    tree = await make_area_tree(session)
    manager = await east_client_manager(session, tree)
    admin = await company_admin(session, tree)

    async def client_in(*areas: Area) -> IssuedClient:
        return await auth.create_api_client(session, actor=admin, name="平台", scopes={"readings:read"},
                                            area_ids=[area.id or 0 for area in areas])

    east = await client_in(tree.east_community)
    west, both, company_wide, nowhere = (
        await client_in(tree.west), await client_in(tree.east, tree.west), await client_in(tree.company), await client_in()
    )
    others = {west.client.id, both.client.id, company_wide.client.id, nowhere.client.id}

    async def listed(actor: Principal) -> set[int | None]:
        statement = auth.api_clients_statement(scope_patterns=actor.scope_patterns())
        return {client.id for client in (await session.execute(statement)).scalars().all()}

    seen_by_manager = await listed(manager.principal)
    for other in (west, both, company_wide, nowhere):
        with pytest.raises(NotFound):
            await auth.rotate_api_client_secret(session, actor=manager.principal, client_pk=other.client.id or 0, now=NOW)
        with pytest.raises(NotFound):
            await auth.set_api_client_active(session, actor=manager.principal, client_pk=other.client.id or 0,
                                             is_active=False, now=NOW)
    rotated = await auth.rotate_api_client_secret(session, actor=manager.principal, client_pk=east.client.id or 0, now=NOW)

    assert east.client.id in seen_by_manager and not seen_by_manager & others
    assert {east.client.id} | others <= await listed(admin)
    assert rotated.client.id == east.client.id
    assert [other.client.is_active for other in (west, both, company_wide, nowhere)] == [True] * 4
