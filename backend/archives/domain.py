"""The archives' declaration (档案管理): areas, households, meters, devices, assignments."""

from __future__ import annotations

from backend.auth.menus import Menu
from backend.auth.menus import permission as _p
from backend.domain import Check, Domain

DOMAIN = Domain(
    name="archives",
    title="档案管理",
    models=("backend.archives.models",),
    schema="backend.archives.schema",
    routes="backend.archives.http:routes",
    menus=(
        Menu("archives", "档案管理", "Archives", (
            _p("archives:read", "查看档案", "View archives"),
            _p("archives:manage", "维护档案", "Maintain archives"),
        )),
    ),
    demo_grants={"cashier": frozenset({"archives:read"}), "repair": frozenset({"archives:read"})},
    checks=(Check("archives.cross_area", "backend.archives.checks:no_cross_area_assignments",
                  "Open assignments stay within their meter's area"),),
    demo="backend.archives.demo:load_archives",
)
