"""Generated operations never crash the server.

hypothesis-graphql builds queries and mutations from the live schema, so every operation
added later is covered without touching this file. Whatever the input, the answer is data
or typed errors: never INTERNAL, never a 500.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import mutations, queries

from backend.graphql.schema import build_schema
from tests.graphql.client import GraphQLClient
from tests.graphql.conftest import World

SCHEMA = build_schema()._schema
CUSTOM_SCALARS = {
    "Money": st.from_regex(r"\A-?[0-9]{1,6}(\.[0-9]{1,2})?\Z").map(lambda s: __import__("graphql").StringValueNode(value=s)),
    "DateTime": st.datetimes(timezones=st.just(__import__("datetime").UTC)).map(
        lambda d: __import__("graphql").StringValueNode(value=d.isoformat())
    ),
    "JSON": st.just(__import__("graphql").StringValueNode(value="{}")),
    "Date": st.dates().map(lambda d: __import__("graphql").StringValueNode(value=d.isoformat())),
    "Decimal": st.decimals(allow_nan=False, allow_infinity=False, places=4).map(
        lambda d: __import__("graphql").StringValueNode(value=str(d))
    ),
}
# logout would revoke the token every later document runs with; it has its own tests.
MUTATION_FIELDS = sorted(name for name in SCHEMA.mutation_type.fields if name != "logout")  # type: ignore[union-attr]


def _assert_no_internal(result: dict) -> None:  # type: ignore[type-arg]
    assert result["_status"] < 500, result
    codes = [error.get("extensions", {}).get("code") for error in result.get("errors", [])]
    assert "INTERNAL" not in codes, result




async def test_generated_queries_and_mutations_never_raise_internal_errors(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    documents: list[str] = []

    generated = st.one_of(
        queries(SCHEMA, custom_scalars=CUSTOM_SCALARS),
        mutations(SCHEMA, fields=MUTATION_FIELDS, custom_scalars=CUSTOM_SCALARS),
    )

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(generated)
    def collect(document: str) -> None:
        documents.append(document)

    collect()
    assert documents
    for document in documents:
        for bearer in (token, world.resident_token, ""):
            _assert_no_internal(await client.execute(document, token=bearer or None))
