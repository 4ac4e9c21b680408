"""GraphQL overhead: shuiwu's full stack vs. a raw Starlette endpoint, same rows, same database.

A 10-row and a 1000-row ``areas`` query through one uvicorn worker running the real app
(bearer token, session check, permission, data scope, DataLoader for ``parent``), and the
same rows from a raw Starlette + asyncpg + ``json.dumps`` endpoint. Load: Debian's ``wrk``,
16 connections on loopback. Goals (Foundation issue): 10-row throughput >= 0.25x raw;
1000-row latency <= 3x raw. The last line is the headline.

    .venv/bin/python bench/graphql_overhead.py [--duration 8] [--warmup 2] [--connections 16]

Needs ``wrk`` on PATH (exit 2 otherwise). Self-contained: embedded PostgreSQL in a temp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from _embedded import embedded_database, free_port  # bench/ is the script directory: sys.path[0]

from backend.archives.models import AreaKind
from backend.auth import service as auth
from backend.auth.catalog import all_permissions
from backend.auth.models import PrincipalKind, RoleKind
from backend.auth.principal import Principal
from backend.clock import utcnow
from backend.db import (
    create_engine,
    migrate,
    session_factory,
    to_libpq_url,
)
from backend.domains import DOMAINS  # noqa: F401  (the catalog reads the domain list's menus)
from backend.settings import Settings

BENCH_DIR = Path(__file__).resolve().parent
SECRET = "bench-secret-key-that-is-long-enough-0123456789abcdef"
USERNAME, PASSWORD = "bench_reader", "Bench@2026x"
GOAL_THROUGHPUT_10 = 0.25
GOAL_LATENCY_1000 = 3.0
# Creates the bench role: holds everything everywhere (as tests/factories.ROOT).
ROOT = Principal(kind=PrincipalKind.staff, id=0, name="bench", permissions=all_permissions(), scope_paths=("/",))

AREAS_QUERY = (
    "query Areas($first: Int!) { areas(first: $first) { edges { node { id name kind level parent { name } } } } }"
)


# --------------------------------------------------------------------------- data




AreaRow = tuple[int, int | None, str, str, str]  # id, parent_id, name, kind, path


def area_rows(districts: int = 10, communities: int = 10, buildings: int = 10) -> list[AreaRow]:
    """A company tree of 1 + d + d*c + d*c*b areas; ids from 1 (a fresh database)."""
    rows: list[AreaRow] = []
    next_id = 1

    def add(parent: AreaRow | None, name: str, kind: AreaKind) -> AreaRow:
        nonlocal next_id
        area_id, next_id = next_id, next_id + 1
        path = f"{parent[4] if parent else '/'}{area_id}/"
        row = (area_id, parent[0] if parent else None, name, kind.value, path)
        rows.append(row)
        return row

    company = add(None, "基准水务有限公司", AreaKind.company)
    for d in range(1, districts + 1):
        district = add(company, f"第{d}片区", AreaKind.district)
        for c in range(1, communities + 1):
            community = add(district, f"第{d}-{c}小区", AreaKind.community)
            for b in range(1, buildings + 1):
                add(community, f"{b}号楼", AreaKind.building)
    return rows


async def seed(url: str) -> tuple[str, str]:
    """Areas (set-based), a staff user with areas:read over the company, a login.
    Returns (access token, company path)."""
    rows = area_rows()
    connection = await asyncpg.connect(to_libpq_url(url))
    try:
        columns = ["id", "parent_id", "name", "kind", "path"]
        await connection.copy_records_to_table("areas", records=rows, columns=columns)
        await connection.execute("SELECT setval(pg_get_serial_sequence('areas', 'id'), (SELECT max(id) FROM areas))")
        await connection.execute("ANALYZE")
    finally:
        await connection.close()

    company_id, company_path = rows[0][0], rows[0][4]
    policy = auth.AuthPolicy.from_settings(Settings(secret_key=SECRET, access_token_ttl_s=24 * 3600))
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        async with session_factory(engine)() as session, session.begin():
            role = await auth.create_role(
                session, actor=ROOT, name="基准只读", kind=RoleKind.operator,
                permissions={"areas:read"}, area_ids=[company_id],
            )
            assert role.id is not None
            await auth.create_staff_user(
                session, actor=ROOT, username=USERNAME, full_name="基准用户", password=PASSWORD,
                role_ids=[role.id], now=utcnow(),
            )
        async with session_factory(engine)() as session, session.begin():
            tokens = await auth.login_staff(session, username=USERNAME, password=PASSWORD, now=utcnow(), policy=policy)
    finally:
        await engine.dispose()
    return tokens.access_token, company_path


# --------------------------------------------------------------------------- servers


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_server(name: str, factory: str, env: dict[str, str], workdir: Path) -> Server:
    port = free_port()
    log = workdir / f"{name}.log"
    command = [
        sys.executable, "-m", "uvicorn", "--factory", f"_apps:{factory}",
        "--app-dir", str(BENCH_DIR), "--host", "127.0.0.1", "--port", str(port),
        "--no-access-log", "--log-level", "warning",
        "--loop", "uvloop" if _has("uvloop") else "asyncio",
        "--http", "httptools" if _has("httptools") else "h11",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    server = Server(name, process, port, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.base}/healthz", timeout=1).status_code == 200:
                return server
        time.sleep(0.1)
    raise RuntimeError(f"{name} server did not answer /healthz within 30 s:\n{log.read_text()[-3000:]}")


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)  # uvicorn shuts down gracefully on it
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Case:
    name: str
    url: str
    body: str
    headers: dict[str, str]


def shuiwu_case(server: Server, rows: int, token: str) -> Case:
    body = json.dumps({"query": AREAS_QUERY, "variables": {"first": rows}, "operationName": "Areas"})
    return Case(f"shuiwu {rows}", f"{server.base}/graphql", body, {"Authorization": f"Bearer {token}"})


def raw_case(server: Server, rows: int) -> Case:
    return Case(f"raw {rows}", f"{server.base}/rows", json.dumps({"limit": rows}), {})


def _post(case: Case) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", **case.headers}
    response = httpx.post(case.url, content=case.body, headers=headers, timeout=30)
    if response.status_code != 200:
        raise RuntimeError(f"{case.name}: HTTP {response.status_code}: {response.text[:500]}")
    result: dict[str, Any] = response.json()
    return result


def normalised_rows(shuiwu: Case, raw: Case) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Both endpoints' rows as (id, name, kind, level, parent name); raises on GraphQL errors."""
    answer = _post(shuiwu)
    if answer.get("errors") or not answer.get("data"):
        raise RuntimeError(f"{shuiwu.name}: GraphQL errors: {json.dumps(answer, ensure_ascii=False)[:800]}")
    ours = []
    for edge in answer["data"]["areas"]["edges"]:
        node = edge["node"]
        pk = int(base64.b64decode(node["id"]).decode().partition(":")[2])
        ours.append((pk, node["name"], node["kind"].lower(), node["level"], (node["parent"] or {}).get("name")))
    theirs = [(r["id"], r["name"], r["kind"], r["level"], r["parent"]) for r in _post(raw)["rows"]]
    return ours, theirs


