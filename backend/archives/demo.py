"""The archives' demo step (backend.archives.domain): the area tree, households at
scale and their devices, loaded idempotently.

Every object is found by its natural key before it is created, so loading twice changes
nothing.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.models import Area, AreaKind, StationKind
from backend.archives.service import StationChanges, attach_instrument, create_area, create_station, install_meter
from backend.db import copy_into
from backend.domain import DemoPlan

COMPANY = "示范水务有限公司"
DISTRICTS = {
    "城东片区": ["翠湖小区", "阳光花园", "锦绣家园"],
    "城西片区": ["西山名苑", "金桂小区"],
    "城南片区": ["南湖新村", "滨江一号", "幸福里"],
}
SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任"
    "沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
)
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华玉兰萍红鹏飞建华志强海燕晓东丹丹文博雨欣子涵浩然梓轩"

async def _area(session: AsyncSession, name: str, kind: AreaKind, parent: Area | None) -> Area:
    statement = select(Area).where(Area.name == name, Area.kind == kind)  # type: ignore[arg-type]
    statement = statement.where(Area.parent_id == (parent.id if parent else None)) if parent else statement.where(Area.parent_id.is_(None))  # type: ignore[union-attr,arg-type]
    found = (await session.execute(statement)).scalars().first()
    return found or await create_area(session, name=name, kind=kind, parent_id=parent.id if parent else None)



async def load_archives(session: AsyncSession, plan: DemoPlan) -> None:
    """The company, its districts, communities and buildings, ``plan.households``
    households and their meters and concentrators. Leaves the ids later steps need in
    ``plan.areas``: ``company`` and ``east`` (城东片区, the demo operators' district)."""
    rng = random.Random(plan.seed)
    plan.progress("区域")
    company = await _area(session, COMPANY, AreaKind.company, None)
    assert company.id is not None
    buildings: list[Area] = []
    district_rows: dict[str, Area] = {}
    for district_name, communities in DISTRICTS.items():
        district = district_rows[district_name] = await _area(session, district_name, AreaKind.district, company)
        for community_name in communities:
            community = await _area(session, community_name, AreaKind.community, district)
            for number in range(1, 5):
                buildings.append(await _area(session, f"{number}号楼", AreaKind.building, community))
    plan.areas["company"] = company.id
    east = district_rows["城东片区"].id
    assert east is not None
    plan.areas["east"] = east
    await _load_households(session, households=plan.households, rng=rng, named_buildings=buildings,
                           progress=plan.progress)
    await _load_devices(session, seed=plan.seed, company=company, progress=plan.progress)


# --------------------------------------------------------------------------- households at scale

# A unit (单元) of 6 floors × 2 flats; 3 units a building; up to 24 buildings a community.
FLOORS, FLATS, UNITS_PER_BUILDING, MAX_BUILDINGS = 6, 2, 3, 24
PER_UNIT = FLOORS * FLATS
COMMUNITIES_PER_EXTRA_DISTRICT = 60
EXTRA_DISTRICTS = ("城北片区", "高新片区", "经开片区", "滨江片区", "江南片区", "湖墅片区", "临平片区", "钱塘片区", "萧山片区",
                   "余杭片区", "富阳片区", "临安片区", "桐庐片区", "淳安片区", "建德片区", "下沙片区", "九堡片区", "转塘片区")
PLACE = ("翠湖", "阳光", "锦绣", "金桂", "南湖", "滨江", "幸福", "紫荆", "碧水", "绿城", "香樟", "银杏", "枫林", "东方", "世纪",
         "华府", "御景", "君悦", "天和", "瑞丰", "馨园", "春晓", "秋实", "丽都", "盛世", "新城", "长青", "明珠", "嘉禾", "荷塘")
ESTATE = ("花园", "小区", "家园", "新村", "名苑", "雅苑", "公寓", "佳苑", "府", "苑")
MOBILE_PREFIXES = ("130", "131", "132", "133", "135", "136", "137", "138", "139", "150", "151", "152", "155", "156", "157",
                   "158", "159", "166", "177", "180", "181", "182", "183", "185", "186", "187", "188", "189", "191", "199")
NON_RESIDENTIAL = ("商业", "餐饮", "工业", "学校", "机关", "医院", "酒店")
SPECIAL = ("洗浴", "洗车", "纯净水")
COPY_CHUNK = 100_000
OPENED_FROM = datetime(2019, 1, 1, 8, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
OPENED_SPAN = timedelta(days=6 * 365)


def _community_name(index: int) -> str:
    """A stable name for the ``index``-th generated community (phases past the word list)."""
    word = PLACE[index % len(PLACE)] + ESTATE[(index // len(PLACE)) % len(ESTATE)]
    phase = index // (len(PLACE) * len(ESTATE))
    return word if phase == 0 else f"{word}{phase + 1}期"


async def _children(session: AsyncSession, kind: AreaKind, wanted: Sequence[tuple[int, str, str, str | None]],
                    has_code: bool) -> list[tuple[int, str]]:
    """Areas of ``kind`` named ``(parent_id, parent_path, name, code)``, created set-based
    where missing (found by parent and name, so loading twice creates nothing).
    Returns ``(id, path)`` in the order asked."""
    if not wanted:
        return []
    parents = sorted({parent_id for parent_id, _, _, _ in wanted})
    rows = await session.execute(
        text("SELECT parent_id, name, id, path FROM areas WHERE kind = :kind AND parent_id = ANY(CAST(:parents AS bigint[]))"),
        {"kind": kind.value, "parents": parents},
    )
    found = {(parent_id, name): (area_id, path) for parent_id, name, area_id, path in rows}
    missing = [w for w in wanted if (w[0], w[2]) not in found]
    if missing:
        ids = (await session.execute(
            text("SELECT nextval(pg_get_serial_sequence('areas', 'id')) FROM generate_series(1, :n)"), {"n": len(missing)}
        )).scalars().all()
        records = []
        for area_id, (parent_id, parent_path, name, code) in zip(ids, missing, strict=True):
            path = f"{parent_path}{area_id}/"
            found[(parent_id, name)] = (area_id, path)
            records.append((area_id, parent_id, name, kind.value, path, *((code,) if has_code else ())))
        columns = ["id", "parent_id", "name", "kind", "path", *(["code"] if has_code else [])]
        await copy_into(session, "areas", columns=columns, records=records)
    return [found[(parent_id, name)] for parent_id, _, name, _ in wanted]


async def _layout(session: AsyncSession, *, households: int, named_buildings: list[Area],
                  has_code: bool) -> list[tuple[int, str]]:
    """Units (id, address prefix) for ``households``: the named communities first, more
    communities (and districts) as the count grows; the same count gives the same tree."""
    per_building = UNITS_PER_BUILDING * PER_UNIT
    buildings_per_community = min(MAX_BUILDINGS, max(4, math.ceil(households / per_building / 8)))
    communities_needed = max(0, math.ceil(households / (per_building * buildings_per_community)) - 8)
    company = (await session.execute(select(Area).where(Area.kind == AreaKind.company, Area.name == COMPANY))).scalar_one()  # type: ignore[arg-type]
    assert company.id is not None
    extra_districts = math.ceil(communities_needed / COMMUNITIES_PER_EXTRA_DISTRICT)
    district_names = [EXTRA_DISTRICTS[d % len(EXTRA_DISTRICTS)] + ("" if d < len(EXTRA_DISTRICTS) else f"{d // len(EXTRA_DISTRICTS) + 1}")
                      for d in range(extra_districts)]
    districts = await _children(session, AreaKind.district, [
        (company.id, company.path, name, f"D{4 + d:02d}") for d, name in enumerate(district_names)
    ], has_code)
    communities = await _children(session, AreaKind.community, [
        (districts[g // COMMUNITIES_PER_EXTRA_DISTRICT][0], districts[g // COMMUNITIES_PER_EXTRA_DISTRICT][1], _community_name(g),
         f"D{4 + g // COMMUNITIES_PER_EXTRA_DISTRICT:02d}C{g:04d}")
        for g in range(communities_needed)
    ], has_code)
    names = {area.id: area.name for area in named_buildings}
    # Community of each named building, for addresses.
    parents = {area.id: area.parent_id for area in named_buildings}
    parent_rows = await session.execute(text("SELECT id, name FROM areas WHERE id = ANY(CAST(:ids AS bigint[]))"),
                                        {"ids": sorted({p for p in parents.values() if p is not None})})
    parent_names: dict[int, str] = {row[0]: row[1] for row in parent_rows}
    building_wanted: list[tuple[int, str, str, str | None]] = []
    building_labels: list[str] = []
    for community_index, (community_id, community_path) in enumerate(communities):
        name = _community_name(community_index)
        for number in range(1, buildings_per_community + 1):
            building_wanted.append((community_id, community_path, f"{number}号楼", f"C{community_index:04d}B{number:02d}"))
            building_labels.append(f"{name}{number}号楼")
    # The named communities keep their four named buildings and grow more the same way.
    named_communities = sorted({(b.parent_id, b.path.rsplit("/", 2)[0] + "/") for b in named_buildings if b.parent_id}, key=lambda c: c[1])
    for community_id, community_path in named_communities:
        assert community_id is not None
        for number in range(5, buildings_per_community + 1):
            building_wanted.append((community_id, community_path, f"{number}号楼", None))
            building_labels.append(f"{parent_names[community_id]}{number}号楼")
    grown = await _children(session, AreaKind.building, building_wanted, has_code)
    all_buildings = [(area.id, area.path, f"{parent_names[area.parent_id]}{names[area.id]}") for area in named_buildings
                     if area.id is not None and area.parent_id is not None]
    all_buildings += [(area_id, path, label) for (area_id, path), label in zip(grown, building_labels, strict=True)]
    all_buildings.sort(key=lambda b: b[1])
    unit_wanted = [(building_id, path, f"{unit}单元", None) for building_id, path, _ in all_buildings
                   for unit in range(1, UNITS_PER_BUILDING + 1)]
    units = await _children(session, AreaKind.unit, unit_wanted, False)
    labels = [f"{label}{unit}单元" for _, _, label in all_buildings for unit in range(1, UNITS_PER_BUILDING + 1)]
    return [(unit_id, label) for (unit_id, _), label in zip(units, labels, strict=True)]


def _phone(rng: random.Random) -> str:
    return rng.choice(MOBILE_PREFIXES) + f"{rng.randrange(100_000_000):08d}"


async def _load_households(session: AsyncSession, *, households: int, rng: random.Random, named_buildings: list[Area],
                           progress: Callable[[str], None]) -> None:
    """``households`` households over a tree scaled to fit, COPY-loaded through a temporary
    table and inserted with ``ON CONFLICT (account_no) DO NOTHING``: the same seed gives the
    same utility, and loading again changes nothing."""
    area_columns = set((await session.execute(text(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'areas' AND table_schema = current_schema()"
    ))).scalars())
    columns = set((await session.execute(text(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'households' AND table_schema = current_schema()"
    ))).scalars())
    progress(f"区域 (按 {households} 户扩展)")
    units = await _layout(session, households=households, named_buildings=named_buildings, has_code="code" in area_columns)
    extras = [c for c in ("phone", "address", "room", "customer_type", "sub_type", "population") if c in columns]
    target = ["account_no", "name", "area_id", *extras, "created_at"]
    await session.execute(text(
        f"CREATE TEMP TABLE demo_households ON COMMIT DROP AS SELECT {', '.join(target)} FROM households WITH NO DATA"
    ))
    surnames, given = SURNAMES, GIVEN
    per_unit = max(1, math.ceil(households / len(units)))
    done = 0
    while done < households:
        chunk = []
        for index in range(done, min(households, done + COPY_CHUNK)):
            unit_id, label = units[min(index // per_unit, len(units) - 1)]
            slot = index % per_unit
            name = rng.choice(surnames) + "".join(rng.choice(given) for _ in range(rng.choice((1, 2))))
            row: list[object] = [f"01{index + 1:08d}", name, unit_id]
            roll = rng.random()
            kind, sub_type = (("residential", None) if roll < 0.9 else ("non_residential", rng.choice(NON_RESIDENTIAL))
                              if roll < 0.97 else ("special", rng.choice(SPECIAL)))
            floor, flat = slot // FLATS % FLOORS + 1, slot % FLATS + 1
            values = {
                "phone": _phone(rng),
                # The address's 101室 is room 0101 (floor 01, flat 01): 1-1-0101 on 实时数据.
                "address": f"{label}{floor}{flat:02d}室",
                "room": f"{floor:02d}{flat:02d}",
                "customer_type": kind,
                "sub_type": sub_type,
                "population": rng.choice((1, 2, 2, 3, 3, 3, 4, 4, 5, 6)),
            }
            row.extend(values[c] for c in extras)
            # Accounts opened in account-number order over the utility's years (deterministic).
            row.append(OPENED_FROM + OPENED_SPAN * (index / households))
            chunk.append(row)
        await copy_into(session, "demo_households", columns=target, records=chunk)
        done += len(chunk)
        progress(f"住户 {done}/{households}")
    progress("住户写入")
    owners = await session.execute(text(
        "SELECT 1 FROM information_schema.tables WHERE table_name = 'household_owners' AND table_schema = current_schema()"
    ))
    insert = (
        f"INSERT INTO households ({', '.join(target)}) SELECT {', '.join(target)} FROM demo_households "
        "ORDER BY account_no ON CONFLICT (account_no) DO NOTHING"
    )
    if owners.first() is not None:
        # Every household has a current owner row (过户 history starts there).
        phone = "phone" if "phone" in columns else "NULL"
        insert = (
            f"WITH new AS ({insert} RETURNING id, name, {phone} AS phone, created_at) "
            "INSERT INTO household_owners (household_id, name, phone, valid_from) "
            "SELECT id, name, phone, (created_at AT TIME ZONE 'Asia/Shanghai')::date FROM new"
        )
    await session.execute(text(insert))
    await session.execute(text("DROP TABLE demo_households"))


# --------------------------------------------------------------------------- devices at scale

# (vendor, name, caliber, register digits, decimals, valve, battery, DI byte order); the first
# three are household meters (one vendor orders the DI 1F 90), the last the trunk flow meters'.
METER_MODELS = (
    ("宁波水表", "LXSY-15E", 15, 5, 3, True, True, "901F"),
    ("三川智慧", "LXSG-20C", 20, 5, 3, True, True, "1F90"),
    ("新天科技", "LXSZ-15Y", 15, 6, 3, False, True, "901F"),
    ("宁波水表", "LDG-300", 300, 8, 2, False, False, "901F"),
)
# Four trunk mains (干管), each a monitoring station (GG-EAST …) of a flow meter and a pressure gauge.
MONITORING = (("东", "east"), ("南", "south"), ("西", "west"), ("北", "north"))
REPLACED_AT_LATEST = datetime(2026, 10, 1, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
MONITORING_INSTALLED_AT = datetime(2019, 1, 1, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai"))


async def _load_devices(session: AsyncSession, *, seed: int, company: Area, progress: Callable[[str], None]) -> None:
    """Meter models, concentrators of 32-128 meters each (per community, TCP-login, serial
    and DTU kinds), one meter per demo household assigned from the day its account
    opened, a few replaced meters with their replacement records, and the trunk mains'
    monitoring points, grouped into one monitoring station per trunk main: set-based (INSERT … SELECT over the households), deterministic by
    ``seed``, and keyed on natural keys (meter code, concentrator name within its
    community, station code) so loading twice changes nothing."""
    progress("表计型号")
    await session.execute(text(
        "INSERT INTO meter_models (vendor, name, protocol, caliber, register_digits, register_decimals, has_valve, "
        "has_battery, di_byte_order) SELECT * FROM unnest(CAST(:vendors AS text[]), CAST(:names AS text[]), "
        "CAST(:protocols AS text[]), CAST(:calibers AS int[]), CAST(:digits AS int[]), CAST(:decimals AS int[]), "
        "CAST(:valves AS bool[]), CAST(:batteries AS bool[]), CAST(:orders AS text[])) ON CONFLICT (vendor, name) DO NOTHING"
    ), {"vendors": [m[0] for m in METER_MODELS], "names": [m[1] for m in METER_MODELS], "protocols": ["cjt188"] * len(METER_MODELS),
        "calibers": [m[2] for m in METER_MODELS], "digits": [m[3] for m in METER_MODELS], "decimals": [m[4] for m in METER_MODELS],
        "valves": [m[5] for m in METER_MODELS], "batteries": [m[6] for m in METER_MODELS], "orders": [m[7] for m in METER_MODELS]})
    model_ids = list((await session.execute(text(
        "SELECT m.id FROM unnest(CAST(:vendors AS text[]), CAST(:names AS text[])) WITH ORDINALITY AS w(vendor, name, n) "
        "JOIN meter_models m ON m.vendor = w.vendor AND m.name = w.name ORDER BY w.n"
    ), {"vendors": [m[0] for m in METER_MODELS], "names": [m[1] for m in METER_MODELS]})).scalars())
    household_models, flow_model = model_ids[:3], model_ids[3]

    progress("集中器与表计分组")
    # Each demo household's meter: its community, its place in the community, and the
    # concentrator (by index in the community) it hangs under. A community is cut into
    # runs of ``t`` (48-96, by community and seed) meters; a short last run (< 32) joins
    # the one before, so every concentrator holds 32-128 meters once a community has 32.
    await session.execute(text(
        "CREATE TEMP TABLE demo_plan ON COMMIT DROP AS "
        "SELECT q.*, least((q.rn - 1) / q.t, q.k - 1) AS idx, "
        "'W' || substr(q.account_no, 3) AS code, 'R' || substr(q.account_no, 3) AS old_code FROM ("
        "  SELECT p.*, CASE WHEN p.n < p.t OR p.n % p.t >= 32 THEN p.n / p.t + 1 ELSE p.n / p.t END AS k FROM ("
        "    SELECT h.id AS household_id, h.account_no, h.area_id, h.address, h.created_at, "
        "      CAST(split_part(a.path, '/', 4) AS bigint) AS community_id, "
        "      row_number() OVER w AS rn, count(*) OVER (PARTITION BY split_part(a.path, '/', 4)) AS n, "
        "      48 + (CAST(split_part(a.path, '/', 4) AS bigint) * 7919 + :seed * 104729) % 49 AS t, "
        "      abs(hashtext(h.account_no || ':' || :seed)) AS roll "
        "    FROM households h JOIN areas a ON a.id = h.area_id "
        "    WHERE h.account_no LIKE '01%' AND a.kind = 'unit' "
        "    WINDOW w AS (PARTITION BY split_part(a.path, '/', 4) ORDER BY h.account_no)"
        "  ) p"
        ") q"
    ), {"seed": seed})
    await session.execute(text(
        "ALTER TABLE demo_plan ADD COLUMN concentrator_name text, ADD COLUMN replaced_at timestamptz, "
        "ADD COLUMN old_final numeric(16, 4)"
    ))
    await session.execute(text(
        "UPDATE demo_plan p SET concentrator_name = c.name || '集中器' || lpad(CAST(p.idx + 1 AS text), 2, '0'), "
        "replaced_at = CASE WHEN p.roll % 400 = 7 AND p.created_at < TIMESTAMPTZ '2025-06-01 00:00:00+08' THEN "
        "least(p.created_at + make_interval(days => 200 + CAST(p.roll % 500 AS int)), CAST(:latest AS timestamptz)) END "
        "FROM areas c WHERE c.id = p.community_id"
    ), {"latest": REPLACED_AT_LATEST})
    await session.execute(text(
        "UPDATE demo_plan SET old_final = round(CAST(EXTRACT(EPOCH FROM replaced_at - created_at) / 86400 * 0.35 AS numeric), 2) "
        "WHERE replaced_at IS NOT NULL"
    ))
    await session.execute(text("CREATE INDEX ON demo_plan (code)"))
    await session.execute(text("ANALYZE demo_plan"))

    progress("集中器")
    # New concentrators continue after the highest address in use (region 3301, then 3302, …).
    await session.execute(text(
        "WITH wanted AS (SELECT DISTINCT community_id, idx, concentrator_name FROM demo_plan), "
        "missing AS (SELECT w.*, row_number() OVER (ORDER BY w.community_id, w.idx) AS r FROM wanted w "
        "  WHERE NOT EXISTS (SELECT 1 FROM concentrators c WHERE c.area_id = w.community_id AND c.name = w.concentrator_name)), "
        "base AS (SELECT COALESCE(max((CAST(region_code AS int) - 3301) * 65535 + terminal_address), 0) AS b "
        "  FROM concentrators WHERE region_code ~ '^33[0-9]{2}$' AND CAST(region_code AS int) >= 3301), "
        "numbered AS (SELECT m.*, b + r - 1 AS g, (m.community_id * 31 + m.idx * 17 + :seed) % 20 AS roll FROM missing m, base) "
        "INSERT INTO concentrators (name, region_code, terminal_address, area_id, model, protocol, connection, serial_url, "
        "  baudrate, parity, bytesize, stopbits, host, port, status) "
        "SELECT concentrator_name, CAST(3301 + g / 65535 AS text), g % 65535 + 1, community_id, "
        "  CASE WHEN roll % 2 = 0 THEN 'DJGZ23-WF' ELSE 'JZQ-2000' END, 'gdw1376', "
        "  CASE WHEN roll < 14 THEN 'tcp_login' WHEN roll < 17 THEN 'serial' ELSE 'dtu_socket' END, "
        "  CASE WHEN roll < 14 THEN NULL WHEN roll < 17 THEN '/dev/ttyUSB' || (g % 4) "
        "    ELSE 'socket://10.20.' || (g / 250 % 250) || '.' || (g % 250 + 2) || ':' || (9000 + idx) END, "
        "  CASE WHEN roll BETWEEN 14 AND 16 THEN 9600 END, CASE WHEN roll BETWEEN 14 AND 16 THEN 'E' END, "
        "  CASE WHEN roll BETWEEN 14 AND 16 THEN 8 END, CASE WHEN roll BETWEEN 14 AND 16 THEN '1' END, "
        "  CASE WHEN roll >= 17 THEN '10.20.' || (g / 250 % 250) || '.' || (g % 250 + 2) END, "
        "  CASE WHEN roll >= 17 THEN 9000 + idx END, 'active' "
        "FROM numbered ORDER BY g"
    ), {"seed": seed})

    progress("水表与配表")
    # One meter per household, assigned from the day the account opened (or, for a
    # replaced meter, from the replacement); only meters created now get an assignment.
    await session.execute(text(
        "WITH new AS (INSERT INTO meters (name, code, protocol, address, meter_type, kind, model_id, install_date, "
        "  initial_reading, location, area_id, status, concentrator_id, port, measurement_point) "
        "SELECT left(p.address, 96) || '水表', p.code, 'cjt188', '2026' || p.account_no, "
        "  CASE WHEN p.roll % 50 = 3 THEN 'hot_water' ELSE 'cold_water' END, 'household', "
        "  (CAST(:models AS bigint[]))[1 + (p.rn + :seed) % 3], "
        "  CAST(COALESCE(p.replaced_at, p.created_at) AT TIME ZONE 'Asia/Shanghai' AS date), 0, "
        "  CASE WHEN p.rn % 2 = 0 THEN '管道井' ELSE '水表箱' END, p.area_id, 'installed', c.id, 1, p.rn - p.idx * p.t "
        "FROM demo_plan p JOIN concentrators c ON c.area_id = p.community_id AND c.name = p.concentrator_name "
        "ORDER BY p.account_no ON CONFLICT (code) DO NOTHING RETURNING id, code) "
        "INSERT INTO meter_assignments (meter_id, household_id, valid_from, start_reading) "
        "SELECT new.id, p.household_id, COALESCE(p.replaced_at, p.created_at), 0 FROM new JOIN demo_plan p ON p.code = new.code"
    ), {"models": household_models, "seed": seed})

    progress("换表记录")
    await session.execute(text(
        "WITH old AS (INSERT INTO meters (name, code, protocol, address, meter_type, kind, model_id, install_date, "
        "  initial_reading, location, area_id, status) "
        "SELECT left(p.address, 92) || '水表(旧)', p.old_code, 'cjt188', '2019' || p.account_no, 'cold_water', 'household', "
        "  (CAST(:models AS bigint[]))[1 + (p.rn + :seed + 1) % 3], "
        "  CAST(p.created_at AT TIME ZONE 'Asia/Shanghai' AS date), 0, '水表箱', p.area_id, 'retired' "
        "FROM demo_plan p WHERE p.replaced_at IS NOT NULL ORDER BY p.account_no ON CONFLICT (code) DO NOTHING "
        "RETURNING id, code), "
        "closed AS (INSERT INTO meter_assignments (meter_id, household_id, valid_from, valid_to, start_reading, end_reading) "
        "  SELECT old.id, p.household_id, p.created_at, p.replaced_at, 0, p.old_final "
        "  FROM old JOIN demo_plan p ON p.old_code = old.code RETURNING 1) "
        "INSERT INTO meter_replacements (household_id, old_meter_id, new_meter_id, replaced_at, old_final_reading, "
        "  new_initial_reading, reason, replaced_by) "
        "SELECT p.household_id, old.id, m.id, p.replaced_at, p.old_final, 0, "
        "  CASE WHEN p.roll % 3 = 0 THEN '表计故障 (不走字)' WHEN p.roll % 3 = 1 THEN '表计到期轮换' ELSE '表壳破损' END, '王磊' "
        "FROM old JOIN demo_plan p ON p.old_code = old.code JOIN meters m ON m.code = p.code"
    ), {"models": household_models, "seed": seed})
    await session.execute(text("DROP TABLE demo_plan"))

    progress("干管监测点")
    rows = []
    for number, (label, slug) in enumerate(MONITORING):
        rows.append((f"{label}干管流量计", f"JC-{slug.upper()}-F", f"2099000000{number * 2 + 1:04d}", "flow_monitor", flow_model,
                     f"{label}干管监测点", f"shuiwu/monitor/{slug}/flow"))
        rows.append((f"{label}干管压力计", f"JC-{slug.upper()}-P", f"2099000000{number * 2 + 2:04d}", "pressure_monitor", None,
                     f"{label}干管监测点", f"shuiwu/monitor/{slug}/pressure"))
    # Registered in stock, then installed by the same rule as installMeter (a location,
    # the history row): only the points created now, so loading twice changes nothing.
    created = (await session.execute(text(
        "INSERT INTO meters (name, code, protocol, address, meter_type, kind, model_id, install_date, initial_reading, "
        "  area_id, status, mqtt_topic) "
        "SELECT r.name, r.code, 'cjt188', r.address, r.meter_type, 'monitoring', r.model_id, DATE '2019-01-01', 0, "
        "  :area, 'in_stock', r.topic "
        "FROM unnest(CAST(:names AS text[]), CAST(:codes AS text[]), CAST(:addresses AS text[]), CAST(:types AS text[]), "
        "  CAST(:models AS bigint[]), CAST(:topics AS text[])) "
        "  AS r(name, code, address, meter_type, model_id, topic) "
        "ON CONFLICT (code) DO NOTHING RETURNING id, code"
    ), {"area": company.id, "names": [r[0] for r in rows], "codes": [r[1] for r in rows], "addresses": [r[2] for r in rows],
        "types": [r[3] for r in rows], "models": [r[4] for r in rows], "topics": [r[6] for r in rows]})).all()
    location_of = {r[1]: r[5] for r in rows}
    for meter_id, code in sorted(created):
        await install_meter(session, meter_id=meter_id, location=location_of[code], installed_at=MONITORING_INSTALLED_AT,
                            changed_by="系统")

    progress("干管监测站")
    # Each trunk main is a monitoring station of its flow meter and pressure gauge; only
    # stations created now get their instruments, so loading twice changes nothing.
    existing = set((await session.execute(text("SELECT code FROM monitoring_stations WHERE code = ANY(:codes)"),
                                          {"codes": [f"GG-{slug.upper()}" for _, slug in MONITORING]})).scalars())
    for label, slug in MONITORING:
        code = f"GG-{slug.upper()}"
        if code in existing:
            continue
        station = await create_station(session, fields=StationChanges(
            code=code, name=f"{label}干管网", kind=StationKind.trunk_main, area_id=company.id,
            location=f"{label}干管监测点"))
        assert station.id is not None
        instruments = (await session.execute(text("SELECT id FROM meters WHERE code = ANY(:codes) ORDER BY code"), {
            "codes": [f"JC-{slug.upper()}-F", f"JC-{slug.upper()}-P"]})).scalars().all()
        for meter_id in instruments:
            await attach_instrument(session, station_id=station.id, meter_id=meter_id)
