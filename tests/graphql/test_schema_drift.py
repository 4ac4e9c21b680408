"""schema.graphql is the output of `shuiwu export-schema`: third parties read it."""

from __future__ import annotations

from pathlib import Path

from backend.domains import DOMAINS
from backend.graphql.schema import export_sdl

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schema.graphql"


def test_checked_in_schema_matches_the_code() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == export_sdl(DOMAINS), (
        "schema.graphql is stale: run `make schema` and commit it"
    )
