"""Who is calling: the principal every service call and resolver checks against.

Framework-free: the GraphQL layer builds it from a token, services receive it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from backend.auth.models import PrincipalKind
from backend.errors import Forbidden, NotAuthenticated


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    ``scope_paths`` are the materialized paths of the areas whose subtrees the caller may
    see (行政权限); a resident's reach is ``household_ids`` instead.
    """

    kind: PrincipalKind
    id: int
    name: str
    permissions: frozenset[str] = frozenset()
    scope_paths: tuple[str, ...] = ()
    household_ids: tuple[int, ...] = ()
    session_id: uuid.UUID | None = None
    rate_per_minute: int | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def has(self, permission: str) -> bool:
        return permission in self.permissions

    def require(self, permission: str) -> None:
        if permission not in self.permissions:
            raise Forbidden()

    @property
    def is_staff(self) -> bool:
        return self.kind is PrincipalKind.staff

    @property
    def is_resident(self) -> bool:
        return self.kind is PrincipalKind.resident

    def scope_patterns(self) -> list[str]:
        """LIKE patterns for ``areas.path``: a scope filter is ``path LIKE ANY(:patterns)``."""
        return [path + "%" for path in self.scope_paths]

    def in_scope(self, area_path: str) -> bool:
        return area_path.startswith(self.scope_paths) if self.scope_paths else False


def require_principal(principal: Principal | None) -> Principal:
    if principal is None:
        raise NotAuthenticated()
    return principal
