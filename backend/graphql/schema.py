"""The one schema: every installed domain's ``Query``, ``Mutation`` and ``Subscription``
merged, with their extra types, ``node`` fetchers and cross-domain fields
(``backend.domain`` describes a schema module's protocol).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

import strawberry
from strawberry.tools import merge_types

from backend.domain import Domain, load
from backend.domains import installed
from backend.graphql.extend import TypeExtension, extended_types
from backend.graphql.fastpath import FastExecutionContext
from backend.graphql.permissions import Public
from backend.graphql.relay import Node, NodeFetcher, fetch_node
from backend.graphql.scalars import SCALAR_OVERRIDES


@strawberry.type
class NodeQuery:
    # Open to every caller: each type's fetcher applies that type's permission and scope.
    @strawberry.field(permission_classes=[Public], description="Any object by its global id, within the caller's scope.")
    async def node(self, info: strawberry.Info, id: strawberry.ID) -> Node:
        return await fetch_node(info.context, id, node_fetchers(info.schema))  # type: ignore[no-any-return]


def build_schema(domains: tuple[Domain, ...] | None = None) -> strawberry.Schema:
    """The root schema of ``domains`` (default: the installed ones), built once per set."""
    return _build(domains if domains is not None else installed())


@cache
def _build(domains: tuple[Domain, ...]) -> strawberry.Schema:
    modules = [load(domain.schema) for domain in domains if domain.schema is not None]
    queries = tuple(m.Query for m in modules if hasattr(m, "Query"))
    mutations = tuple(m.Mutation for m in modules if hasattr(m, "Mutation"))
    subscriptions = tuple(m.Subscription for m in modules if hasattr(m, "Subscription"))
    extra_types = [t for m in modules for t in getattr(m, "TYPES", ())]
    extensions: list[TypeExtension] = [e for m in modules for e in getattr(m, "EXTENSIONS", ())]
    fetchers: dict[str, NodeFetcher] = {}
    for module in modules:
        for type_name, fetcher in getattr(module, "NODES", {}).items():
            if type_name in fetchers:
                raise ValueError(f"two domains fetch the node type {type_name!r}")
            fetchers[type_name] = fetcher
    query = merge_types("Query", (NodeQuery, *queries))
    mutation = merge_types("Mutation", mutations) if mutations else None
    subscription = merge_types("Subscription", subscriptions) if subscriptions else None

    def schema() -> strawberry.Schema:
        return strawberry.Schema(
            query=query, mutation=mutation, subscription=subscription,
            scalar_overrides=SCALAR_OVERRIDES,  # type: ignore[arg-type]
            types=extra_types, execution_context_class=FastExecutionContext,
        )

    if any(isinstance(extension.target, str) for extension in extensions):
        # Targets are named by their GraphQL names: a first build without the extensions
        # finds each name's class (about 0.1 s, once per domain set).
        plain = schema()
        extensions = [extension.resolved(lambda name: _origin(plain, name)) for extension in extensions]
    with extended_types(extensions):
        built = schema()
    _NODE_FETCHERS[id(built)] = fetchers
    return built


# Each built schema's node(id:) fetchers, so a schema answers only for its own domains'
# types (a test domain's types are not nodes of the real schema). Schemas are cached
# for the life of the process, so their ids stay theirs.
_NODE_FETCHERS: dict[int, Mapping[str, NodeFetcher]] = {}


def node_fetchers(schema: Any) -> Mapping[str, NodeFetcher]:
    """The fetchers of the schema executing a request (strawberry's ``info.schema``)."""
    return _NODE_FETCHERS.get(id(schema), {})


def _origin(schema: strawberry.Schema, type_name: str) -> type:
    found = schema.get_type_by_name(type_name)
    origin = getattr(found, "origin", None)
    if origin is None:
        raise ValueError(f"an extension names the type {type_name!r}, which no installed domain defines")
    return origin  # type: ignore[no-any-return]


def export_sdl(domains: tuple[Domain, ...] | None = None) -> str:
    """schema.graphql's text: the SDL of ``domains`` (default: the installed ones)."""
    return build_schema(domains).as_str() + "\n"
