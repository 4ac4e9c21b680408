"""Archives' lines in ``shuiwu check`` (backend.archives.domain)."""

from __future__ import annotations

from sqlalchemy import text

from backend.archives.service import CROSS_AREA_OPEN_ASSIGNMENTS
from backend.domain import CheckResult
from backend.runtime import Runtime

# The rule of docs/security.md: a meter serves only households in its own area's subtree.
# Rows older than the rule can break it; they are masked on screens and counted here.
_CROSS_AREA = text(f"SELECT count(*) FROM ({CROSS_AREA_OPEN_ASSIGNMENTS}) AS crossing")


async def no_cross_area_assignments(runtime: Runtime) -> CheckResult:
    """No open meter assignment serves a household outside the meter's area subtree."""
    async with runtime.sessions() as session:
        count = (await session.execute(_CROSS_AREA)).scalar_one()
    if count:
        return CheckResult(False, f"{count} open assignments cross areas (move the meter or the household)")
    return CheckResult(True, "every open assignment stays within its meter's area")
