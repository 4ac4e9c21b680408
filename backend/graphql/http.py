"""The ``/graphql`` HTTP endpoint.

We run graphql-core's executor on strawberry's schema ourselves instead of strawberry's
view: parsing, validation, depth and the cost tree are cached per query text in a bounded
LRU, so a repeated query costs only its execution (NOTES.md: stock strawberry ~530 req/s,
with caching ~2,700 req/s). Strawberry's field machinery (permissions, resolvers, scalars)
is unchanged; schema extensions are not used.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson
import strawberry
from graphql import (
    DocumentNode,
    ExecutionResult,
    GraphQLError,
    GraphQLSyntaxError,
    OperationDefinitionNode,
    OperationType,
    parse,
    validate,
)
from graphql.execution import execute
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from strawberry.utils.await_maybe import await_maybe

from backend.auth.principal import Principal
from backend.edge import page_csp
from backend.errors import BadUserInput, DomainError, ErrorCode, RateLimited
from backend.graphql.context import Context
from backend.graphql.errors import format_error
from backend.graphql.limits import OperationShape, QueryTooComplex, QueryTooDeep, operation_shapes
from backend.observability import observe_operation, request_id_var
from backend.settings import Settings

log = logging.getLogger("shuiwu.graphql")

Authenticator = Callable[[str], Awaitable[Principal]]
RateCheck = Callable[[Principal], None]


@dataclass(slots=True)
class PreparedDocument:
    document: DocumentNode | None
    errors: list[GraphQLError]
    shapes: dict[str | None, OperationShape]
    operations: dict[str | None, OperationType]
    plans: dict[Any, Any] = field(default_factory=dict)


class DocumentCache:
    """Parsed and validated documents by query text, least recently used evicted."""

    def __init__(self, schema: strawberry.Schema, settings: Settings) -> None:
        self._schema = schema
        self._settings = settings
        self._entries: OrderedDict[str, PreparedDocument] = OrderedDict()
        self.max_size = settings.graphql_cache_size

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, query: str) -> PreparedDocument:
        entry = self._entries.get(query)
        if entry is not None:
            self._entries.move_to_end(query)
            return entry
        entry = self._prepare(query)
        self._entries[query] = entry
        if len(self._entries) > self.max_size:
            self._entries.popitem(last=False)
        return entry

    def _prepare(self, query: str) -> PreparedDocument:
        try:
            document = parse(query, max_tokens=self._settings.graphql_max_tokens)
        except GraphQLSyntaxError as error:
            return PreparedDocument(None, [error], {}, {})
        errors = validate(self._schema._schema, document)
        shapes = operation_shapes(document) if not errors else {}
        operations = {
            (definition.name.value if definition.name else None): definition.operation
            for definition in document.definitions
            if isinstance(definition, OperationDefinitionNode)
        }
        return PreparedDocument(document, list(errors), shapes, operations)


class GraphQLEndpoint:
    """POST /graphql executes; GET /graphql serves GraphiQL to a browser."""

    def __init__(
        self,
        schema: strawberry.Schema,
        *,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        authenticate: Authenticator,
        check_rate: RateCheck,
        read_sessions: async_sessionmaker[AsyncSession] | None = None,
        read_engine: Any = None,
        services: dict[str, Any] | None = None,
    ) -> None:
        self.schema = schema
        self.settings = settings
        self.sessions = sessions
        self.read_sessions = read_sessions
        self.read_engine = read_engine
        self.services = services if services is not None else {}
        self.authenticate = authenticate
        self.check_rate = check_rate
        self.documents = DocumentCache(schema, settings)
        self._executor_class = schema.execution_context_class

    async def handle(self, request: Request) -> Response:
        if request.method == "GET":
            return self._graphiql()
        request_id = request_id_var.get() or uuid.uuid4().hex
        started = time.perf_counter()
        raw = await request.body()
        # PostgreSQL text cannot hold NUL; refuse it at the door rather than deep in a query.
        if b"\x00" in raw or b"\\u0000" in raw:
            return self._refusal(BadUserInput("文本不能包含 NUL 字符", "Text must not contain NUL characters"), 400)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._refusal(BadUserInput("请求体不是合法的 JSON", "Request body is not valid JSON"), 400)
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return self._refusal(BadUserInput("缺少 query", "Missing query"), 400)
        query: str = body["query"]
        variables = body.get("variables") or {}
        operation_name = body.get("operationName")
        if not isinstance(variables, dict) or (operation_name is not None and not isinstance(operation_name, str)):
            return self._refusal(BadUserInput("variables 或 operationName 格式错误", "Malformed variables or operationName"), 400)

        principal: Principal | None = None
        authorization = request.headers.get("authorization")
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token:
                return self._refusal(BadUserInput("Authorization 须为 Bearer 令牌", "Authorization must be a Bearer token"), 401)
            try:
                principal = await self.authenticate(token.strip())
                self.check_rate(principal)
            except RateLimited as refusal:
                return self._refusal(refusal, 429)
            except DomainError as refusal:
                return self._refusal(refusal, 401)
            except Exception:
                # Database down, pool exhausted: masked like any execution error.
                log.exception("authentication failed unexpectedly (request %s)", request_id)
                return self._json(
                    {"data": None, "errors": [{"message": "服务器内部错误", "extensions": {
                        "code": ErrorCode.INTERNAL.value, "messageEn": "Internal error", "requestId": request_id}}]},
                    500,
                )

        prepared = self.documents.get(query)
        label = operation_name or "anonymous"
        if prepared.errors:
            observe_operation(label, time.perf_counter() - started, ok=False)
            return self._json({"data": None, "errors": [format_error(e, request_id) for e in prepared.errors]})
        shape = prepared.shapes.get(operation_name) if operation_name or len(prepared.shapes) != 1 else next(iter(prepared.shapes.values()))
        if shape is not None:
            try:
                if shape.depth > self.settings.graphql_max_depth:
                    raise QueryTooDeep()
                if shape.cost(variables) > self.settings.graphql_max_cost:
                    raise QueryTooComplex()
            except DomainError as refusal:
                observe_operation(label, time.perf_counter() - started, ok=False)
                return self._refusal(refusal, 200)

        context = Context(
            settings=self.settings,
            sessions=self.sessions,
            request_id=request_id,
            principal=principal,
            ip=request.client.host if request.client else None,
            user_agent=request.headers.get("user-agent"),
            plans=prepared.plans,
            read_sessions=self.read_sessions,
            read_engine=self.read_engine,
            services=self.services,
        )
        assert prepared.document is not None
        result: ExecutionResult = await await_maybe(
            execute(
                self.schema._schema,
                prepared.document,
                variable_values=variables,
                operation_name=operation_name,
                context_value=context,
                executor_class=self._executor_class,
            )
        )
        response: dict[str, Any] = {"data": result.data}
        if result.errors:
            response["errors"] = [format_error(error, request_id) for error in result.errors]
        observe_operation(label, time.perf_counter() - started, ok=not result.errors)
        return self._json(response)

    def _json(self, content: dict[str, Any], status: int = 200) -> Response:
        # orjson: ~5x faster than json.dumps on a 1000-row page, UTF-8 output as-is.
        return Response(orjson.dumps(content), status_code=status, media_type="application/json")

    def _refusal(self, error: DomainError, status: int) -> Response:
        extensions: dict[str, Any] = {"code": error.code.value, "messageEn": error.message_en}
        if status == 401:
            # The code stays UNAUTHENTICATED (clients drop the token); the reason says why.
            extensions["code"] = ErrorCode.UNAUTHENTICATED.value
            extensions["reason"] = str(getattr(error, "reason", error.code).value)
        return JSONResponse({"data": None, "errors": [{"message": error.message, "extensions": extensions}]}, status)

    def _graphiql(self) -> Response:
        if not self.settings.graphiql:
            return JSONResponse({"errors": [{"message": "GraphiQL is disabled"}]}, 404)
        page = resources.files("backend.graphql").joinpath("static/graphiql.html").read_text(encoding="utf-8")
        # The page's own CSP (the API's default allows no scripts): assets from /graphql/static only.
        return HTMLResponse(page, headers={"Content-Security-Policy": page_csp(page)})
