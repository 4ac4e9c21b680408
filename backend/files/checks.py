"""The files layer's line in ``shuiwu check`` (backend.files.domain)."""

from __future__ import annotations

from backend.domain import CheckResult
from backend.errors import DomainError
from backend.files.service import FileStore
from backend.runtime import Runtime


async def storage_reachable(runtime: Runtime) -> CheckResult:
    """The storage ``SHUIWU_STORAGE_URL`` names answers: the directory can be written to,
    or the S3 bucket exists for these credentials. Writes nothing."""
    files: FileStore = runtime.service("files")
    try:
        where = await files.storage.reachable()
    except DomainError as error:
        return CheckResult(False, f"{error.message_en} ({files.storage!r})")
    finally:
        await files.aclose()
    return CheckResult(True, where)
