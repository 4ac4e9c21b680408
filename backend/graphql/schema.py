"""The one schema: every domain's ``Query`` and ``Mutation`` merged.

A domain joins the API by adding its ``schema`` module to :data:`DOMAIN_SCHEMAS`.
"""

from __future__ import annotations

import importlib
from functools import cache

import strawberry
from strawberry.tools import merge_types

from backend.graphql.fastpath import FastExecutionContext
from backend.graphql.permissions import Public
from backend.graphql.relay import Node, fetch_node
from backend.graphql.scalars import SCALAR_OVERRIDES

DOMAIN_SCHEMAS = (
    "backend.auth.schema",
    "backend.archives.schema",
    "backend.audit.schema",
    "backend.readings.schema",
)


@strawberry.type
class NodeQuery:
    # Open to every caller: each type's fetcher applies that type's permission and scope.
    @strawberry.field(permission_classes=[Public], description="Any object by its global id, within the caller's scope.")
    async def node(self, info: strawberry.Info, id: strawberry.ID) -> Node:
        return await fetch_node(info.context, id)  # type: ignore[no-any-return]


@cache
def build_schema() -> strawberry.Schema:
    modules = [importlib.import_module(name) for name in DOMAIN_SCHEMAS]
    queries = tuple(m.Query for m in modules if hasattr(m, "Query"))
    mutations = tuple(m.Mutation for m in modules if hasattr(m, "Mutation"))
    extra_types = [t for m in modules for t in getattr(m, "EXTRA_TYPES", ())]
    return strawberry.Schema(
        query=merge_types("Query", (NodeQuery, *queries)),
        mutation=merge_types("Mutation", mutations) if mutations else None,
        scalar_overrides=SCALAR_OVERRIDES,  # type: ignore[arg-type]
        types=extra_types,
        execution_context_class=FastExecutionContext,
    )


def export_sdl() -> str:
    return build_schema().as_str() + "\n"
