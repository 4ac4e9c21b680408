"""Imports every installed domain's tables (``Domain.models``) so the shared metadata is
complete (Alembic, tests)."""

from __future__ import annotations

import importlib

from backend.domains import installed


def import_all_models() -> None:
    for domain in installed():
        for module in domain.models:
            importlib.import_module(module)


import_all_models()
