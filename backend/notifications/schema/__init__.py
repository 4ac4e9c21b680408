"""The notifications domain's GraphQL: on this branch only the notices' types
(``backend.notifications.schema.notices``); the notifications core merges its own
Query and Mutation with these."""

from __future__ import annotations

from backend.notifications.schema.notices import NODES, Mutation, Query

__all__ = ["NODES", "Mutation", "Query"]
