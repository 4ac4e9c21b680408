"""GraphQL for readings and analytics (数据查询 / 用水统计 / 台账 / 对比 / 异常水表 / 数据监测).

Each screen family lives in a module of its own and exposes ``Query`` (and, if it has
any, ``Mutation`` and ``Subscription``); they are merged here in the order of :data:`SCREEN_MODULES`.
"""

from __future__ import annotations

import importlib

from strawberry.tools import merge_types

SCREEN_MODULES: tuple[str, ...] = (
    "browse",
    "stations",
    "schemes",
    "analytics",
    "entry",
    "alarms",
    "live",
)

_modules = [importlib.import_module(f"backend.readings.schema.{name}") for name in SCREEN_MODULES]
_queries = tuple(m.Query for m in _modules if hasattr(m, "Query"))
_mutations = tuple(m.Mutation for m in _modules if hasattr(m, "Mutation"))
_subscriptions = tuple(m.Subscription for m in _modules if hasattr(m, "Subscription"))

if _queries:
    Query = merge_types("ReadingsQuery", _queries)
if _mutations:
    Mutation = merge_types("ReadingsMutation", _mutations)
if _subscriptions:
    Subscription = merge_types("ReadingsSubscription", _subscriptions)

TYPES = tuple(t for m in _modules for t in getattr(m, "TYPES", ()))
NODES = {name: fetcher for m in _modules for name, fetcher in getattr(m, "NODES", {}).items()}
