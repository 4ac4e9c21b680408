"""Archives Excel and demo-load throughput (Archives issue, "Performance").

- Import of a 100k-row households workbook through ``POST /imports/households`` (the real
  app in process: auth, multipart, whole-file validation, COPY + one upsert, audit) next to
  openpyxl's bare read-only read of the same file. Goal: >= 0.3x the bare read rate.
- Export of 200k households through ``GET /exports/households.xlsx`` (server-side cursor,
  write-only workbook) next to openpyxl's bare write-only write of the same rows.
  Goal: >= 0.5x the bare write rate.
- ``shuiwu demo load --households 1000000`` as a subprocess against a temp SHUIWU_DATA_DIR.
  Goal: under 3 minutes.

    .venv/bin/python bench/archives.py [--import-rows 100000] [--export-rows 200000] [--demo-households 1000000]

Self-contained: embedded PostgreSQL in a temp dir, stopped at the end. The last line is the headline.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import openpyxl

from backend.app import create_app
from backend.archives import http as archives_http
from backend.archives.excel import HOUSEHOLD_EXPORT_SHEET
from backend.archives.models import AreaKind
from backend.archives.service import create_area
from backend.auth import service as auth
from backend.auth.catalog import all_permissions
from backend.auth.models import PrincipalKind, RoleKind
from backend.auth.principal import Principal
from backend.clock import utcnow
from backend.db import create_engine, migrate, session_factory, start_embedded, stop_embedded
from backend.settings import Settings

SECRET = "bench-secret-key-that-is-long-enough-0123456789abcdef"
USERNAME, PASSWORD = "bench_archivist", "Bench@2026x"
ROOT = Principal(kind=PrincipalKind.staff, id=0, name="bench", permissions=all_permissions(), scope_paths=("/",))
IMPORT_GOAL, EXPORT_GOAL, DEMO_GOAL_S = 0.30, 0.50, 180.0
HEADER = ["户号", "户名", "区域编码", "地址", "联系电话", "用户类型", "人口数"]


async def seed(url: str) -> tuple[str, list[str]]:
    """A company with four units and a staff user holding archives:*; returns (token, unit refs)."""
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        async with session_factory(engine)() as session, session.begin():
            company = await create_area(session, name="基准水务", kind=AreaKind.company)
            district = await create_area(session, name="城东片区", kind=AreaKind.district, parent_id=company.id)
            community = await create_area(session, name="翠湖小区", kind=AreaKind.community, parent_id=district.id)
            units = [await create_area(session, name=f"{n}号楼", kind=AreaKind.building, parent_id=community.id) for n in range(1, 5)]
            role = await auth.create_role(session, actor=ROOT, name="档案管理", kind=RoleKind.operator,
                                          permissions={"archives:read", "archives:manage"}, area_ids=[company.id])
            assert role.id is not None
            await auth.create_staff_user(session, actor=ROOT, username=USERNAME, full_name="基准用户", password=PASSWORD,
                                         role_ids=[role.id], now=utcnow())
        async with session_factory(engine)() as session, session.begin():
            policy = auth.AuthPolicy.from_settings(Settings(secret_key=SECRET, access_token_ttl_s=24 * 3600))
            tokens = await auth.login_staff(session, username=USERNAME, password=PASSWORD, now=utcnow(), policy=policy)
    finally:
        await engine.dispose()
    return tokens.access_token, [f"#{unit.id}" for unit in units]


def household_rows(start: int, count: int, units: list[str]) -> list[list[Any]]:
    return [[f"B{i:09d}", f"住户{i % 9973}", units[i % len(units)], f"翠湖小区{i % 4 + 1}号楼{i % 600}室",
             f"138{i % 100_000_000:08d}", "居民", i % 6 + 1] for i in range(start, start + count)]


def workbook_bytes(rows: list[list[Any]]) -> tuple[bytes, float]:
    """The workbook (two header rows) and openpyxl's bare write-only time for it."""
    started = time.perf_counter()
    workbook = openpyxl.Workbook(write_only=True)
    sheet = workbook.create_sheet("住户")
    sheet.append(HEADER)
    for row in rows:
        sheet.append(row)
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue(), time.perf_counter() - started


def bare_read(content: bytes) -> tuple[int, float]:
    started = time.perf_counter()
    workbook = openpyxl.load_workbook(io.BytesIO(content), read_only=True)
    count = sum(1 for _ in workbook.worksheets[0].iter_rows(values_only=True)) - 1
    workbook.close()
    return count, time.perf_counter() - started


