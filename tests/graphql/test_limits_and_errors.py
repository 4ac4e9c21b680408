"""The request-level error contract: limits refused before execution, bad tokens, masking."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from graphql import GraphQLError

from backend.auth.models import PrincipalKind
from backend.auth.security import issue_access_token
from backend.clock import utcnow
from backend.graphql.errors import format_error
from backend.graphql.scalars import Money
from backend.money import InvalidMoney, fen_to_yuan, yuan_to_fen
from tests.graphql.client import TEST_SECRET, GraphQLClient
from tests.graphql.conftest import World

AREAS_SIZED = "query Sized($n: Int) { areas(first: $n) { totalCount edges { node { id name } } } }"


def _codes(result: dict) -> list[str]:  # type: ignore[type-arg]
    return [error["extensions"]["code"] for error in result.get("errors", [])]


async def test_query_nested_deeper_than_the_limit_is_refused_before_execution(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    deep = "{ areas { edges { node { " + "parent { " * 14 + "name" + " }" * 14 + " } } } }"

    result = await client.execute(deep, token=token)

    assert result["data"] is None
    assert _codes(result) == ["QUERY_TOO_DEEP"]


async def test_page_size_above_the_maximum_is_refused(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)

    result = await client.execute(AREAS_SIZED, {"n": 1001}, token=token)

    assert result["data"] is None
    assert _codes(result) == ["PAGE_SIZE_EXCEEDED"]


async def test_cost_is_computed_from_this_requests_variables_not_a_cached_value(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)
    many = "query Many($n: Int) { " + " ".join(f"a{i}: areas(first: $n) {{ edges {{ node {{ id name }} }} }}" for i in range(20)) + " }"

    cheap = await client.execute(many, {"n": 5}, token=token)
    costly = await client.execute(many, {"n": 1000}, token=token)
    cheap_again = await client.execute(many, {"n": 5}, token=token)

    assert "errors" not in cheap and "errors" not in cheap_again
    assert costly["data"] is None
    assert _codes(costly) == ["QUERY_TOO_COMPLEX"]


async def test_forged_expired_and_malformed_tokens_are_unauthenticated(client: GraphQLClient, world: World) -> None:
    assert world.admin.user.id is not None
    session_id = world.admin.principal.session_id
    forged, _ = issue_access_token(secret="another-secret-of-sufficient-length-000", kind=PrincipalKind.staff,
                                   principal_id=world.admin.user.id, session_id=session_id or __import__("uuid").uuid4(),
                                   now=utcnow(), ttl_s=60)
    expired, _ = issue_access_token(secret=TEST_SECRET, kind=PrincipalKind.staff, principal_id=world.admin.user.id,
                                    session_id=__import__("uuid").uuid4(), now=utcnow() - timedelta(hours=1), ttl_s=60)

    for token, reason in ((forged, "TOKEN_INVALID"), (expired, "TOKEN_EXPIRED"), ("not-a-jwt", "TOKEN_INVALID")):
        result = await client.execute("{ viewer { name } }", token=token)
        assert result["_status"] == 401
        assert result["errors"][0]["extensions"] == {
            "code": "UNAUTHENTICATED", "reason": reason, "messageEn": result["errors"][0]["extensions"]["messageEn"]
        }


async def test_logout_revokes_the_access_token_at_once(client: GraphQLClient, world: World) -> None:
    token = await client.login(world.admin.username, world.admin.password)

    logout = await client.execute("mutation { logout { ok errors { code } } }", token=token)
    after = await client.execute("{ viewer { name } }", token=token)

    assert logout["data"]["logout"] == {"ok": True, "errors": []}
    assert after["errors"][0]["extensions"]["reason"] == "TOKEN_REVOKED"


async def test_anonymous_query_of_a_protected_field_is_unauthenticated(client: GraphQLClient) -> None:
    result = await client.execute("{ viewer { name } }")

    assert _codes(result) == ["UNAUTHENTICATED"]


async def test_syntax_errors_are_bad_user_input(client: GraphQLClient) -> None:
    result = await client.execute("{ viewer { ")

    assert _codes(result) == ["BAD_USER_INPUT"]


def test_unexpected_errors_are_masked_with_the_request_id_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    error = GraphQLError("boom: password=hunter2", original_error=RuntimeError("boom: password=hunter2"), path=["viewer"])

    with caplog.at_level(logging.ERROR, logger="shuiwu.graphql"):
        formatted = format_error(error, "req-123")

    assert formatted["extensions"] == {"code": "INTERNAL", "messageEn": "Internal error", "requestId": "req-123"}
    assert "hunter2" not in str(formatted)
    assert "req-123" in caplog.text


@pytest.mark.parametrize(("text", "fen"), [("1040.00", 104000), ("12.5", 1250), ("0", 0), ("-3.07", -307)])
def test_money_parses_decimal_strings_to_fen(text: str, fen: int) -> None:
    assert yuan_to_fen(text) == fen


@pytest.mark.parametrize("bad", [12.5, 12, "1.005", "1e3", "1,000.00", "", "abc", "01.00", None, True])
def test_money_refuses_floats_numbers_exponents_and_extra_places(bad: object) -> None:
    with pytest.raises(InvalidMoney):
        yuan_to_fen(bad)


def test_money_serializes_with_exactly_two_places() -> None:
    assert [fen_to_yuan(v) for v in (104000, 5, -307, 0)] == ["1040.00", "0.05", "-3.07", "0.00"]
    with pytest.raises(TypeError):
        fen_to_yuan(1.5)  # type: ignore[arg-type]
    definition = Money._scalar_definition  # type: ignore[attr-defined]
    assert definition.serialize(104000) == "1040.00"
