"""Depth and cost limits, checked before execution.

The depth of a document never changes, so it is computed once and cached with the parsed
document. The cost depends on ``first``/``last``, which may be variables: the document is
compiled once into a small tree and the tree is evaluated with *this* request's variables
every time (a cost is never cached across requests).

Cost model: every selected field costs 1, times the page sizes of the connections above
it; a connection asked without a size counts the default page size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
)

from backend.errors import BadUserInput, ErrorCode, PageSizeExceeded
from backend.graphql.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE

_SIZE_ARGUMENTS = ("first", "last")


@dataclass(slots=True)
class CostNode:
    # None: not a connection; int: a literal size; str: a variable's name.
    size: int | str | None = None
    is_connection: bool = False
    children: list[CostNode] = field(default_factory=list)


@dataclass(slots=True)
class OperationShape:
    depth: int
    roots: list[CostNode]
    # Integer defaults of the operation's variables (``query($n: Int = 1000)``): a
    # variable the request leaves out costs its default, not the default page size.
    defaults: dict[str, int] = field(default_factory=dict)

    def cost(self, variables: dict[str, Any]) -> int:
        return cost_of(self.roots, {**self.defaults, **variables} if self.defaults else variables)


def _size_of(node: FieldNode) -> tuple[bool, int | str | None]:
    for argument in node.arguments or ():
        if argument.name.value in _SIZE_ARGUMENTS:
            value = argument.value
            if isinstance(value, IntValueNode):
                return True, int(value.value)
            if isinstance(value, VariableNode):
                return True, value.name.value
            return True, None
    return False, None


def _walk(
    selection_set: SelectionSetNode | None,
    fragments: dict[str, FragmentDefinitionNode],
    visiting: frozenset[str],
) -> tuple[int, list[CostNode]]:
    if selection_set is None:
        return 0, []
    depth = 0
    nodes: list[CostNode] = []
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            child_depth, children = _walk(selection.selection_set, fragments, visiting)
            is_connection, size = _size_of(selection)
            if not is_connection and selection.name.value.endswith("s") and selection.selection_set is not None:
                # A list-looking field without a size still pages by default when it is a
                # connection; edges is where the multiplier applies.
                is_connection = any(
                    isinstance(child, FieldNode) and child.name.value == "edges"
                    for child in selection.selection_set.selections
                )
            nodes.append(CostNode(size=size, is_connection=is_connection, children=children))
            depth = max(depth, child_depth + 1)
        elif isinstance(selection, InlineFragmentNode):
            child_depth, children = _walk(selection.selection_set, fragments, visiting)
            nodes.extend(children)
            depth = max(depth, child_depth)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            if fragment is None or name in visiting:
                continue  # validation reports unknown or cyclic fragments
            child_depth, children = _walk(fragment.selection_set, fragments, visiting | {name})
            nodes.extend(children)
            depth = max(depth, child_depth)
    return depth, nodes


def operation_shapes(document: DocumentNode) -> dict[str | None, OperationShape]:
    """Depth and cost tree of every operation in ``document`` (by name; None if anonymous)."""
    fragments = {
        definition.name.value: definition
        for definition in document.definitions
        if isinstance(definition, FragmentDefinitionNode)
    }
    shapes: dict[str | None, OperationShape] = {}
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            depth, roots = _walk(definition.selection_set, fragments, frozenset())
            defaults = {
                variable.variable.name.value: int(variable.default_value.value)
                for variable in definition.variable_definitions or ()
                if isinstance(variable.default_value, IntValueNode)
            }
            shapes[definition.name.value if definition.name else None] = OperationShape(depth, roots, defaults)
    return shapes


def _resolve_size(size: int | str | None, variables: dict[str, Any]) -> int:
    if isinstance(size, str):
        value = variables.get(size)
        size = value if isinstance(value, int) and not isinstance(value, bool) else None
    if size is None:
        return DEFAULT_PAGE_SIZE
    if size > MAX_PAGE_SIZE:
        raise PageSizeExceeded()
    return max(size, 0)


def cost_of(roots: list[CostNode], variables: dict[str, Any]) -> int:
    """The cost of an operation tree under these variables (page sizes checked on the way)."""

    def visit(nodes: list[CostNode], multiplier: int) -> int:
        total = 0
        for node in nodes:
            total += multiplier
            factor = _resolve_size(node.size, variables) if node.is_connection else 1
            total += visit(node.children, multiplier * factor)
        return total

    return visit(roots, 1)


class QueryTooDeep(BadUserInput):
    code = ErrorCode.QUERY_TOO_DEEP
    message = "查询嵌套层数超过上限"
    message_en = "Query nesting is deeper than allowed"


class QueryTooComplex(BadUserInput):
    code = ErrorCode.QUERY_TOO_COMPLEX
    message = "查询代价超过上限, 请减少字段或每页条数"
    message_en = "Query is too costly: select fewer fields or smaller pages"
