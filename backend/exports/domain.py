"""The exports layer's declaration: download links' upkeep (the renderers are a library)."""

from __future__ import annotations

from backend.domain import Domain, Job

DOMAIN = Domain(
    name="exports",
    title="导出",
    models=("backend.exports.models",),
    jobs=(
        # Minute 7, as it ran beside the auth purge before the declarations split them.
        Job("purge_used_download_links", "backend.exports.jobs:purge_used_links", cron="7 * * * *",
            description="Forget the nonces of expired download links"),
    ),
)
