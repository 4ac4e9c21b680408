"""What a request may ask for, checked before execution, and admission of expensive work.

Declared beside a field (``@strawberry.field(..., extensions=[...])``):

- :class:`Cost` says what the field's resolver costs beyond its one unit (``weight``) and,
  for a plain list, how many items it returns (``items``); either may be a function of the
  field's arguments, which it receives coerced, by their GraphQL names
  (``{"from": date(...), "scope": {"areaId": ...}, "first": 20}``).
- :class:`Expensive` is a :class:`Cost` whose field also runs under the admission limit:
  a request selecting it waits for a slot of its caller and a slot of the process
  (:class:`Admission`), and within one request such fields run one at a time.
- :class:`AuthMutation` marks a mutation that checks a credential or sends a code; a
  request may carry at most one.

Per document (cached with it): the depth, the number of root fields, the auth mutations,
whether it introspects, and a cost tree whose nodes know their field definitions. Each
fragment is measured and built once however often it is spread, and the depth is checked
before the tree is built, so fragments spread twice per level cannot make this
exponential; the copies still count, against a budget of selections. Per
request: the cost of that tree under graphql-core's coerced variables (the very values the
executor then runs with, so a page size sent as ``1000.0`` is costed as the 1000 it
executes as).

Cost model: every selected field costs 1 plus its declared weight, times the number of
items of the lists above it. A connection's ``edges`` count the page size asked for by the
nearest field above with ``first``/``last`` (the default page when none is given); any
other list (known from the schema's types, not the field's name) counts its declared
``items``, else :data:`DEFAULT_LIST_ITEMS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLEnumType,
    GraphQLError,
    GraphQLField,
    GraphQLInputObjectType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    get_introspection_query,
    is_abstract_type,
    parse,
)
from graphql.execution.values import VariableValues, get_argument_values, get_variable_values
from graphql.type.definition import GraphQLInterfaceType
from graphql.type.introspection import SchemaMetaFieldDef, TypeMetaFieldDef
from strawberry.extensions.field_extension import FieldExtension

from backend.auth.ratelimit import source_of
from backend.errors import BadUserInput, ErrorCode, Forbidden, NotAuthenticated, PageSizeExceeded, RateLimited
from backend.graphql.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from backend.slicing import LOOP_SHARE

# A plain list whose field declares no ``items``: about a screen's worth.
DEFAULT_LIST_ITEMS = 20
_SIZE_ARGUMENTS = ("first", "last")
_INTROSPECTION_ROOTS = frozenset({"__schema", "__type"})

Amount = int | Callable[[dict[str, Any]], int]


class Cost(FieldExtension):
    """The work of a field for the cost limit (see the module docstring)."""

    admitted = False

    def __init__(self, *, weight: Amount = 0, items: Amount | None = None) -> None:
        self.weight = weight
        self.items = items

    @property
    def needs_arguments(self) -> bool:
        return callable(self.weight) or callable(self.items)

    def weight_for(self, arguments: dict[str, Any]) -> int:
        return _amount(self.weight, arguments, 0)

    def items_for(self, arguments: dict[str, Any]) -> int | None:
        return None if self.items is None else _amount(self.items, arguments, DEFAULT_LIST_ITEMS)


class Expensive(Cost):
    """A :class:`Cost` whose field runs under the admission limit, one at a time per request.

    For fields resolved once per request (root fields, a detail's heavy part): on a field
    of every row of a list the one-at-a-time lock would split a DataLoader's batch, so
    per-row fields declare :class:`Cost` instead.
    """

    admitted = True

    def resolve(self, next_: Callable[..., Any], source: Any, info: Any, **kwargs: Any) -> Any:
        return next_(source, info, **kwargs)

    async def resolve_async(self, next_: Callable[..., Any], source: Any, info: Any, **kwargs: Any) -> Any:
        # Aliases of expensive fields would otherwise run side by side on one admission.
        async with info.context.expensive_lock:
            return await next_(source, info, **kwargs)


class AuthMutation(FieldExtension):
    """Marks a mutation that checks a credential or sends a code (one per request)."""


def _amount(amount: Amount, arguments: dict[str, Any], fallback: int) -> int:
    if not callable(amount):
        return amount
    try:
        return max(0, int(amount(arguments)))
    except Exception:  # arguments the resolver will refuse anyway (a missing date, a bad id)
        return fallback


def declared(graphql_field: GraphQLField, kind: type[FieldExtension]) -> Any:
    """The field's declaration of ``kind`` (an instance), or None."""
    definition = graphql_field.extensions.get("strawberry-definition")
    for extension in getattr(definition, "extensions", None) or ():
        if isinstance(extension, kind):
            return extension
    return None


@dataclass(slots=True)
class CostNode:
    graphql_field: GraphQLField
    node: FieldNode
    cost: Cost | None
    sizes_page: bool  # takes first/last: sets the page size of the edges below
    is_edges: bool  # the list of a connection's page
    is_list: bool
    needs_arguments: bool
    children: list[CostNode] = field(default_factory=list)


@dataclass(slots=True)
class OperationShape:
    """What one operation of a document asks for, apart from its variables."""

    operation: OperationType
    depth: int
    root_fields: int
    auth_mutations: int
    introspects: bool
    expensive: bool  # selects a field declared Expensive
    roots: list[CostNode]

    def cost(self, variables: VariableValues) -> int:
        """The cost of the data fields under coerced variables; a page size above the
        maximum is refused."""
        return _cost_of([r for r in self.roots if r.node.name.value not in _INTROSPECTION_ROOTS], variables, 1, None)

    def introspection_cost(self, variables: VariableValues) -> int:
        """The cost of the introspection fields (limited by :func:`introspection_budget`)."""
        return _cost_of([r for r in self.roots if r.node.name.value in _INTROSPECTION_ROOTS], variables, 1, None)


def _named(graphql_type: Any) -> Any:
    while isinstance(graphql_type, GraphQLNonNull | GraphQLList):
        graphql_type = graphql_type.of_type
    return graphql_type


def _is_list(graphql_type: Any) -> bool:
    if isinstance(graphql_type, GraphQLNonNull):
        graphql_type = graphql_type.of_type
    return isinstance(graphql_type, GraphQLList)


def _is_connection(graphql_type: Any) -> bool:
    fields = getattr(graphql_type, "fields", None) or {}
    return "pageInfo" in fields and "edges" in fields and _is_list(fields["edges"].type)


class _Compiler:
    """Builds an operation's cost tree. A fragment is walked once: every spread of it shares
    its nodes, so the tree kept (and cached with the document) grows with the document, not
    with the copies. Its selections still count once per copy against ``budget`` (the
    cost is computed over every copy): past it, :class:`QueryTooComplex`."""

    def __init__(self, schema: GraphQLSchema, fragments: dict[str, FragmentDefinitionNode], budget: int | None) -> None:
        self.schema = schema
        self.fragments = fragments
        self.expensive = False
        self.introspection_items = introspection_items(schema)
        self.budget = budget
        self.spent = 0
        self._walked: dict[str, tuple[int, list[CostNode], int]] = {}  # by fragment: depth, nodes, selections

    def _spend(self, selections: int) -> None:
        self.spent += selections
        if self.budget is not None and self.spent > self.budget:
            raise QueryTooComplex()

    def walk(self, parent: Any, selection_set: SelectionSetNode | None, visiting: frozenset[str]) -> tuple[int, list[CostNode]]:
        if selection_set is None:
            return 0, []
        depth = 0
        nodes: list[CostNode] = []
        for selection in selection_set.selections:
            self._spend(1)
            if isinstance(selection, FieldNode):
                graphql_field = self._field(parent, selection.name.value)
                if graphql_field is None:
                    depth = max(depth, 1)  # __typename, or unknown (validation reports it)
                    continue
                child_depth, children = self.walk(_named(graphql_field.type), selection.selection_set, visiting)
                cost = declared(graphql_field, Cost)
                items = self.introspection_items.get((getattr(parent, "name", ""), selection.name.value))
                if items is not None:
                    cost = Cost(items=items)
                self.expensive = self.expensive or bool(cost and cost.admitted)
                sizes_page = any(name in graphql_field.args for name in _SIZE_ARGUMENTS)
                nodes.append(CostNode(
                    graphql_field, selection, cost, sizes_page,
                    is_edges=selection.name.value == "edges" and _is_connection(parent),
                    is_list=_is_list(graphql_field.type),
                    needs_arguments=sizes_page or bool(cost and cost.needs_arguments),
                    children=children,
                ))
                depth = max(depth, child_depth + 1)
                continue
            if isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                target = self.schema.get_type(condition.name.value) if condition is not None else parent
                child_depth, children = self.walk(target, selection.selection_set, visiting)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if fragment is None or name in visiting:
                    continue  # validation reports unknown or cyclic fragments
                walked = self._walked.get(name)
                if walked is None:
                    before = self.spent
                    child_depth, children = self.walk(
                        self.schema.get_type(fragment.type_condition.name.value), fragment.selection_set, visiting | {name})
                    self._walked[name] = (child_depth, children, self.spent - before)
                else:
                    child_depth, children, selections = walked
                    self._spend(selections)
            else:
                continue
            nodes.extend(children)
            depth = max(depth, child_depth)
        return depth, nodes

    def _field(self, parent: Any, name: str) -> GraphQLField | None:
        if name == "__schema":
            return SchemaMetaFieldDef
        if name == "__type":
            return TypeMetaFieldDef
        if isinstance(parent, GraphQLObjectType | GraphQLInterfaceType):
            found: GraphQLField | None = parent.fields.get(name)
            return found
        return None  # a union selects only __typename directly


@functools.cache
def introspection_items(schema: GraphQLSchema) -> dict[tuple[str, str], int]:
    """The lists of introspection counted at this schema's real sizes (on average), so a
    query nesting ``fields { type { fields ... } }`` costs what it would return."""
    types = list(schema.type_map.values())

    def mean(counts: list[int]) -> int:
        return max(1, -(-sum(counts) // len(counts))) if counts else 1

    with_fields = [t for t in types if isinstance(t, GraphQLObjectType | GraphQLInterfaceType)]
    fields = [f for t in with_fields for f in t.fields.values()]
    return {
        ("__Schema", "types"): len(types),
        ("__Schema", "directives"): len(schema.directives),
        ("__Type", "fields"): mean([len(t.fields) for t in with_fields]),
        ("__Type", "interfaces"): mean([len(t.interfaces) for t in with_fields]),
        ("__Type", "possibleTypes"): mean([len(schema.get_possible_types(t)) for t in types if is_abstract_type(t)]),
        ("__Type", "enumValues"): mean([len(t.values) for t in types if isinstance(t, GraphQLEnumType)]),
        ("__Type", "inputFields"): mean([len(t.fields) for t in types if isinstance(t, GraphQLInputObjectType)]),
        ("__Field", "args"): mean([len(f.args) for f in fields]),
        ("__Directive", "args"): mean([len(d.args) for d in schema.directives]),
        ("__Directive", "locations"): mean([len(d.locations) for d in schema.directives]),
    }


@functools.cache
def introspection_budget(schema: GraphQLSchema) -> int:
    """What the full standard introspection query costs: the most an introspecting
    operation may cost (GraphiQL and code generators ask for it or less)."""
    document = parse(get_introspection_query(
        descriptions=True, specified_by_url=True, directive_is_repeatable=True, schema_description=True,
        input_value_deprecation=True,
    ))
    shape = next(iter(operation_shapes(schema, document).values()))
    variables = get_variable_values(schema, [], {})
    assert not isinstance(variables, list)
    return shape.introspection_cost(variables)


def operation_shapes(
    schema: GraphQLSchema, document: DocumentNode, *, max_depth: int | None = None, max_nodes: int | None = None
) -> dict[str | None, OperationShape]:
    """The shape of every operation in a valid ``document`` (by name; None if anonymous).

    :class:`QueryTooDeep` when an operation nests deeper than ``max_depth`` (measured with
    each fragment once, before anything is copied), :class:`QueryTooComplex` when its cost
    tree would hold more than ``max_nodes`` selections with the fragments spread in.
    """
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    depths: dict[str, int] = {}
    root_memo: dict[str, tuple[int, frozenset[str]]] = {}
    shapes: dict[str | None, OperationShape] = {}
    for definition in document.definitions:
        if not isinstance(definition, OperationDefinitionNode):
            continue
        depth = _depth(definition.selection_set, fragments, depths, frozenset())
        if max_depth is not None and depth > max_depth:
            raise QueryTooDeep()
        root_fields, root_names = _root_fields(definition.selection_set, fragments, root_memo, frozenset())
        root_type = schema.get_root_type(definition.operation)
        compiler = _Compiler(schema, fragments, max_nodes)
        _, roots = compiler.walk(root_type, definition.selection_set, frozenset())
        shapes[definition.name.value if definition.name else None] = OperationShape(
            operation=definition.operation,
            depth=depth,
            root_fields=root_fields,
            auth_mutations=sum(1 for node in roots if declared(node.graphql_field, AuthMutation) is not None)
            if definition.operation is OperationType.MUTATION else 0,
            introspects=not root_names.isdisjoint(_INTROSPECTION_ROOTS),
            expensive=compiler.expensive,
            roots=roots,
        )
    return shapes


def _depth(selection_set: SelectionSetNode, fragments: dict[str, FragmentDefinitionNode], memo: dict[str, int],
           visiting: frozenset[str]) -> int:
    """How deep fields nest below ``selection_set`` (``memo``: each fragment's depth, so
    a fragment spread many times is measured once)."""
    depth = 0
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            below = _depth(selection.selection_set, fragments, memo, visiting) if selection.selection_set else 0
            depth = max(depth, below + 1)
        elif isinstance(selection, InlineFragmentNode):
            depth = max(depth, _depth(selection.selection_set, fragments, memo, visiting))
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            if fragment is None or name in visiting:
                continue  # validation reports unknown or cyclic fragments
            if name not in memo:
                memo[name] = _depth(fragment.selection_set, fragments, memo, visiting | {name})
            depth = max(depth, memo[name])
    return depth


def _root_fields(selection_set: SelectionSetNode, fragments: dict[str, FragmentDefinitionNode],
                 memo: dict[str, tuple[int, frozenset[str]]], visiting: frozenset[str]) -> tuple[int, frozenset[str]]:
    """How many root field selections there are (aliases and fragment copies each count
    once) and their field names; each fragment is counted once (``memo``)."""
    count = 0
    names: set[str] = set()
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            if selection.name.value != "__typename":
                count += 1
                names.add(selection.name.value)
            continue
        if isinstance(selection, InlineFragmentNode):
            inner_count, inner_names = _root_fields(selection.selection_set, fragments, memo, visiting)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            if fragment is None or name in visiting:
                continue
            if name not in memo:
                memo[name] = _root_fields(fragment.selection_set, fragments, memo, visiting | {name})
            inner_count, inner_names = memo[name]
        else:
            continue
        count += inner_count
        names |= inner_names
    return count, frozenset(names)


# Fields of one response name with sub-selections in one selection set, fragments
# included: validation compares them pairwise (0.7 s for 300 repeated `viewer { name }`),
# while a real screen repeats a name a handful of times at most.
MAX_REPEATED_SELECTIONS = 30
# Fragments spread in, an operation may select this many times the fields a document may
# write (SHUIWU_GRAPHQL_MAX_FIELDS): a screen reuses its fragments a few times, while
# fragments spread twice at each level double per level.
EXPANSION_PER_WRITTEN_FIELD = 20


class DocumentSize(NamedTuple):
    fields: int  # field selections written
    repeated: int  # the most selections with sub-selections sharing one response name in one set
    spread: int  # field selections of the operations with every fragment spread in


def document_size(document: DocumentNode) -> DocumentSize:
    """How much a document selects (see :class:`DocumentSize`; fragments spread in for
    ``repeated`` and ``spread``). Linear in the document, each fragment measured once,
    for use before validation."""
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    memo: dict[str, Counter[str]] = {}
    spread_memo: dict[str, int] = {}

    def keys(selection_set: SelectionSetNode, visiting: frozenset[str]) -> Counter[str]:
        counted: Counter[str] = Counter()
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                if selection.selection_set is not None:
                    counted[(selection.alias or selection.name).value] += 1
            elif isinstance(selection, InlineFragmentNode):
                counted.update(keys(selection.selection_set, visiting))
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = fragments.get(name)
                if fragment is None or name in visiting:
                    continue
                if name not in memo:
                    memo[name] = keys(fragment.selection_set, visiting | {name})
                counted.update(memo[name])
        return counted

    def spread(selection_set: SelectionSetNode, visiting: frozenset[str]) -> int:
        total = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                total += 1 + (spread(selection.selection_set, visiting) if selection.selection_set else 0)
            elif isinstance(selection, InlineFragmentNode):
                total += spread(selection.selection_set, visiting)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = fragments.get(name)
                if fragment is None or name in visiting:
                    continue
                if name not in spread_memo:
                    spread_memo[name] = spread(fragment.selection_set, visiting | {name})
                total += spread_memo[name]
        return total

    fields = repeated = 0
    stack: list[Any] = [d.selection_set for d in document.definitions if hasattr(d, "selection_set")]
    while stack:
        selection_set = stack.pop()
        if selection_set is None:
            continue
        repeated = max(repeated, max(keys(selection_set, frozenset()).values(), default=0))
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                fields += 1
                stack.append(selection.selection_set)
            elif isinstance(selection, InlineFragmentNode):
                stack.append(selection.selection_set)
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    return DocumentSize(fields, repeated, sum(spread(d.selection_set, frozenset()) for d in operations))


def _page_size(node: CostNode, arguments: dict[str, Any]) -> int:
    sizes = [arguments.get(name) for name in _SIZE_ARGUMENTS]
    given = [size for size in sizes if isinstance(size, int)]
    if not given:
        return DEFAULT_PAGE_SIZE
    if max(given) > MAX_PAGE_SIZE:
        raise PageSizeExceeded()
    return max(0, max(given))


def _cost_of(nodes: list[CostNode], variables: VariableValues, multiplier: int, page: int | None) -> int:
    total = 0
    for node in nodes:
        arguments: dict[str, Any] = {}
        if node.needs_arguments:
            try:
                arguments = get_argument_values(node.graphql_field, node.node, variables)
            except GraphQLError:
                arguments = {}  # execution reports the bad argument
        weight = node.cost.weight_for(arguments) if node.cost is not None else 0
        total += multiplier * (1 + weight)
        below = _page_size(node, arguments) if node.sizes_page else page
        factor = 1
        if node.is_edges:
            factor, below = (below if below is not None else DEFAULT_PAGE_SIZE), None
        elif node.is_list:
            items = node.cost.items_for(arguments) if node.cost is not None else None
            factor = items if items is not None else DEFAULT_LIST_ITEMS
        if node.children:
            total += _cost_of(node.children, variables, multiplier * factor, below)
    return total


class QueryTooDeep(BadUserInput):
    code = ErrorCode.QUERY_TOO_DEEP
    message = "查询嵌套层数超过上限"
    message_en = "Query nesting is deeper than allowed"


class QueryTooComplex(BadUserInput):
    code = ErrorCode.QUERY_TOO_COMPLEX
    message = "查询代价超过上限, 请减少字段或每页条数"
    message_en = "Query is too costly: select fewer fields or smaller pages"


class TooManyRootFields(QueryTooComplex):
    message = "一个请求的顶层字段 (含别名) 过多"
    message_en = "Too many root fields (aliases included) in one request"


class DocumentTooLarge(QueryTooComplex):
    message = "查询文档的字段过多"
    message_en = "The query document selects too many fields"


class TooManyAuthMutations(RateLimited):
    message = "一个请求最多包含一个登录类操作 (登录、验证码、令牌、改密码)"
    message_en = "At most one authentication mutation (login, code, token, password) per request"


class IntrospectionNeedsLogin(NotAuthenticated):
    message = "登录后才能查询 API 结构"
    message_en = "Log in to introspect the schema"


class IntrospectionDisabled(Forbidden):
    message = "本服务关闭了 API 结构查询"
    message_en = "Introspection is disabled on this server"


class AdmissionRefused(RateLimited):
    message = "服务器正忙于其他耗时查询, 请稍后再试"
    message_en = "The server is busy with other expensive queries, try again shortly"


class Admission:
    """At most ``per_process`` expensive requests at once, and ``per_principal`` for one
    caller (a principal, or an address for anonymous callers). A request that cannot get
    both slots within ``wait_s`` is refused with RATE_LIMITED rather than queued forever.

    One event loop per process, so plain asyncio semaphores suffice; a caller's semaphore
    exists only while someone holds or waits for it.
    """

    def __init__(self, *, per_process: int, per_principal: int, wait_s: float) -> None:
        self.per_process = per_process
        self.per_principal = per_principal
        self.wait_s = wait_s
        self._process = asyncio.Semaphore(per_process)
        self._callers: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}
        self.waiting = 0

    @property
    def principals(self) -> int:
        return len(self._callers)

    @contextlib.asynccontextmanager
    async def admit(self, key: str) -> AsyncIterator[None]:
        # From its wait on, an expensive request is not foreground work: admitted, it gives
        # the loop to the requests that are (backend.slicing).
        with LOOP_SHARE.admitted_work():
            async with self._slots(key):
                yield

    @contextlib.asynccontextmanager
    async def _slots(self, key: str) -> AsyncIterator[None]:
        deadline = asyncio.get_running_loop().time() + self.wait_s
        semaphore, users = self._callers.setdefault(key, (asyncio.Semaphore(self.per_principal), [0]))
        users[0] += 1
        try:
            self.waiting += 1
            try:
                await _acquire(semaphore, deadline)
                try:
                    await _acquire(self._process, deadline)
                except BaseException:
                    semaphore.release()
                    raise
            finally:
                self.waiting -= 1
            try:
                yield
            finally:
                self._process.release()
                semaphore.release()
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._callers[key]


async def _acquire(semaphore: asyncio.Semaphore, deadline: float) -> None:
    if not semaphore.locked():
        await semaphore.acquire()  # free and nobody queued: no timer needed
        return
    try:
        async with asyncio.timeout_at(deadline):
            await semaphore.acquire()
    except TimeoutError:
        raise AdmissionRefused() from None


def admission_key(principal: Any, ip: str | None) -> str:
    """Who waits for a slot: the principal (``staff:7``), else the client address as the
    throttles count it (an IPv6 address by its /64)."""
    if principal is not None:
        return f"{principal.kind.value}:{principal.id}"
    return f"ip:{source_of(ip) or 'unknown'}"


# The longest span a weight counts: ranges are bounded by their fields (366 days for daily
# series, about ten years otherwise), so a longer one is refused by the resolver anyway.
MAX_WEIGHED_DAYS = 3700


def span_days(arguments: dict[str, Any], start: str = "from", end: str = "to") -> int:
    """Days between two date or datetime arguments, within [1, MAX_WEIGHED_DAYS]."""
    days = (arguments[end] - arguments[start]).days
    return max(1, min(int(days), MAX_WEIGHED_DAYS))
