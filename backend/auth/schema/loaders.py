"""DataLoaders for roles, their permissions and users' roles, created per request in the
context (STYLE: every relationship resolves through one)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth import service
from backend.auth.models import Role
from backend.auth.principal import Principal
from backend.graphql.loaders import SessionLoader


class RoleByIdLoader(SessionLoader[int, Role | None]):
    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, Role]:
        return await service.roles_by_ids(session, keys)


class VisibleRoleByIdLoader(SessionLoader[int, Role | None]):
    """Roles whose unit lies in the caller's scope (others are missing)."""

    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, Role]:
        principal: Principal | None = self.context.principal
        patterns = principal.scope_patterns() if principal is not None else []
        statement = service.roles_statement(scope_patterns=patterns).where(Role.id.in_(keys))  # type: ignore[union-attr]
        return {role.id: role for role in (await session.execute(statement)).scalars() if role.id is not None}


class RoleIdsByUserIdLoader(SessionLoader[int, list[int]]):
    missing: list[int] = []

    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, list[int]]:
        return await service.user_role_ids(session, keys)


class PermissionsByRoleIdLoader(SessionLoader[int, list[str]]):
    missing: list[str] = []

    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, list[str]]:
        return await service.role_permissions(session, keys)
