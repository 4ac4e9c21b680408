"""A GraphQL client over the real ASGI app (httpx in-process transport)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from backend.app import create_app
from backend.settings import Settings

TEST_SECRET = "test-secret-key-that-is-long-enough-0123456789"


# Every test client calls from one address, many times a minute: the abuse throttles are
# opened wide here, and the tests that pin them set their own limits.
UNTHROTTLED: dict[str, Any] = {
    "anonymous_per_ip_per_minute": 1_000_000, "anonymous_per_minute": 1_000_000, "anonymous_burst_per_ip": 1_000_000,
    "anonymous_refusal_delay_s": 0,
    "login_attempts_per_ip_per_minute": 1_000_000, "sms_codes_per_ip_per_minute": 1_000_000,
    "sms_codes_per_minute": 1_000_000, "sms_codes_per_phone_per_day": 1_000_000, "code_attempts_per_phone_per_day": 1_000_000,
}


def api_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"secret_key": TEST_SECRET, "graphiql": True, "introspection": "all", **UNTHROTTLED}
    values.update(overrides)
    return Settings(**values)


class GraphQLClient:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.token: str | None = None

    async def execute(self, query: str, variables: dict[str, Any] | None = None, *, token: str | None = None,
                      operation_name: str | None = None) -> dict[str, Any]:
        headers = {}
        bearer = token if token is not None else self.token
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        body: dict[str, Any] = {"query": query, "variables": variables or {}}
        if operation_name:
            body["operationName"] = operation_name
        response = await self.http.post("/graphql", json=body, headers=headers)
        result: dict[str, Any] = response.json()
        result["_status"] = response.status_code
        return result

    async def login(self, username: str, password: str) -> str:
        result = await self.execute(
            "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { tokens { accessToken } errors { code } } }",
            {"u": username, "p": password},
        )
        assert result["data"]["login"]["errors"] == [], result
        token: str = result["data"]["login"]["tokens"]["accessToken"]
        return token


@asynccontextmanager
async def graphql_client(
    database_url: str, *, client_address: tuple[str, int] = ("127.0.0.1", 123), **overrides: Any
) -> AsyncIterator[GraphQLClient]:
    app = create_app(api_settings(**overrides), database_url)
    transport = httpx.ASGITransport(app=app, client=client_address)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield GraphQLClient(http)
    await app.state.engine.dispose()