def verify(shuiwu: Case, raw: Case, rows: int) -> None:
    ours, theirs = normalised_rows(shuiwu, raw)
    if len(ours) != rows or len(theirs) != rows:
        raise RuntimeError(f"expected {rows} rows: shuiwu returned {len(ours)}, raw {len(theirs)}")
    if ours != theirs:
        first = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b)
        raise RuntimeError(f"rows differ at {first}: shuiwu {ours[first]} vs raw {theirs[first]}")


# --------------------------------------------------------------------------- wrk


@dataclass(frozen=True)
class Result:
    case: str
    requests_per_s: float
    latency_ms: float
    errors: str


def _lua_string(value: str) -> str:
    level = 1
    while f"]{'=' * level}]" in value:
        level += 1
    return f"[{'=' * level}[{value}]{'=' * level}]"


# With ``checked``, every response is inspected (slower: warm-up only) and the first bad one
# per wrk thread is printed, so a script that sends the wrong request cannot go unnoticed.
_CHECK = """
response = function(status, headers, body)
  if status ~= 200 or string.find(body, '"errors"', 1, true) then
    if not reported then
      reported = true
      io.write("BAD RESPONSE " .. status .. " " .. string.sub(body, 1, 400) .. "\\n")
    end
  end
end
"""


def lua_script(case: Case, workdir: Path, *, checked: bool = False) -> Path:
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = {_lua_string(case.body)}",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    # Spaces matter: `[[` right after `headers` would open a Lua long string.
    lines += [f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in case.headers.items()]
    if checked:
        lines.append(_CHECK)
    path = workdir / (case.name.replace(" ", "_") + ("-checked" if checked else "") + ".lua")
    path.write_text("\n".join(lines) + "\n")
    return path


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse_wrk(case: str, output: str) -> Result:
    """Requests/s and mean latency; any non-2xx response, timeout or bad body is fatal."""
    bad = re.search(r"BAD RESPONSE [^\n]*", output)
    if bad:
        raise RuntimeError(f"{case}: wrong answer under load: {bad.group(0)}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    latency = re.search(r"Latency\s+([\d.]+)(us|ms|s|m)\b", output)
    if not rps or not latency:
        raise RuntimeError(f"{case}: cannot parse wrk output:\n{output}")
    failed = re.search(r"Non-2xx or 3xx responses: \d+|Socket errors: [^\n]*timeout [1-9][^\n]*", output)
    if failed:
        raise RuntimeError(f"{case}: {failed.group(0).strip()} - the run measured errors, not the endpoint:\n{output}")
    socket_errors = re.search(r"Socket errors: [^\n]*", output)
    notes = socket_errors.group(0).strip() if socket_errors else ""
    return Result(case, float(rps.group(1)), float(latency.group(1)) * _UNITS_MS[latency.group(2)], notes)


def run_wrk(case: Case, *, seconds: int, connections: int, threads: int, workdir: Path, checked: bool = False) -> Result:
    script = lua_script(case, workdir, checked=checked)
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script)]
    command.append(case.url)
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=seconds + 30)
    if done.returncode != 0:
        raise RuntimeError(f"{case.name}: wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return parse_wrk(case.name, done.stdout)


# --------------------------------------------------------------------------- main


def measure(args: argparse.Namespace, sizes: list[int], workdir: Path) -> dict[str, Result]:
    """Database, data, both servers, verification, load. Everything started is stopped."""
    started = time.monotonic()
    results: dict[str, Result] = {}
    with embedded_database(workdir) as url:
        migrate(url)
        token, company_path = asyncio.run(seed(url))
        env = {
            "BENCH_DATABASE_URL": url,
            "BENCH_SECRET": SECRET,
            "BENCH_POOL_SIZE": str(args.pool_size),
            "BENCH_MAX_OVERFLOW": str(args.max_overflow),
            "BENCH_SCOPE_PATHS": company_path,
        }
        servers: list[Server] = []
        try:  # servers stop before the embedded PostgreSQL they are connected to
            shuiwu = start_server("shuiwu", "shuiwu_app", env, workdir)
            servers.append(shuiwu)
            raw = start_server("raw", "raw_app", env, workdir)
            servers.append(raw)

            pairs = [(rows, shuiwu_case(shuiwu, rows, token), raw_case(raw, rows)) for rows in sizes]
            for rows, ours, theirs in pairs:
                verify(ours, theirs, rows)
            print(f"setup {time.monotonic() - started:.1f} s; rows verified equal for sizes {sizes}; "
                  f"wrk -t{args.threads} -c{args.connections}, {args.warmup} s warm-up + {args.duration} s per case; "
                  f"DB pool {args.pool_size}+{args.max_overflow} overflow in both apps", flush=True)
            load = {"connections": args.connections, "threads": args.threads, "workdir": workdir}
            for _, ours, theirs in pairs:
                for case in (ours, theirs):
                    if args.warmup:  # also checks every answer wrk gets
                        run_wrk(case, seconds=args.warmup, checked=True, **load)
                    result = results[case.name] = run_wrk(case, seconds=args.duration, **load)
                    print(f"  {case.name:<12} {result.requests_per_s:>10.1f} req/s {result.latency_ms:>9.2f} ms"
                          + (f"  [{result.errors}]" if result.errors else ""), flush=True)
            # A run that ended in errors measured nothing: check the answers once more after load.
            for rows, ours, theirs in pairs:
                verify(ours, theirs, rows)
        finally:
            for server in servers:
                stop_server(server)
    print(f"total {time.monotonic() - started:.1f} s")
    return results


def report(results: dict[str, Result], sizes: list[int]) -> None:
    print()
    print(f"{'case':<14}{'req/s':>12}{'avg latency ms':>18}")
    for result in results.values():
        print(f"{result.case:<14}{result.requests_per_s:>12.1f}{result.latency_ms:>18.2f}")
    print()
    for rows in sizes:
        ours, theirs = results[f"shuiwu {rows}"], results[f"raw {rows}"]
        print(f"{rows}-row: throughput shuiwu/raw = {ours.requests_per_s / theirs.requests_per_s:.3f}x, "
              f"latency shuiwu/raw = {ours.latency_ms / theirs.latency_ms:.2f}x")
    if 1000 in sizes:
        latency = results["shuiwu 1000"].latency_ms / results["raw 1000"].latency_ms
        verdict = "met" if latency <= GOAL_LATENCY_1000 else "MISSED"
        print(f"1000-row latency ratio={latency:.2f} goal=<={GOAL_LATENCY_1000} ({verdict})")
    if 10 in sizes:
        ratio = results["shuiwu 10"].requests_per_s / results["raw 10"].requests_per_s
        verdict = "met" if ratio >= GOAL_THROUGHPUT_10 else "MISSED"
        print(f"10-row throughput ratio={ratio:.3f} goal=>={GOAL_THROUGHPUT_10} ({verdict})")
        print(f"headline: graphql 10-row throughput vs raw ratio={ratio:.2f} goal=>={GOAL_THROUGHPUT_10}")


def main() -> int:
    # pgserver (platformdirs) warns when XDG_RUNTIME_DIR is unset; irrelevant here.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=8, help="measured seconds per case (default 8)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per case (default 2)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pool-size", type=int, default=16, help="DB pool of both apps (default 16 = connections)")
    parser.add_argument("--max-overflow", type=int, default=0)
    parser.add_argument("--rows", default="10,1000", help="page sizes, comma-separated (default 10,1000)")
    args = parser.parse_args()
    sizes = [int(n) for n in args.rows.split(",")]

    if shutil.which("wrk") is None:
        print("graphql_overhead: `wrk` is not on PATH; install Debian's wrk (apt-get install -y wrk), "
              "which `make bench` does.", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="shuiwu-bench-"))
    try:
        results = measure(args, sizes, workdir)
    except KeyboardInterrupt:
        print("interrupted; servers and PostgreSQL stopped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(results, sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
