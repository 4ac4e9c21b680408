"""The notes domain's line in ``shuiwu check``."""

from __future__ import annotations

from backend.domain import CheckResult
from backend.runtime import Runtime


async def greeting(runtime: Runtime) -> CheckResult:
    return CheckResult(True, runtime.service("notes_greeting")())
