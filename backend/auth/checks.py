"""Auth's lines in ``shuiwu check`` (backend.auth.domain)."""

from __future__ import annotations

from sqlalchemy import text

from backend.domain import CheckResult
from backend.runtime import Runtime

_ADMINISTRATORS = text(
    "SELECT count(DISTINCT u.id) FROM staff_users u JOIN staff_user_roles ur ON ur.user_id = u.id "
    "JOIN role_permissions rp ON rp.role_id = ur.role_id WHERE u.is_active AND rp.permission = 'roles:manage'"
)


async def has_administrator(runtime: Runtime) -> CheckResult:
    """At least one active staff user can maintain roles: else nobody can grant anything
    (``shuiwu admin create`` makes one)."""
    async with runtime.sessions() as session:
        count = (await session.execute(_ADMINISTRATORS)).scalar_one()
    if not count:
        return CheckResult(False, "no active staff user holds roles:manage (make one: shuiwu admin create)")
    return CheckResult(True, f"{count} active staff users hold roles:manage")


async def sms_reachable(runtime: Runtime) -> CheckResult:
    """The ``gateway.sms`` line: which sender sends residents' codes, and for a vendor
    that its endpoint accepts a connection (its settings were checked when they loaded).
    ``log`` fails: no resident can receive a code (``make demo`` does not run check)."""
    from backend.auth.sms.senders import SMS_SERVICE
    from backend.gateways.checks import endpoint_reachable

    client = runtime.service(SMS_SERVICE)
    sender = client.settings.sender
    if sender == "log":
        return CheckResult(False, "SHUIWU_SMS_SENDER=log: no SMS is sent (codes go to the log), so residents cannot "
                                  "sign in or bind by code; log is for development and the demo only")
    reached = await endpoint_reachable(client)
    return CheckResult(reached.ok, f"{sender}: {reached.detail}")
