"""``shuiwu check``'s files.storage line: the storage answers, or one failed line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.files.checks import storage_reachable
from backend.jobs import runtime_for
from backend.settings import Settings
from tests.files.conftest import ACCESS_KEY, BUCKET, SECRET_KEY, S3Server


def _settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest, *, bucket: str = BUCKET) -> Settings:
    if backend == "local":
        return Settings(data_dir=tmp_path)
    s3: S3Server = request.getfixturevalue("s3_server")
    values: dict[str, Any] = {"storage_url": f"s3://{bucket}/checks?endpoint={s3.endpoint}", "data_dir": tmp_path,
                              "storage_access_key_id": ACCESS_KEY, "storage_secret_access_key": SECRET_KEY}
    return Settings(**values)


async def test_the_storage_check_names_where_files_go(backend: str, tmp_path: Path, request: pytest.FixtureRequest,
                                                     committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    result = await storage_reachable(runtime_for(_settings(backend, tmp_path, request), committed_sessions))

    assert result.ok, result.detail
    expected = f"directory {(tmp_path / 'files').resolve()} (one host only)" if backend == "local" \
        else f"bucket {BUCKET} at {request.getfixturevalue('s3_server').endpoint}"
    assert result.detail == expected


async def test_a_storage_that_cannot_be_used_fails_its_line(tmp_path: Path, request: pytest.FixtureRequest,
                                                            committed_sessions: async_sessionmaker[AsyncSession]) -> None:
    not_a_directory = Settings(storage_url="/dev/null/files")
    missing_bucket = _settings("s3", tmp_path, request, bucket="no-such-bucket")

    local = await storage_reachable(runtime_for(not_a_directory, committed_sessions))
    s3 = await storage_reachable(runtime_for(missing_bucket, committed_sessions))

    assert (local.ok, local.detail) == (False, "The file directory cannot be written to: /dev/null "
                                               "(LocalStorage('/dev/null/files'))")
    assert not s3.ok and s3.detail.startswith("The bucket no-such-bucket does not exist (S3Storage(bucket='no-such-bucket'")
