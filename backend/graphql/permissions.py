"""Permissions are declared where a field is declared:
``permission_classes=[Requires("roles:manage")]`` (STYLE.md, "GraphQL")."""

from __future__ import annotations

import functools
from typing import Any

from graphql import OperationType
from strawberry.permission import BasePermission
from strawberry.types import Info

from backend.errors import Forbidden, NotAuthenticated


class _Requires(BasePermission):
    permission: str = ""

    async def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        context = info.context
        principal = context.principal
        if principal is None:
            raise NotAuthenticated()
        if principal.has(self.permission):
            return True
        if info.operation.operation is OperationType.MUTATION:
            # A refused attempt at a change is audited (after nothing was written).
            from backend.graphql.mutations import audit_refusal

            await audit_refusal(context, info.field_name, self.permission, kwargs)
        raise Forbidden()


@functools.cache
def Requires(permission: str) -> type[BasePermission]:  # noqa: N802  (reads like a class where used)
    """A permission class that admits callers holding ``permission``."""
    return type(f"Requires[{permission}]", (_Requires,), {"permission": permission})


@functools.cache
def RequiresAny(*permissions: str) -> type[BasePermission]:  # noqa: N802
    """Admits callers holding at least one of ``permissions`` (e.g. staff or the resident)."""

    class _Any(_Requires):
        async def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
            principal = info.context.principal
            if principal is None:
                raise NotAuthenticated()
            if any(principal.has(p) for p in permissions):
                return True
            if info.operation.operation is OperationType.MUTATION:
                # As Requires: a refused attempt at a change is audited (nothing else written).
                from backend.graphql.mutations import audit_refusal

                await audit_refusal(info.context, info.field_name, permissions[0], kwargs)
            raise Forbidden()

    return type(f"RequiresAny[{','.join(permissions)}]", (_Any,), {"permission": permissions[0]})


class Public(BasePermission):
    """Declares that anyone may call the field (login, token exchange)."""

    async def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        return True


class Authenticated(BasePermission):
    """Any logged-in caller (staff, resident or API client)."""

    async def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        if info.context.principal is None:
            raise NotAuthenticated()
        return True


def declared_permission(permission_classes: list[type[BasePermission]]) -> str | None:
    """The ``resource:action`` a field requires, for the permission-walk test."""
    for cls in permission_classes:
        if issubclass(cls, _Requires):
            return cls.permission
        if issubclass(cls, Authenticated):
            return "authenticated"
        if issubclass(cls, Public):
            return "public"
    return None
