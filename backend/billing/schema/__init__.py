"""GraphQL for billing: tariffs (``tariffs``), accounts and their statements
(``queries``, ``types``), the account mutations (``mutations``) and reading routes
(``routes``), merged here."""

from __future__ import annotations

from strawberry.tools import merge_types

from backend.billing.schema import mutations, queries, routes, tariffs

Query = merge_types("BillingQuery", (tariffs.Query, queries.Query, routes.Query))
Mutation = merge_types("BillingMutation", (tariffs.Mutation, mutations.Mutation, routes.Mutation))
NODES = queries.NODES
EXTENSIONS = queries.EXTENSIONS

__all__ = ["EXTENSIONS", "NODES", "Mutation", "Query"]
