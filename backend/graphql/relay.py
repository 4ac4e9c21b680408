"""Global object ids (``base64("Type:pk")``) and the ``node(id:)`` registry.

Every object type with an id implements ``Node``. A domain registers, per type, the
function that fetches one object *within the caller's scope*: ``node(id:)`` applies the
same data scope as the lists, so an id outside it is NOT_FOUND.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import strawberry

from backend.errors import NotFound

NodeFetcher = Callable[[Any, int], Awaitable[Any | None]]


@strawberry.interface(description="An object with a global id.")
class Node:
    id: strawberry.ID


def encode_id(type_name: str, pk: int) -> strawberry.ID:
    # binascii directly: this runs for every row of every list.
    return binascii.b2a_base64(f"{type_name}:{pk}".encode(), newline=False).decode()  # type: ignore[return-value]


_MAX_PK = 2**63 - 1  # BIGINT


def split_id(global_id: str, *, field: str = "id") -> tuple[str, int]:
    """Type name and primary key of a global id; NOT_FOUND for anything malformed,
    including keys no BIGINT column can hold."""
    try:
        kind, _, pk = base64.b64decode(global_id.encode(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise NotFound(field=field) from None
    if not (pk.isascii() and pk.isdigit()) or len(pk) > 19 or int(pk) > _MAX_PK:
        raise NotFound(field=field)
    return kind, int(pk)


def decode_id(global_id: str, type_name: str | None = None, *, field: str = "id") -> int:
    """The primary key inside ``global_id``; NOT_FOUND for malformed or wrong-type ids."""
    kind, pk = split_id(global_id, field=field)
    if type_name is not None and kind != type_name:
        raise NotFound(field=field)
    return pk


async def fetch_node(context: Any, global_id: str, fetchers: Mapping[str, NodeFetcher]) -> Any:
    """The object ``global_id`` names, by its type's fetcher (the schema's own map: the
    root schema collects each domain's ``NODES``); NOT_FOUND for anything else."""
    kind, pk = split_id(global_id)
    fetcher = fetchers.get(kind)
    if fetcher is None:
        raise NotFound(field="id")
    found = await fetcher(context, pk)
    if found is None:
        raise NotFound(field="id")
    return found
