"""The ``/graphql`` HTTP endpoint.

We run graphql-core's executor on strawberry's schema ourselves instead of strawberry's
view: parsing, validation, depth and the cost tree are cached per query text in a bounded
LRU, so a repeated query costs only its execution (NOTES.md: stock strawberry ~530 req/s,
with caching ~2,700 req/s). Strawberry's field machinery (permissions, resolvers, scalars)
is unchanged; schema extensions are not used.

The gate, in order (backend/graphql/limits.py): JSON bodies only (415 otherwise, so a
page elsewhere cannot fire a CORS-less "simple" request); a field count right after
parsing, before the quadratic parts of validation; validation of larger documents in a
worker thread, cached by the document's printed form so whitespace variants validate
once; depth, root fields, auth mutations and introspection per operation; the cost under
the variables the executor coerced (the same values it then runs with); admission of
expensive requests.
"""

from __future__ import annotations

import asyncio
import logging
import os
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
    print_ast,
    validate,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.websockets import WebSocket
from strawberry.utils.await_maybe import await_maybe

from backend.auth.http import client_ip
from backend.auth.principal import Principal
from backend.edge import bearer_token, media_type, page_csp, refusal_errors
from backend.errors import BadUserInput, DomainError, ErrorCode, RateLimited, UnsupportedMediaType
from backend.graphql.context import Context
from backend.graphql.errors import format_error
from backend.graphql.limits import (
    EXPANSION_PER_WRITTEN_FIELD,
    MAX_REPEATED_SELECTIONS,
    Admission,
    AdmissionRefused,
    DocumentTooLarge,
    IntrospectionDisabled,
    IntrospectionNeedsLogin,
    OperationShape,
    QueryTooComplex,
    TooManyAuthMutations,
    TooManyRootFields,
    admission_key,
    document_size,
    introspection_budget,
    operation_shapes,
)
from backend.graphql.transport_ws import PROTOCOL, SUBPROTOCOL_NOT_ACCEPTABLE, SubscriptionServer
from backend.observability import ANONYMOUS_CALLER, NOT_EXECUTED, UNNAMED_OPERATION, observe_operation, request_id_var
from backend.settings import Settings

log = logging.getLogger("shuiwu.graphql")

Authenticator = Callable[[str], Awaitable[Principal]]
RateCheck = Callable[[Principal], None]

# Documents selecting more fields than this (fragments spread in) are validated and
# measured in a worker thread: validation is superlinear in repeated fields, the cost tree
# linear in the spread fields, and the event loop must keep serving meanwhile.
VALIDATE_IN_THREAD_ABOVE_FIELDS = 40
# The media types of a GraphQL POST (GraphQL over HTTP); anything else is a 415.
JSON_MEDIA_TYPES = frozenset({"application/json", "application/graphql+json"})


@dataclass(slots=True)
class PreparedDocument:
    document: DocumentNode | None
    errors: list[GraphQLError]
    shapes: dict[str | None, OperationShape]
    operations: dict[str | None, OperationType]
    plans: dict[Any, Any] = field(default_factory=dict)
    refusal: DomainError | None = None


