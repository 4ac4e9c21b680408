"""GraphQL for billing: tariffs (``tariffs``), accounts and their statements
(``queries``, ``types``), the account mutations (``mutations``), reading routes
(``routes``, 抄表本), reading review (``review``, 抄表审核) and late fees
(``late_fees``, 滞纳金), merged here."""

from __future__ import annotations

from strawberry.tools import merge_types

from backend.billing.schema import late_fees, mutations, queries, review, routes, tariffs

Query = merge_types("BillingQuery", (tariffs.Query, queries.Query, routes.Query, review.Query, late_fees.Query))
Mutation = merge_types("BillingMutation", (tariffs.Mutation, mutations.Mutation, routes.Mutation, review.Mutation,
                                            late_fees.Mutation))
NODES = {**queries.NODES, **review.NODES}
EXTENSIONS = queries.EXTENSIONS

__all__ = ["EXTENSIONS", "NODES", "Mutation", "Query"]
