"""``shuiwu demo load``: deterministic, idempotent, and shaped like a real utility."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.demo import load_demo


async def _snapshot(session: AsyncSession) -> tuple[int, int, int, list[tuple[object, ...]]]:
    households = (await session.execute(text("SELECT count(*) FROM households WHERE account_no LIKE '01%'"))).scalar_one()
    areas = (await session.execute(text("SELECT count(*) FROM areas"))).scalar_one()
    owners = (await session.execute(text(
        "SELECT count(*) FROM households h WHERE NOT EXISTS "
        "(SELECT 1 FROM household_owners o WHERE o.household_id = h.id AND o.valid_to IS NULL)"
    ))).scalar_one()
    sample = [tuple(row) for row in await session.execute(text(
        "SELECT h.account_no, h.name, h.phone, h.address, h.customer_type, a.kind FROM households h "
        "JOIN areas a ON a.id = h.area_id WHERE account_no IN ('0100000001', '0100000500', '0100003000') ORDER BY 1"
    ))]
    return households, areas, owners, sample


async def test_demo_load_scales_areas_is_idempotent_and_realistic(session: AsyncSession) -> None:
    await load_demo(session, households=3000, seed=7)
    first = await _snapshot(session)
    await load_demo(session, households=3000, seed=7)
    second = await _snapshot(session)

    assert first == second
    households, _, owners_missing, sample = first
    assert households == 3000 and owners_missing == 0
    assert [row[0] for row in sample] == ["0100000001", "0100000500", "0100003000"]
    for _, name, phone, address, customer_type, kind in sample:
        assert 2 <= len(str(name)) <= 3
        assert str(phone).startswith("1") and len(str(phone)) == 11
        assert "号楼" in str(address) and "单元" in str(address) and str(address).endswith("室")
        assert customer_type in ("residential", "non_residential", "special")
        assert kind == "unit"
    mix = dict((await session.execute(text("SELECT customer_type, count(*) FROM households GROUP BY 1"))).all())
    assert mix["residential"] > 2500 and mix.get("non_residential", 0) > 50
