"""A compiled fast path for long lists of plain objects.

graphql-core resolves every field of every row through the generic machinery (resolver
wrapper, info object, path, completion by type), which costs ~2 µs a field: 17 ms for
1000 rows of a handful of fields before any database work. Most list screens, though,
select only plain data from each row. For those we compile the selection once per cached
document into nested Python closures that build the response dicts directly.

A selection set is compiled only when every field in it is one of:

- a plain attribute (a strawberry field without a resolver, extension or permission);
- a synchronous resolver that takes nothing but ``self``;
- a relation the list resolver prefetched (``metadata={"prefetched": "<attribute>"}``;
  the attribute holds the value, or :data:`NOT_PREFETCHED`);
- ``__typename``;

with no arguments, no directives, no aliases colliding, and only concrete object, enum,
scalar and list types below it. Anything else, and anything surprising at run time (a
null in a non-null position, a resolver that raises or returns an awaitable, a relation
not prefetched), falls back to graphql-core for the whole list, so results and errors are
exactly what the generic path produces.

Completion runs on the event loop. A list longer than :data:`LONG_LIST` items, compiled or
not, is completed in slices (:mod:`backend.slicing`) with a yield to the loop
between them, so a 1,000-row page is many short steps instead of one long one that
stalls every other request (``/healthz`` included) until it is done.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

from graphql import (
    FieldNode,
    FragmentSpreadNode,
    GraphQLEnumType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLResolveInfo,
    GraphQLScalarType,
    InlineFragmentNode,
    SelectionSetNode,
    Undefined,
)
from graphql.pyutils import Path, gather_with_cancel
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from backend.slicing import Slices, pause


class _NotPrefetched:
    def __repr__(self) -> str:
        return "NOT_PREFETCHED"

    def __bool__(self) -> bool:
        return False


NOT_PREFETCHED: Any = _NotPrefetched()


class _Abort(Exception):
    """The row does not fit the compiled plan: let graphql-core complete the list."""


Completer = Callable[[Any], Any]
_PLAIN_TYPES = frozenset({str, int, float, bool, type(None), list, tuple, dict})
_UNCOMPILABLE = object()
# Built-in scalars whose values pass through unchanged when already of this Python type.
_EXACT_LEAF_TYPES = {"String": "_str", "ID": "_str", "Int": "_int", "Boolean": "_bool"}
# Lists longer than this are completed in slices, with a yield to the event loop between
# two (a 1,000-row page of a dozen fields through graphql-core is ~30-90 ms of CPU on
# these machines); shorter ones in one go, as before.
LONG_LIST = 100


def _leaf(serialize: Callable[[Any], Any]) -> Completer:
    def complete(value: Any) -> Any:
        if value is None:
            return None
        result = serialize(value)
        if result is Undefined or result is None:
            raise _Abort
        return result

    return complete


def _enum_serializer(enum_type: GraphQLEnumType) -> Callable[[Any], Any]:
    """Enum output by dictionary lookup (strawberry's serializer scans the members on every
    call, ~9 µs a value); unknown values go through the type's own serializer."""
    names: dict[Any, str] = {}
    for name, definition in enum_type.values.items():
        try:
            names[definition.value] = name
        except TypeError:  # an unhashable value: leave it to the slow path
            return enum_type.serialize

    def serialize(value: Any) -> Any:
        try:
            return names[value]
        except (KeyError, TypeError):
            return enum_type.serialize(value)

    return serialize


def _non_null(inner: Completer) -> Completer:
    def complete(value: Any) -> Any:
        if value is None:
            raise _Abort
        result = inner(value)
        if result is None:
            raise _Abort
        return result

    return complete


def _list_of(inner: Completer) -> Completer:
    def complete(value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, list | tuple):
            raise _Abort
        return [inner(item) for item in value]

    return complete


def _attribute(name: str) -> Callable[[Any], Any]:
    def get(obj: Any) -> Any:
        return getattr(obj, name)

    return get


def _prefetched(name: str) -> Callable[[Any], Any]:
    def get(obj: Any) -> Any:
        value = getattr(obj, name, NOT_PREFETCHED)
        if value is NOT_PREFETCHED:
            raise _Abort
        return value

    return get


