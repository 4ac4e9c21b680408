"""GraphQL for payments: the counter mutations (``mutations``: 收费, 冲正, 销户, 日结), the
payment queries and cashier's days (``queries``), receipts (``backend.payments.receipts
.schema``: layouts, printing, form stock), online payment orders (``online``), static QR
links (``static_qr``), an account's pending card and meter writes (``pending_writes``),
and refunds through the original channel with the reconciliation report (``refunds``).
The root schema merges these types with every other domain's."""

from __future__ import annotations

from strawberry.tools import merge_types

from backend.payments.receipts import schema as receipts
from backend.payments.schema import mutations, online, pending_writes, queries, refunds, static_qr

Query = merge_types("PaymentsQuery", (queries.Query, receipts.Query, online.Query, static_qr.Query, refunds.Query))
Mutation = merge_types("PaymentsMutation", (mutations.Mutation, receipts.Mutation, online.Mutation,
                                              refunds.Mutation))
Subscription = online.Subscription
NODES = {**queries.NODES, **online.NODES, **refunds.NODES}
EXTENSIONS = pending_writes.EXTENSIONS

__all__ = ["EXTENSIONS", "NODES", "Mutation", "Query", "Subscription"]
