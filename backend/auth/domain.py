"""Auth's declaration: staff users, roles, data scope, residents and API clients."""

from __future__ import annotations

from backend.auth.menus import Menu
from backend.auth.menus import permission as _p
from backend.domain import Check, Domain, Job

DOMAIN = Domain(
    name="auth",
    title="用户与权限",
    models=("backend.auth.models",),
    schema="backend.auth.schema",
    routes="backend.auth.http:routes",
    menus=(
        Menu("system", "系统管理", "System", (
            _p("users:read", "查看用户", "View users"),
            _p("users:manage", "维护用户", "Maintain users"),
            _p("roles:read", "查看角色", "View roles"),
            _p("roles:manage", "维护角色与权限", "Maintain roles and permissions"),
            _p("areas:read", "查看区域", "View areas"),
            _p("clients:manage", "维护第三方接口", "Maintain API clients"),
        )),
    ),
    demo_grants={"cashier": frozenset({"areas:read"}), "repair": frozenset({"areas:read"})},
    jobs=(
        Job("purge_expired_auth", "backend.auth.jobs:purge_expired_auth", cron="7 * * * *",
            description="Delete expired login sessions and one-time codes"),
    ),
    events=("backend.auth.events",),
    checks=(Check("auth.administrator", "backend.auth.checks:has_administrator",
                  "An active staff user can maintain roles"),),
)
