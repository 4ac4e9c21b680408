"""GraphQL for billing: tariffs (``tariffs``), accounts and their statements
(``queries``, ``types``), the account mutations (``mutations``), reading routes
(``routes``, 抄表本), reading review (``review``, 抄表审核), bill queries (``bills``, 账单查询),
late fees (``late_fees``, 滞纳金) and billing runs (``bill_runs``, 出账), merged here."""

from __future__ import annotations

from strawberry.tools import merge_types

from backend.billing.schema import bill_runs, bills, late_fees, mutations, queries, review, routes, tariffs

Query = merge_types("BillingQuery", (tariffs.Query, queries.Query, routes.Query, review.Query, bills.Query,
                                     late_fees.Query, bill_runs.Query))
Mutation = merge_types("BillingMutation", (tariffs.Mutation, mutations.Mutation, routes.Mutation, review.Mutation,
                                           late_fees.Mutation, bill_runs.Mutation))
NODES = {**queries.NODES, **review.NODES, **bills.NODES, **bill_runs.NODES}
EXTENSIONS = (*queries.EXTENSIONS, *bills.EXTENSIONS)

__all__ = ["EXTENSIONS", "NODES", "Mutation", "Query"]