def bare_write(rows: list[tuple[Any, ...]], path: Path) -> float:
    started = time.perf_counter()
    workbook = openpyxl.Workbook(write_only=True)
    sheet = workbook.create_sheet("住户")
    sheet.append([c.header for c in HOUSEHOLD_EXPORT_SHEET.columns])
    sheet.append([c.header_en for c in HOUSEHOLD_EXPORT_SHEET.columns])
    for row in rows:
        sheet.append(row)
    workbook.save(path)
    return time.perf_counter() - started


async def excel_bench(url: str, import_rows: int, export_rows: int, workdir: Path) -> float:
    token, units = await seed(url)
    app = create_app(Settings(secret_key=SECRET), url)
    app.router.routes.extend(archives_http.routes(app.state.sessions, app.state.read_engine, app.state.settings))
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench", timeout=600) as http:
        content, _ = workbook_bytes(household_rows(0, import_rows, units))
        count, read_s = bare_read(content)
        started = time.perf_counter()
        response = await http.post(archives_http.IMPORT_PATH, headers=headers, files={"file": ("h.xlsx", content)})
        import_s = time.perf_counter() - started
        assert response.status_code == 200 and response.json()["inserted"] == import_rows, response.text[:500]
        bare_rate, import_rate = count / read_s, import_rows / import_s
        import_ratio = import_rate / bare_rate
        print(f"import {import_rows} rows: {import_s:6.2f} s {import_rate:9.0f} rows/s | bare openpyxl read "
              f"{read_s:6.2f} s {bare_rate:9.0f} rows/s | ratio {import_ratio:.2f} (goal >= {IMPORT_GOAL:.2f})")

        remaining = export_rows - import_rows
        if remaining > 0:
            more, _ = workbook_bytes(household_rows(import_rows, remaining, units))
            response = await http.post(archives_http.IMPORT_PATH, headers=headers, files={"file": ("more.xlsx", more)})
            assert response.status_code == 200, response.text[:500]
        started = time.perf_counter()
        response = await http.get(archives_http.EXPORT_PATH, headers=headers)
        export_s = time.perf_counter() - started
        assert response.status_code == 200, response.text[:500]
        exported = openpyxl.load_workbook(io.BytesIO(response.content), read_only=True)
        rows = list(exported.worksheets[0].iter_rows(min_row=3, values_only=True))
        exported.close()
        assert len(rows) == export_rows, len(rows)
        write_s = bare_write(rows, workdir / "bare.xlsx")
        export_rate, write_rate = export_rows / export_s, export_rows / write_s
        print(f"export {export_rows} rows: {export_s:6.2f} s {export_rate:9.0f} rows/s | bare openpyxl write "
              f"{write_s:6.2f} s {write_rate:9.0f} rows/s | ratio {export_rate / write_rate:.2f} (goal >= {EXPORT_GOAL:.2f})")
    await app.state.engine.dispose()
    await app.state.read_engine.dispose()
    return import_ratio


def demo_bench(households: int, workdir: Path) -> None:
    data_dir = workdir / "demo"
    env = {**os.environ, "SHUIWU_DATA_DIR": str(data_dir), "SHUIWU_SECRET_KEY": SECRET}
    env.pop("SHUIWU_DATABASE_URL", None)
    command = [sys.executable, "-m", "backend.cli", "demo", "load", "--households", str(households)]
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        print(f"demo load failed ({result.returncode}):\n{result.stderr[-3000:]}")
        return
    print(f"demo load --households {households}: {elapsed:6.1f} s (goal < {DEMO_GOAL_S:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--import-rows", type=int, default=100_000)
    parser.add_argument("--export-rows", type=int, default=200_000)
    parser.add_argument("--demo-households", type=int, default=1_000_000, help="0 skips the demo load")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="shuiwu-bench-archives-"))
    try:
        url = start_embedded(workdir / "pgdata")
        try:
            migrate(url)
            ratio = asyncio.run(excel_bench(url, args.import_rows, args.export_rows, workdir))
        finally:
            stop_embedded()
        if args.demo_households:
            demo_bench(args.demo_households, workdir)
        print(f"headline: households import vs bare openpyxl read ratio={ratio:.2f} goal=>={IMPORT_GOAL:.2f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
