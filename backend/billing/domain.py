"""Billing's declaration (计费). This slice holds the tariffs (水价, issue 15 item 1):
versioned tiered tariffs, ``shuiwu tariff load|quote``, ``saveTariff``, ``tariffs``,
``tariffQuote`` and the anonymous ``publicTariffs`` (公共查询服务).

It comes after readings (settlement will read usage through
``backend.readings.usage.usage_between``) and before payments, which it never imports.
Its menu 水价管理 (``tariffs``) gates the tariff screens with ``tariffs:read`` /
``tariffs:manage`` and is the operation log's module of ``saveTariff``; the brochure's
prepaid / postpaid / accounts / reports menus come with the accounts and bills.
"""

from __future__ import annotations

from backend.auth.menus import Menu, Operation
from backend.auth.menus import permission as _p
from backend.domain import Domain, PersonalData

DOMAIN = Domain(
    name="billing",
    title="计费",
    models=("backend.billing.models",),
    schema="backend.billing.schema",
    menus=(
        Menu("tariffs", "水价管理", "Tariffs", (
            _p("tariffs:read", "查看水价", "View tariffs"),
            _p("tariffs:manage", "维护水价", "Maintain tariffs"),
        )),
    ),
    demo_grants={"cashier": frozenset({"tariffs:read"})},
    operations=(Operation("saveTariff", "保存水价", "Save tariff", "tariffs"),),
    commands={"tariff": "backend.billing.cli:tariff_app"},
    personal_data=PersonalData(excluded={
        "tariffs.name": "the name of a published water price (居民生活用水), not a person's",
    }),
)
