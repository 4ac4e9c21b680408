"""GraphQL for billing: tariffs (``tariffs``), accounts and their statements
(``queries``, ``types``) and the account mutations (``mutations``), merged here."""

from __future__ import annotations

from strawberry.tools import merge_types

from backend.billing.schema import mutations, queries, tariffs

Query = merge_types("BillingQuery", (tariffs.Query, queries.Query))
Mutation = merge_types("BillingMutation", (tariffs.Mutation, mutations.Mutation))
NODES = queries.NODES
EXTENSIONS = queries.EXTENSIONS

__all__ = ["EXTENSIONS", "NODES", "Mutation", "Query"]
