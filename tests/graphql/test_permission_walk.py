"""Every operation declares its permission, and every mutation refuses a caller without
it — writing nothing but the refusal's audit row."""

from __future__ import annotations

from typing import Any

import pytest
from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLScalarType,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.db import metadata
from backend.graphql.permissions import declared_permission
from backend.graphql.schema import build_schema
from tests.graphql.client import GraphQLClient
from tests.graphql.conftest import World

SCHEMA = build_schema()
PUBLIC_MUTATIONS = {"login", "refreshToken", "requestLoginCode", "residentLogin", "issueClientToken"}


def _fields(type_name: str) -> dict[str, Any]:
    definition = SCHEMA.get_type_by_name(type_name)
    assert definition is not None
    return {SCHEMA.config.name_converter.get_graphql_name(f): f for f in definition.fields}  # type: ignore[union-attr]


MUTATIONS = _fields("Mutation")
QUERIES = _fields("Query")

SCALAR_SAMPLES: dict[str, Any] = {
    "String": "x", "ID": "WDox", "Int": 1, "Float": 1.0, "Boolean": True,
    "Money": "1.00", "DateTime": "2026-01-01T00:00:00+08:00", "JSON": {}, "Decimal": "1.0", "Date": "2026-01-01",
}


def sample(graphql_type: Any) -> Any:
    """A value of ``graphql_type`` that passes coercion (permission checks come after it)."""
    if isinstance(graphql_type, GraphQLNonNull):
        return sample(graphql_type.of_type)
    if isinstance(graphql_type, GraphQLList):
        return [sample(graphql_type.of_type)]
    if isinstance(graphql_type, GraphQLEnumType):
        return next(iter(graphql_type.values))
    if isinstance(graphql_type, GraphQLInputObjectType):
        return {name: sample(f.type) for name, f in graphql_type.fields.items() if isinstance(f.type, GraphQLNonNull)}
    assert isinstance(graphql_type, GraphQLScalarType)
    return SCALAR_SAMPLES[graphql_type.name]


def document_for(name: str) -> tuple[str, dict[str, Any]]:
    field = SCHEMA._schema.mutation_type.fields[name]  # type: ignore[union-attr]
    declarations = ", ".join(f"${arg}: {spec.type}" for arg, spec in field.args.items())
    arguments = ", ".join(f"{arg}: ${arg}" for arg in field.args)
    variables = {arg: sample(spec.type) for arg, spec in field.args.items()}
    head = f"mutation Walk({declarations})" if declarations else "mutation Walk"
    call = f"{name}({arguments})" if arguments else name
    return f"{head} {{ {call} {{ __typename }} }}", variables


async def row_counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as connection:
        counts = {}
        for table in sorted(metadata.tables):
            counts[table] = (await connection.execute(text(f'SELECT count(*) FROM "{table}"'))).scalar_one()
    return counts


def test_every_query_and_mutation_declares_its_permission() -> None:
    undeclared = [name for name, field in {**QUERIES, **MUTATIONS}.items() if declared_permission(field.permission_classes) is None]
    assert undeclared == []


def test_only_sign_in_mutations_are_public() -> None:
    public = {name for name, field in MUTATIONS.items() if declared_permission(field.permission_classes) == "public"}
    assert public == PUBLIC_MUTATIONS


@pytest.mark.parametrize("name", sorted(set(MUTATIONS) - PUBLIC_MUTATIONS))
async def test_mutation_refuses_a_caller_without_its_permission_and_writes_nothing(
    name: str, client: GraphQLClient, world: World, engine_for_module: AsyncEngine
) -> None:
    permission = declared_permission(MUTATIONS[name].permission_classes)
    token = None if permission == "authenticated" else await client.login(world.nobody.username, world.nobody.password)
    query, variables = document_for(name)
    before = await row_counts(engine_for_module)

    result = await client.execute(query, variables, token=token)

    after = await row_counts(engine_for_module)
    expected = "UNAUTHENTICATED" if permission == "authenticated" else "FORBIDDEN"
    assert result["data"] is None or result["data"].get(name) is None
    assert [error["extensions"]["code"] for error in result["errors"]] == [expected]
    written = {table: after[table] - before[table] for table in after if after[table] != before[table]}
    assert written == ({} if expected == "UNAUTHENTICATED" else {"audit_log": 1})
