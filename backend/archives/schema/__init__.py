"""GraphQL for the archives (档案管理): areas, households, meters, meter models,
concentrators, collectors, assignments and replacements."""

from __future__ import annotations

from backend.archives.schema.auth_fields import EXTENSIONS
from backend.archives.schema.mutations import Mutation
from backend.archives.schema.queries import NODES, Query, fetch_area, fetch_household
from backend.archives.schema.types import (
    AreaByIdLoader,
    AreaKindEnum,
    AreaType,
    HouseholdType,
    MeterByIdLoader,
)

__all__ = [
    "EXTENSIONS",
    "NODES",
    "AreaByIdLoader",
    "AreaKindEnum",
    "AreaType",
    "HouseholdType",
    "MeterByIdLoader",
    "Mutation",
    "Query",
    "fetch_area",
    "fetch_household",
]
