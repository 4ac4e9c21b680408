"""GraphQL for notifications: the inbox, devices, preferences, delivery records and the
``messageCreated`` subscription (``messages``). Notices (公告) add ``notices`` here: a
module with ``Query`` / ``Mutation`` / ``Subscription`` joins the tuples below."""

from __future__ import annotations

from strawberry.tools import merge_types

from backend.notifications.schema import messages

_MODULES = (messages,)

Query = merge_types("NotificationsQuery", tuple(module.Query for module in _MODULES if hasattr(module, "Query")))
Mutation = merge_types("NotificationsMutation",
                       tuple(module.Mutation for module in _MODULES if hasattr(module, "Mutation")))
Subscription = merge_types("NotificationsSubscription",
                           tuple(module.Subscription for module in _MODULES if hasattr(module, "Subscription")))

__all__ = ["Mutation", "Query", "Subscription"]
