"""GraphQL for payments: the counter mutations (``mutations``: 收费, 冲正, 销户, 日结) and
the payment queries and cashier's days (``queries``)."""

from __future__ import annotations

from backend.payments.schema import mutations, queries

Query = queries.Query
Mutation = mutations.Mutation
NODES = queries.NODES

__all__ = ["NODES", "Mutation", "Query"]
