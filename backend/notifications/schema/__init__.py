"""GraphQL for notifications: the inbox, devices, preferences, delivery records and the
``messageCreated`` subscription (``messages``); notices (公告, ``notices``). A module with
``Query`` / ``Mutation`` / ``Subscription`` / ``NODES`` joins the tuples below."""

from __future__ import annotations

from strawberry.tools import merge_types

from backend.notifications.schema import messages, notices

_MODULES = (messages, notices)

Query = merge_types("NotificationsQuery", tuple(module.Query for module in _MODULES if hasattr(module, "Query")))
Mutation = merge_types("NotificationsMutation",
                       tuple(module.Mutation for module in _MODULES if hasattr(module, "Mutation")))
Subscription = merge_types("NotificationsSubscription",
                           tuple(module.Subscription for module in _MODULES if hasattr(module, "Subscription")))

NODES = {name: fetch for module in _MODULES for name, fetch in getattr(module, "NODES", {}).items()}

__all__ = ["NODES", "Mutation", "Query", "Subscription"]