class DocumentCache:
    """Parsed and validated documents, least recently used evicted.

    Looked up by query text, then by the printed form of the parsed document: variants
    of one document in whitespace, commas or comments cost a parse and a print (linear),
    never another validation.
    """

    def __init__(self, schema: strawberry.Schema, settings: Settings) -> None:
        self._schema = schema
        self._settings = settings
        self._entries: OrderedDict[str, PreparedDocument] = OrderedDict()
        self._by_form: OrderedDict[str, PreparedDocument] = OrderedDict()
        self.max_size = settings.graphql_cache_size
        # Fields an operation may select with its fragments spread in (copies included).
        self._max_spread = settings.graphql_max_fields * EXPANSION_PER_WRITTEN_FIELD

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, query: str) -> PreparedDocument:
        entry = self._entries.get(query)
        if entry is not None:
            self._entries.move_to_end(query)
            return entry
        entry = await self._prepare(query)
        self._remember(self._entries, query, entry)
        return entry

    def _remember(self, entries: OrderedDict[str, PreparedDocument], key: str, entry: PreparedDocument) -> None:
        entries[key] = entry
        if len(entries) > self.max_size:
            entries.popitem(last=False)

    async def _prepare(self, query: str) -> PreparedDocument:
        try:
            document = parse(query, max_tokens=self._settings.graphql_max_tokens)
        except GraphQLSyntaxError as error:
            return PreparedDocument(None, [error], {}, {})
        size = document_size(document)
        if (size.fields > self._settings.graphql_max_fields or size.repeated > MAX_REPEATED_SELECTIONS
                or size.spread > self._max_spread):
            return PreparedDocument(None, [], {}, {}, refusal=DocumentTooLarge())
        form = print_ast(document)
        entry = self._by_form.get(form)
        if entry is not None:
            self._by_form.move_to_end(form)
            return entry
        if max(size.fields, size.spread) > VALIDATE_IN_THREAD_ABOVE_FIELDS:
            entry = await asyncio.to_thread(self._validated, document)
        else:
            entry = self._validated(document)
        self._remember(self._by_form, form, entry)
        return entry

    def _validated(self, document: DocumentNode) -> PreparedDocument:
        """Validation, then the operations' shapes (a refusal when one is too deep or
        spreads into too many selections)."""
        schema = self._schema._schema
        errors = validate(schema, document)
        operations = {
            (definition.name.value if definition.name else None): definition.operation
            for definition in document.definitions
            if isinstance(definition, OperationDefinitionNode)
        }
        if errors:
            return PreparedDocument(document, list(errors), {}, operations)
        try:
            shapes = operation_shapes(
                schema, document, max_depth=self._settings.graphql_max_depth,
                max_nodes=self._max_spread,
            )
        except DomainError as refusal:
            return PreparedDocument(None, [], {}, {}, refusal=refusal)
        return PreparedDocument(document, [], shapes, operations)


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
        check_anonymous: Callable[[str | None], None] | None = None,
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
        self.check_anonymous = check_anonymous
        self.documents = DocumentCache(schema, settings)
        self._executor_class = schema.execution_context_class
        self.admission = Admission(
            per_process=settings.graphql_expensive_per_process or os.cpu_count() or 1,
            per_principal=settings.graphql_expensive_per_principal,
            wait_s=settings.graphql_admission_wait_s,
        )

    async def handle(self, request: Request) -> Response:
        if request.method == "GET":
            return self._graphiql()
        request_id = request_id_var.get() or uuid.uuid4().hex
        started = time.perf_counter()
        if media_type(request.headers.get("content-type")) not in JSON_MEDIA_TYPES:
            return self._refusal(UnsupportedMediaType("JSON (Content-Type: application/json)"), 415)
        ip = client_ip(request)
        # Callers are throttled or authenticated before the body is read. Requests without
        # a bearer token were throttled at the door (backend.edge.AnonymousGate).
        principal: Principal | None = None
        authorization = request.headers.get("authorization")
        if authorization is not None:
            token = bearer_token(authorization)
            try:
                if token is None:
                    raise BadUserInput("Authorization 须为 Bearer 令牌", "Authorization must be a Bearer token")
                principal = await self.authenticate(token)
                self.check_rate(principal)
            except RateLimited as refusal:
                return self._refusal(refusal, 429)
            except DomainError as refusal:
                # A made-up bearer token is an anonymous request: it takes from its address's bucket.
                if token is not None:
                    try:
                        self._check_anonymous(ip)
                    except RateLimited as limited:
                        return self._refusal(limited, 429)
                return self._refusal(refusal, 401)
            except Exception:
                # Database down, pool exhausted: masked like any execution error.
                log.exception("authentication failed unexpectedly (request %s)", request_id)
                internal = DomainError("服务器内部错误", "Internal error", code=ErrorCode.INTERNAL)
                return self._refusal(internal, 500, request_id)
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

        prepared = await self.documents.get(query)
        # Until an operation runs, a fixed label (see backend.observability).
        label = ANONYMOUS_CALLER if principal is None else NOT_EXECUTED
        if prepared.refusal is not None:
            observe_operation(label, time.perf_counter() - started, ok=False)
            return self._refusal(prepared.refusal, 200)
        if prepared.errors:
            observe_operation(label, time.perf_counter() - started, ok=False)
            return self._json({"data": None, "errors": [format_error(e, request_id) for e in prepared.errors]})

        context = Context(
            settings=self.settings,
            sessions=self.sessions,
            request_id=request_id,
            principal=principal,
            ip=ip,
            user_agent=request.headers.get("user-agent"),
            plans=prepared.plans,
            read_sessions=self.read_sessions,
            read_engine=self.read_engine,
            services=self.services,
        )
        assert prepared.document is not None
        # graphql-core coerces the variables here, once: the cost below and the execution
        # both read these coerced values.
        executor = self._executor_class.build(
            self.schema._schema, prepared.document, None, context, variables, operation_name
        )
        if isinstance(executor, list):
            observe_operation(label, time.perf_counter() - started, ok=False)
            return self._json({"data": None, "errors": [format_error(e, request_id) for e in executor]})
        operation = executor.operation
        if operation.operation is OperationType.SUBSCRIPTION:
            observe_operation(label, time.perf_counter() - started, ok=False)
            return self._refusal(BadUserInput("订阅须通过 /graphql 的 WebSocket (graphql-transport-ws)",
                                              "Subscriptions run over the WebSocket on /graphql (graphql-transport-ws)"), 200)
        shape = prepared.shapes[operation.name.value if operation.name else None]
        try:
            expensive = self._check(shape, executor.variable_values, principal)
        except DomainError as refusal:
            observe_operation(label, time.perf_counter() - started, ok=False)
            return self._refusal(refusal, 429 if isinstance(refusal, RateLimited) else 200)

        try:
            if expensive:
                async with self.admission.admit(admission_key(principal, ip)):
                    result = await self._run(executor)
            else:
                result = await self._run(executor)
        except AdmissionRefused as refusal:
            observe_operation(label, time.perf_counter() - started, ok=False)
            return self._refusal(refusal, 429)
        if principal is not None:
            label = operation.name.value if operation.name else UNNAMED_OPERATION
        response: dict[str, Any] = {"data": result.data}
        if result.errors:
            response["errors"] = [format_error(error, request_id) for error in result.errors]
        observe_operation(label, time.perf_counter() - started, ok=not result.errors)
        return self._json(response)

    def _check_anonymous(self, ip: str | None) -> None:
        """The per-address and global buckets of callers without a (valid) token."""
        if self.check_anonymous is not None:
            self.check_anonymous(ip)

    def _check(self, shape: OperationShape, variables: Any, principal: Principal | None) -> bool:
        """Refuse what the operation asks for beyond the limits; True if it must be admitted."""
        settings = self.settings
        if shape.introspects and settings.introspection != "all":
            if settings.introspection == "off":
                raise IntrospectionDisabled()
            if principal is None:
                raise IntrospectionNeedsLogin()
        if shape.root_fields > settings.graphql_max_root_fields:
            raise TooManyRootFields()
        if shape.auth_mutations > 1:
            raise TooManyAuthMutations()
        cost = shape.cost(variables)
        if cost > settings.graphql_max_cost:
            raise QueryTooComplex()
        # Introspection has a budget of its own: the full standard introspection query.
        if shape.introspects and shape.introspection_cost(variables) > introspection_budget(self.schema._schema):
            raise QueryTooComplex()
        return shape.expensive or cost >= settings.graphql_expensive_cost

    def build_executor(self, prepared: PreparedDocument, context: Context, variables: dict[str, Any],
                       operation_name: str | None) -> Any:
        """graphql-core's executor of a valid cached document, with the variables coerced
        once (a list of errors when they do not coerce)."""
        assert prepared.document is not None
        return self._executor_class.build(self.schema._schema, prepared.document, None, context, variables, operation_name)

    def check_limits(self, shape: OperationShape, variables: Any, principal: Principal | None) -> bool:
        """The limits of :meth:`handle` (introspection, root fields, cost) for another
        transport (subscriptions over the WebSocket); True if the operation is expensive."""
        return self._check(shape, variables, principal)

    async def _run(self, executor: Any) -> ExecutionResult:
        result = await await_maybe(executor.execute_operation())
        assert isinstance(result, ExecutionResult)  # no @defer / @stream in this schema
        return result

    def _json(self, content: dict[str, Any], status: int = 200) -> Response:
        # orjson: ~5x faster than json.dumps on a 1000-row page, UTF-8 output as-is.
        return Response(orjson.dumps(content), status_code=status, media_type="application/json")

    def _refusal(self, error: DomainError, status: int, request_id: str | None = None) -> Response:
        # The one refusal shape (backend.edge), with GraphQL's "data": null beside it.
        return self._json({"data": None, "errors": refusal_errors(error, status, request_id)}, status)

    def _graphiql(self) -> Response:
        if not self.settings.graphiql:
            return JSONResponse({"errors": [{"message": "GraphiQL is disabled"}]}, 404)
        page = resources.files("backend.graphql").joinpath("static/graphiql.html").read_text(encoding="utf-8")
        # The page's own CSP (the API's default allows no scripts): assets from /graphql/static only.
        return HTMLResponse(page, headers={"Content-Security-Policy": page_csp(page)})


class _StarletteSocket:
    """A Starlette WebSocket as backend.graphql.transport_ws reads and writes it."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket

    async def receive(self) -> str | bytes | None:
        message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        text: str | None = message.get("text")
        if text is not None:
            return text
        return message.get("bytes") or b""

    async def send(self, text: str) -> None:
        await self.websocket.send_text(text)

    async def close(self, code: int, reason: str) -> None:
        await self.websocket.close(code, reason)


async def serve_socket(websocket: WebSocket, server: SubscriptionServer | None) -> None:
    """``/graphql`` over a WebSocket: graphql-transport-ws subscriptions when the schema
    has any (refused at the handshake otherwise)."""
    if server is None:
        await websocket.close()
        return
    if PROTOCOL not in websocket.scope.get("subprotocols", ()):
        await websocket.accept()
        await websocket.close(SUBPROTOCOL_NOT_ACCEPTABLE, "Subprotocol not acceptable")
        return
    await websocket.accept(subprotocol=PROTOCOL)
    client = websocket.scope.get("client")
    await server.serve(_StarletteSocket(websocket), ip=client[0] if client else None,
                       user_agent=websocket.headers.get("user-agent"))
