"""The one meaning of data scope (backend.auth.scope): ``None`` is the whole tree, ``[]``
is nothing, and a resident is reached by household, never by area."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.models import Area
from backend.auth.models import PrincipalKind
from backend.auth.principal import Principal
from backend.auth.scope import Reach, covers_whole_tree, in_scope, path_in_scope, reach_of, unit_in_scope
from tests.factories import AreaTree, make_area_tree


async def _areas_in(session: AsyncSession, tree: AreaTree, patterns: list[str] | None) -> set[int]:
    mine = [tree.company.id, tree.east.id, tree.west.id, tree.east_community.id, tree.west_community.id]
    rows = await session.execute(select(Area.id).where(Area.id.in_(mine), in_scope(Area.path, patterns)))  # type: ignore[call-overload,attr-defined]
    return set(rows.scalars())


async def test_none_is_the_whole_tree_and_an_empty_scope_is_nothing(session: AsyncSession) -> None:
    tree = await make_area_tree(session)

    assert await _areas_in(session, tree, None) == {tree.company.id, tree.east.id, tree.west.id,
                                                    tree.east_community.id, tree.west_community.id}
    assert await _areas_in(session, tree, []) == set()
    assert await _areas_in(session, tree, [tree.east.path + "%"]) == {tree.east.id, tree.east_community.id}
    assert await covers_whole_tree(session, None)
    assert not await covers_whole_tree(session, [])
    assert await unit_in_scope(session, None, None)
    assert not await unit_in_scope(session, tree.east.id, [])


def test_the_python_twin_agrees() -> None:
    assert path_in_scope("/1/2/", None)
    assert not path_in_scope("/1/2/", [])
    assert path_in_scope("/1/2/", ["/1/%"])
    assert not path_in_scope("/3/", ["/1/%"])


def test_a_resident_reaches_their_households_and_no_area() -> None:
    resident = Principal(kind=PrincipalKind.resident, id=7, name="张伟", household_ids=(3, 5))

    reach = reach_of(resident)

    assert reach == Reach(scope_patterns=[], household_ids=[3, 5])
    assert reach.is_resident
    assert reach.area_patterns() is None  # areas do not narrow a resident: households do


@pytest.mark.parametrize(("scope_paths", "patterns"), [(("/1/4/",), ["/1/4/%"]), ((), [])])
def test_staff_reach_their_area_scope_and_no_scope_is_nothing(scope_paths: tuple[str, ...], patterns: list[str]) -> None:
    staff = Principal(kind=PrincipalKind.staff, id=1, name="王五", scope_paths=scope_paths)

    reach = reach_of(staff)

    assert not reach.is_resident
    assert reach.area_patterns() == patterns


def test_a_system_reach_is_unrestricted() -> None:
    assert Reach(scope_patterns=None).area_patterns() is None
