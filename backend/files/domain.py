"""The files layer's declaration: the storage service, its download and photo upload routes and its purge."""

from __future__ import annotations

from backend.domain import Check, Domain, Job, PersonalData

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
    personal_data=PersonalData(excluded={
        "stored_files.filename": "exports and photos staff store; a resident's photo upload (POST /files/photos) "
                                 "is purged after SHUIWU_FILES_PHOTO_CLAIM_HOURS unless a domain keeps it, and "
                                 "no domain keeps a resident's photo today (the one that will declares what it holds)",
        "stored_files.owner_kind": "as filename",
        "stored_files.owner_id": "as filename",
    }),
)
