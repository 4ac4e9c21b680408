"""The files layer's declaration: the storage service, its download route and its purge."""

from __future__ import annotations

from backend.domain import Check, Domain, Job

DOMAIN = Domain(
    name="files",
    title="文件",
    models=("backend.files.models",),
    routes="backend.files.http:routes",
    services="backend.files.service:offered",
    jobs=(
        # Minute 17: away from the other hourly purges (minute 7).
        Job("purge_expired_files", "backend.files.jobs:purge_expired_files", cron="17 * * * *",
            description="Delete stored files past their expiry, and abandoned staging files"),
    ),
    checks=(Check("files.storage", "backend.files.checks:storage_reachable",
                  description="The file storage (SHUIWU_STORAGE_URL) can be written to"),),
)