def _resolver(function: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def get(obj: Any) -> Any:
        try:
            value = function(obj)
        except Exception:
            raise _Abort from None
        if type(value) not in _PLAIN_TYPES and inspect.isawaitable(value):
            if inspect.iscoroutine(value):
                value.close()
            raise _Abort
        return value

    return get


class PlanCompiler:
    """Compiles selection sets of one document (fragments resolved from it)."""

    def __init__(self, fragments: dict[str, Any]) -> None:
        self.fragments = fragments

    def value(self, graphql_type: GraphQLOutputType, selection_sets: list[SelectionSetNode]) -> Completer | None:
        if isinstance(graphql_type, GraphQLNonNull):
            inner = self.value(graphql_type.of_type, selection_sets)
            return _non_null(inner) if inner is not None else None
        if isinstance(graphql_type, GraphQLList):
            inner = self.value(graphql_type.of_type, selection_sets)
            return _list_of(inner) if inner is not None else None
        if isinstance(graphql_type, GraphQLEnumType):
            return _leaf(_enum_serializer(graphql_type))
        if isinstance(graphql_type, GraphQLScalarType):
            return _leaf(graphql_type.serialize)
        if isinstance(graphql_type, GraphQLObjectType) and selection_sets:
            return self.object(graphql_type, selection_sets)
        return None

    def _selections(self, object_type: GraphQLObjectType, selection_sets: Iterable[SelectionSetNode]) -> list[FieldNode] | None:
        fields: list[FieldNode] = []
        for selection_set in selection_sets:
            for selection in selection_set.selections:
                if selection.directives:
                    return None
                if isinstance(selection, FieldNode):
                    fields.append(selection)
                    continue
                if isinstance(selection, InlineFragmentNode):
                    condition = selection.type_condition
                    if condition is not None and condition.name.value != object_type.name:
                        return None
                    nested = self._selections(object_type, [selection.selection_set])
                elif isinstance(selection, FragmentSpreadNode):
                    details = self.fragments.get(selection.name.value)
                    definition = getattr(details, "definition", details)
                    if definition is None or definition.type_condition.name.value != object_type.name:
                        return None
                    nested = self._selections(object_type, [definition.selection_set])
                else:
                    return None
                if nested is None:
                    return None
                fields.extend(nested)
        return fields

    def object(self, object_type: GraphQLObjectType, selection_sets: list[SelectionSetNode]) -> Completer | None:
        nodes = self._selections(object_type, selection_sets)
        if nodes is None:
            return None
        # Each field becomes a few lines of a generated function: attribute access and the
        # common leaf types inline, everything else through a completer closure.
        namespace: dict[str, Any] = {"_Abort": _Abort, "_str": str, "_int": int, "_bool": bool}
        lines = ["def complete(obj):", "    if obj is None:", "        return None"]
        keys: list[str] = []
        for index, node in enumerate(nodes):
            key = node.alias.value if node.alias else node.name.value
            if key in keys or node.arguments:
                return None
            keys.append(key)
            value = f"v{index}"
            if node.name.value == "__typename":
                lines.append(f"    {value} = {object_type.name!r}")
                continue
            field = object_type.fields.get(node.name.value)
            if field is None:
                return None
            definition = field.extensions.get("strawberry-definition")
            access = self._access(definition, namespace, index)
            if access is None:
                return None
            lines.append(f"    {value} = {access}")
            if not self._complete_inline(field.type, node, value, index, namespace, lines):
                return None
        lines.append("    return {" + ", ".join(f"{key!r}: v{i}" for i, key in enumerate(keys)) + "}")
        # Safe to exec: names come from the schema and the parsed document (GraphQL names), never values.
        exec("\n".join(lines), namespace)
        completer: Completer = namespace["complete"]
        return completer

    def _access(self, field: Any, namespace: dict[str, Any], index: int) -> str | None:
        if field is None or field.extensions:
            return None
        prefetched = (field.metadata or {}).get("prefetched")
        if prefetched:
            namespace[f"g{index}"] = _prefetched(prefetched)
            return f"g{index}(obj)"
        resolver = field.base_resolver
        if resolver is None:
            if not field.python_name.isidentifier():
                return None
            return f"obj.{field.python_name}"
        reserved = [name for name, parameter in resolver.reserved_parameters.items() if parameter is not None]
        if resolver.is_async or resolver.arguments or [str(getattr(r, "name", "")) for r in reserved] != ["self"]:
            return None
        namespace[f"g{index}"] = _resolver(resolver.wrapped_func)
        return f"g{index}(obj)"

    def _complete_inline(
        self, graphql_type: Any, node: FieldNode, value: str, index: int, namespace: dict[str, Any], lines: list[str]
    ) -> bool:
        non_null = isinstance(graphql_type, GraphQLNonNull)
        named = graphql_type.of_type if non_null else graphql_type
        if non_null:
            lines.append(f"    if {value} is None:\n        raise _Abort")
        exact = _EXACT_LEAF_TYPES.get(getattr(named, "name", "")) if isinstance(named, GraphQLScalarType) else None
        if exact is not None:
            # Already the wire type: keep it; anything else goes through the scalar's own
            # serializer (which coerces, or raises and sends the list to the slow path).
            namespace[f"s{index}"] = named.serialize
            check = f"type({value}) is {exact}"
            if exact == "_int":
                check += f" and -2147483648 <= {value} <= 2147483647"
            lines.append(f"    if {value} is not None and not ({check}):\n        {value} = s{index}({value})")
            return True
        completer = self.value(named, [node.selection_set] if node.selection_set else [])
        if completer is None:
            return False
        namespace[f"c{index}"] = completer
        lines.append(f"    {value} = c{index}({value})")
        if non_null:
            lines.append(f"    if {value} is None:\n        raise _Abort")
        return True


class FastExecutionContext(StrawberryGraphQLCoreExecutionContext):
    """graphql-core's execution context with compiled completion of plain lists.

    Plans are cached on the request context's ``plans`` dict, which the endpoint keeps
    with the cached document, so a plan lives exactly as long as its document.
    """

    def complete_list_value(  # type: ignore[override]
        self,
        return_type: GraphQLList[GraphQLOutputType],
        field_details_list: Any,
        info: GraphQLResolveInfo,
        path: Path,
        result: Any,
        position_context: Any,
    ) -> Any:
        if isinstance(result, list | tuple) and result:
            plans: dict[Any, Any] | None = getattr(self.context_value, "plans", None)
            if plans is not None:
                # Every merged field node: one fragment node can be merged with different
                # siblings in different places of the same document.
                key = (tuple(id(details.node) for details in field_details_list), id(return_type))
                plan: Any = plans.get(key)
                if plan is None:
                    selection_sets = [d.node.selection_set for d in field_details_list if d.node.selection_set]
                    plan = PlanCompiler(self.fragments).value(return_type.of_type, selection_sets) or _UNCOMPILABLE
                    plans[key] = plan
                if plan is not _UNCOMPILABLE:
                    if len(result) > LONG_LIST:
                        return self._plan_in_slices(plan, return_type, field_details_list, info, path, result,
                                                    position_context)
                    try:
                        return [plan(item) for item in result]
                    except Exception:  # any surprise: graphql-core redoes the whole list
                        pass
        return super().complete_list_value(return_type, field_details_list, info, path, result, position_context)

    async def _plan_in_slices(
        self,
        plan: Completer,
        return_type: GraphQLList[GraphQLOutputType],
        field_details_list: Any,
        info: GraphQLResolveInfo,
        path: Path,
        items: list[Any] | tuple[Any, ...],
        position_context: Any,
    ) -> Any:
        """A compiled list in slices; any surprise, and graphql-core redoes the whole list."""
        completed: list[Any] = []
        slices = Slices()
        try:
            for item in items:
                if slices.over():
                    await pause()
                completed.append(plan(item))
        except Exception:
            redone = super().complete_list_value(return_type, field_details_list, info, path, items, position_context)
            return await redone if self.is_awaitable(redone) else redone
        return completed

    def complete_iterable_value(  # type: ignore[override]
        self,
        item_type: GraphQLOutputType,
        field_details_list: Any,
        info: GraphQLResolveInfo,
        path: Path,
        items: Iterable[Any],
        position_context: Any,
    ) -> Any:
        if not isinstance(items, list | tuple) or len(items) <= LONG_LIST or self.get_stream_usage(field_details_list, path):
            return super().complete_iterable_value(item_type, field_details_list, info, path, items, position_context)
        return self._complete_in_slices(item_type, field_details_list, info, path, items, position_context)

    async def _complete_in_slices(
        self,
        item_type: GraphQLOutputType,
        field_details_list: Any,
        info: GraphQLResolveInfo,
        path: Path,
        items: list[Any] | tuple[Any, ...],
        position_context: Any,
    ) -> list[Any]:
        """graphql-core's completion of a list (same per-item steps, same errors), with a
        yield to the event loop between slices. Awaitable items are gathered together at the
        end, as graphql-core does, so their DataLoader keys still go out in one batch."""
        completed: list[Any] = []
        awaitable_indices: list[int] = []
        slices = Slices()
        try:
            for index, item in enumerate(items):
                if slices.over():
                    await pause()
                item_path = path.add_key(index, None)
                if self.is_awaitable(item):
                    completed.append(self.complete_awaitable_list_item_value(
                        item, item_type, field_details_list, info, item_path, position_context))
                    awaitable_indices.append(index)
                elif self.complete_list_item_value(
                    item, completed, item_type, field_details_list, info, item_path, position_context
                ):
                    awaitable_indices.append(index)
        except BaseException:
            # As graphql-core does: the items already started settle in the background.
            if awaitable_indices:
                self.settle_in_background([completed[index] for index in awaitable_indices])
            raise
        if awaitable_indices:
            awaited = await gather_with_cancel(*(completed[index] for index in awaitable_indices))
            for index, value in zip(awaitable_indices, awaited, strict=True):
                completed[index] = value
        return completed
