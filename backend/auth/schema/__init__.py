"""GraphQL for auth: logins and tokens, the viewer and their menus, staff users, roles
(菜单权限 + 行政权限) and API clients.

The root schema reads this package's ``Query``, ``Mutation`` and ``NODES`` (the domain
declaration names ``backend.auth.schema``); nothing imports a module below it. Inside,
as STYLE's layout asks: :mod:`.types` (the strawberry types and enums), :mod:`.loaders`
(per-request DataLoaders), :mod:`.queries` (``Query`` and the node fetchers) and
:mod:`.mutations` (one module per resource)."""

from __future__ import annotations

from backend.auth.schema.mutations import Mutation
from backend.auth.schema.queries import NODES, Query

__all__ = ["NODES", "Mutation", "Query"]
