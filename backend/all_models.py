"""Imports every domain's tables so the shared metadata is complete (Alembic, tests)."""

from backend.archives import models as archives_models
from backend.audit import models as audit_models
from backend.auth import models as auth_models
from backend.events import models as events_models
from backend.exports import models as exports_models
from backend.readings import models as readings_models
from backend.readings.alarms import models as alarm_models
from backend.readings.schemes import models as query_scheme_models

__all__ = [
    "alarm_models", "archives_models", "audit_models", "auth_models", "events_models", "exports_models",
    "query_scheme_models", "readings_models",
]
