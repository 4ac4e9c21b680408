"""Both storage backends for the same tests: a directory, and S3 on a local S3 server.

The S3 server is moto's server mode, started once per test run on a free loopback port
(``s3_server``). It runs as a child process rather than moto's ThreadedMotoServer: the
memory test measures this process's allocations, and an in-process server would count
the bytes it stores as ours (it also keeps its CPU and GIL off the tests' loop).

``backend`` parametrizes a test over ``"local"`` and ``"s3"``; ``storage`` is a fresh
storage of that kind (a new directory, or a new prefix in the test bucket), so a
leftover check sees only what the test itself stored.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.files.storage import S3_MIN_PART_BYTES, LocalStorage, S3Storage, Storage

BUCKET = "shuiwu-test"
ACCESS_KEY = "testing-key"
SECRET_KEY = "testing-secret"


@dataclass(frozen=True, slots=True)
class S3Server:
    endpoint: str

    def storage_url(self, prefix: str) -> str:
        # The smallest part S3 allows, so a few MB already take the multipart path.
        return f"s3://{BUCKET}/{prefix}?endpoint={self.endpoint}&part_size_mb=5"

    def storage(self, prefix: str, staging: Path) -> S3Storage:
        return S3Storage(bucket=BUCKET, prefix=prefix, endpoint_url=self.endpoint, access_key_id=ACCESS_KEY,
                         secret_access_key=SECRET_KEY, staging=staging, part_bytes=S3_MIN_PART_BYTES)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on loopback, with the test bucket created."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{endpoint}/moto-api/", timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.05)
        # Path-style bucket creation, unsigned: moto accepts it (no credentials checked).
        httpx.put(f"{endpoint}/{BUCKET}", timeout=10).raise_for_status()
        yield S3Server(endpoint)
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
async def storage(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Storage]:
    made: Storage
    if backend == "local":
        made = LocalStorage(tmp_path / "files")
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        made = server.storage(f"t-{uuid.uuid4().hex[:12]}", tmp_path / "files-staging")
    yield made
    await made.aclose()


async def leftovers(storage: Storage) -> dict[str, Any]:
    """Whatever a storage holds: its keys, its staging files and (S3) unfinished uploads."""
    found: dict[str, Any] = {"keys": await storage.keys(),
                             "staging": sorted(path.name for path in storage.staging_directory().iterdir())}
    if isinstance(storage, S3Storage):
        client = await storage._client()
        uploads = await client.list_multipart_uploads(Bucket=storage.bucket, Prefix=storage.prefix)
        found["uploads"] = [upload["Key"] for upload in uploads.get("Uploads", ())]
    return found


NOTHING: dict[str, Any] = {"keys": [], "staging": []}


def nothing_in(storage: Storage) -> dict[str, Any]:
    return {**NOTHING, "uploads": []} if isinstance(storage, S3Storage) else NOTHING
