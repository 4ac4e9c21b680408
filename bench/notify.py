"""Online payment notifications under load (issue 18, "Performance").

Self-contained: an embedded PostgreSQL in a temp dir, migrated; the test merchants
(``write_test_merchants``: the Alipay app ``demo`` and "Alipay's" key); ``--accounts``
households with prepaid accounts and ``--count`` open Alipay orders (set-based); one
genuine notification per order, signed with "Alipay's" RSA2 key exactly as the local
Alipay signs them (checked with the app's own gateway before load).

One uvicorn process (one worker, uvloop + httptools when installed) serves the real app
(``create_app``: ``POST /pay/alipay/notify``) and, in the same process, the floor route
``POST /bench/floor``: verify the same signed body with the same gateway object and
insert it into a table in one transaction — the least any notification must cost.
``--senders`` concurrent senders (httpx, one process) post:

1. the genuine notifications, each for a distinct order (verify, find the order, lock
   it, payment, ledger entry, balance, event, notification row, answer ``success``);
2. the same notifications replayed (each answers ``success`` and writes nothing);
3. the same bodies to the floor route.

1 and 3 alternate in ``--slices`` slices (genuine slice, floor slice, …), so the load
other jobs put on the shared machine weighs on both alike; 2 runs after them.

Checked after each: every answer 200 ``success``; after 1, ``--count`` payments, every
order paid, every account's ledger sum equal to its balance; after 2, not one row more
in payment_notifications, payments or ledger_entries. During 1 and 2 a sampler looks at
``pg_locks`` every 50 ms for relation locks stronger than ROW EXCLUSIVE held on the
notification path's tables (a table lock): it must see none.

Printed: the three rates; the last line is
``headline: genuine notifications/s vs verify+insert floor ratio=<x.xx> goal=>=0.50``.
About a minute at the defaults (10,000 × 3 posts) on the shared 2-core machines, where
PostgreSQL, the server and the senders compete for CPU: compare the ratio, not the rates.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx
from _embedded import embedded_database, free_port  # bench/ is the script directory: sys.path[0]

BENCH_DIR = Path(__file__).resolve().parent
NOTIFY_PATH = "/pay/alipay/notify"
FLOOR_PATH = "/bench/floor"
FORM = {"content-type": "application/x-www-form-urlencoded; charset=utf-8"}
# Stronger than ROW EXCLUSIVE (what INSERT / UPDATE / SELECT FOR UPDATE take): a table lock.
TABLE_LOCK_MODES = ("ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock")
WATCHED_TABLES = ("payment_orders", "payment_notifications", "payments", "ledger_entries", "accounts",
                  "pending_writes", "domain_events", "bench_floor")


# --------------------------------------------------------------------------- the served app


def bench_app() -> Any:
    """The real app plus the floor route (``uvicorn --factory notify:bench_app``)."""
    from sqlalchemy import text
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from backend.app import create_app
    from backend.payments.models import PaymentChannel
    from backend.payments.online.gateway import NotificationRejected
    from backend.payments.online.registry import SERVICE
    from backend.settings import Settings

    pool = int(os.environ.get("BENCH_POOL_SIZE", "10"))
    app = create_app(Settings(secret_key="bench-" + "x" * 40, db_pool_size=pool, db_max_overflow=pool,
                              graphiql=False, log_level="WARNING"), os.environ["BENCH_DATABASE_URL"])
    sessions = app.state.sessions
    gateway = app.state.services[SERVICE].gateway(PaymentChannel.alipay, "demo")
    insert = text("INSERT INTO bench_floor (body, received_at) VALUES (:body, now())")

    async def floor(request: Request) -> Response:
        body = await request.body()
        try:
            gateway.verify_notification(request.headers, body)
        except NotificationRejected:
            return Response(b"fail", media_type="text/plain")
        async with sessions() as session, session.begin():
            await session.execute(insert, {"body": body.decode("utf-8", errors="replace")})
        return Response(b"success", media_type="text/plain")

    app.router.routes.append(Route(FLOOR_PATH, floor, methods=["POST"]))
    return app


# --------------------------------------------------------------------------- setup


async def seed(url: str, *, accounts: int, count: int) -> list[tuple[str, int]]:
    """Households with open prepaid_station accounts and ``count`` open Alipay orders over
    them (round robin). Returns each order's (out_trade_no, amount_fen)."""
    from backend.archives.models import AreaKind
    from backend.archives.service import create_area, create_household
    from backend.billing import service as tariffs
    from backend.billing.accounts import AccountTerms, open_account
    from backend.billing.models import BillingMode
    from backend.db import create_engine, session_factory, to_libpq_url

    now = datetime.now(UTC)
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        async with session_factory(engine)() as session, session.begin():
            await tariffs.save_tariff(session, raw={
                "code": "BENCH", "name": "基准水价", "customer_type": "residential",
                "valid_from": (now - timedelta(days=30)).date(), "cycle": "month", "tier_limits": [],
                "components": [{"code": "water", "name": "自来水费", "prices": ["3.45"]}]})
            area = await create_area(session, name="基准公司", kind=AreaKind.company)
            assert area.id is not None
            for number in range(accounts):
                household = await create_household(session, account_no=f"B{number:06d}", name="基准用户",
                                                   area_id=area.id)
                assert household.id is not None
                await open_account(session, household_id=household.id, mode=BillingMode.prepaid_station,
                                   terms=AccountTerms(tariff_code="BENCH"), now=now - timedelta(days=1), by="bench")
    finally:
        await engine.dispose()
    connection = await asyncpg.connect(to_libpq_url(url))
    try:
        await connection.execute("CREATE TABLE bench_floor (id bigserial PRIMARY KEY, body text NOT NULL, "
                                 "received_at timestamptz NOT NULL)")
        # out_trade_no as orders.out_trade_no makes it: SW + the day + the id padded to 10.
        await connection.execute("""
            INSERT INTO payment_orders (id, out_trade_no, account_id, household_id, channel, api, merchant, scene,
                                        origin, purpose, amount_fen, subject, state, created_by, created_at,
                                        expires_at)
            SELECT g, 'SW' || to_char(now() AT TIME ZONE 'Asia/Shanghai', 'YYYYMMDD') || lpad(g::text, 10, '0'),
                   a.id, a.household_id, 'alipay', 'alipay', 'demo', 'wap', 'resident', 'recharge',
                   100 + g % 9900, '水费充值 bench', 'created', 'anonymous', now(), now() + interval '1 day'
            FROM generate_series(1, $1) g
            JOIN (SELECT id, household_id, row_number() OVER (ORDER BY id) - 1 AS n FROM accounts) a
              ON a.n = g % $2
        """, count, accounts)
        await connection.execute("SELECT setval('payment_orders_id_seq', $1)", count)
        await connection.execute("ANALYZE")
        rows = await connection.fetch("SELECT out_trade_no, amount_fen FROM payment_orders ORDER BY id")
    finally:
        await connection.close()
    return [(row["out_trade_no"], row["amount_fen"]) for row in rows]


def signed_notifications(directory: Path, orders: list[tuple[str, int]]) -> list[bytes]:
    """One genuine TRADE_SUCCESS notification per order, signed RSA2 with "Alipay's" key."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    from backend.money import fen_to_yuan
    from backend.payments.online.fakes.alipay import unsigned_string
    from backend.payments.online.testkeys import ALIPAY_APP_ID, FAKE_ALIPAY_KEY

    key = serialization.load_pem_private_key((directory / FAKE_ALIPAY_KEY).read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    stamp = datetime.now(UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    bodies = []
    for index, (out_trade_no, amount_fen) in enumerate(orders):
        fields = {"notify_time": stamp, "notify_type": "trade_status_sync", "notify_id": f"bench{index:012d}",
                  "charset": "utf-8", "version": "1.0", "app_id": ALIPAY_APP_ID, "auth_app_id": ALIPAY_APP_ID,
                  "out_trade_no": out_trade_no, "trade_no": f"2026{index:024d}", "trade_status": "TRADE_SUCCESS",
                  "total_amount": fen_to_yuan(amount_fen), "receipt_amount": fen_to_yuan(amount_fen),
                  "buyer_id": "2088000000000001", "seller_id": "2088000000000002", "subject": "水费充值 bench",
                  "gmt_create": stamp, "gmt_payment": stamp}
        text = unsigned_string(fields, skip=frozenset({"sign", "sign_type"}))
        sign = base64.b64encode(key.sign(text.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()
        bodies.append(urlencode({**fields, "sign": sign, "sign_type": "RSA2"}).encode())
    return bodies


def check_genuine(directory: Path, body: bytes) -> None:
    """The app's own gateway verifies one of the bodies (a wrong signing would measure refusals)."""
    from backend.payments.models import PaymentChannel
    from backend.payments.online.merchants import load_merchants
    from backend.payments.online.registry import OnlinePayments

    online = OnlinePayments(load_merchants(directory / "merchants.toml"))
    online.gateway(PaymentChannel.alipay, "demo").verify_notification({}, body)


# --------------------------------------------------------------------------- load


@dataclass
class Rate:
    name: str
    count: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.count / self.seconds


async def send_all(base: str, path: str, bodies: list[bytes], senders: int) -> float:
    """Post every body with ``senders`` concurrent senders; every answer must be 200 success."""
    queue = iter(bodies)
    failures: list[str] = []

    async def sender(client: httpx.AsyncClient) -> None:
        for body in queue:
            answer = await client.post(path, content=body, headers=FORM)
            if answer.status_code != 200 or answer.text != "success":
                failures.append(f"{answer.status_code} {answer.text[:200]}")

    limits = httpx.Limits(max_connections=senders, max_keepalive_connections=senders)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(sender(client) for _ in range(senders)))
        elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{len(failures)} of {len(bodies)} posts to {path} were not answered success: {failures[:3]}")
    return elapsed


async def lock_sampler(url: str, stop: asyncio.Event, seen: list[str]) -> None:
    """Record any table lock (stronger than ROW EXCLUSIVE) on the watched tables until ``stop``."""
    from backend.db import to_libpq_url

    connection = await asyncpg.connect(to_libpq_url(url))
    try:
        while not stop.is_set():
            rows = await connection.fetch("""
                SELECT c.relname, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                WHERE l.locktype = 'relation' AND l.mode = ANY($1::text[]) AND c.relname = ANY($2::text[])
            """, list(TABLE_LOCK_MODES), list(WATCHED_TABLES))
            seen.extend(f"{row['relname']} {row['mode']}" for row in rows)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
    finally:
        await connection.close()


async def counts(url: str) -> dict[str, int]:
    from backend.db import to_libpq_url

    connection = await asyncpg.connect(to_libpq_url(url))
    try:
        row = await connection.fetchrow("""
            SELECT (SELECT count(*) FROM payment_notifications) AS notifications,
                   (SELECT count(*) FROM payments) AS payments,
                   (SELECT count(*) FROM ledger_entries) AS entries,
                   (SELECT count(*) FROM payment_orders WHERE state <> 'paid') AS unpaid,
                   (SELECT count(*) FROM accounts a WHERE a.balance_fen <>
                        (SELECT coalesce(sum(e.amount_fen), 0) FROM ledger_entries e WHERE e.account_id = a.id))
                       AS unbalanced
        """)
        assert row is not None
        return dict(row)
    finally:
        await connection.close()


async def measured(name: str, url: str, base: str, path: str, bodies: list[bytes], senders: int) -> Rate:
    stop = asyncio.Event()
    seen: list[str] = []
    sampler = asyncio.create_task(lock_sampler(url, stop, seen))
    try:
        seconds = await send_all(base, path, bodies, senders)
    finally:
        stop.set()
        await sampler
    if seen:
        raise SystemExit(f"{name}: table locks seen: {sorted(set(seen))}")
    return Rate(name, len(bodies), seconds)


# --------------------------------------------------------------------------- main


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def server(url: str, merchants: Path, workdir: Path, pool_size: int) -> Iterator[str]:
    port = free_port()
    log = workdir / "server.log"
    command = [sys.executable, "-m", "uvicorn", "--factory", "notify:bench_app", "--app-dir", str(BENCH_DIR),
               "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning",
               "--loop", "uvloop" if _has("uvloop") else "asyncio", "--http", "httptools" if _has("httptools") else "h11"]
    env = {**os.environ, "BENCH_DATABASE_URL": url, "BENCH_POOL_SIZE": str(pool_size),
           "SHUIWU_PAYMENTS_CONFIG": str(merchants), "PYTHONPATH": str(BENCH_DIR.parent)}
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"the server did not answer /healthz:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def run(args: argparse.Namespace, workdir: Path, url: str) -> int:
    from backend.payments.online.testkeys import write_test_merchants

    written = write_test_merchants(workdir / "merchants", public_base_url="http://127.0.0.1:9")
    print(f"seeding {args.accounts} accounts and {args.count} orders …", flush=True)
    orders = await seed(url, accounts=args.accounts, count=args.count)
    bodies = signed_notifications(written.directory, orders)
    check_genuine(written.directory, bodies[0])
    with server(url, written.merchants_file, workdir, args.pool_size) as base:
        await send_all(base, FLOOR_PATH, bodies[:50], args.senders)  # warm both paths' code and pool
        before = await counts(url)
        # Genuine and floor alternate in slices, so a neighbour's load on the shared machine
        # weighs on both alike (the ratio is the figure; the rates drift with the machine).
        genuine, floor = Rate("genuine", 0, 0.0), Rate("floor", 0, 0.0)
        step = max(1, len(bodies) // args.slices)
        for start in range(0, len(bodies), step):
            part = bodies[start:start + step]
            for rate, path in ((genuine, NOTIFY_PATH), (floor, FLOOR_PATH)):
                done = await measured(rate.name, url, base, path, part, args.senders)
                rate.count, rate.seconds = rate.count + done.count, rate.seconds + done.seconds
        after = await counts(url)
        if after["payments"] - before["payments"] != args.count or after["unpaid"] or after["unbalanced"]:
            raise SystemExit(f"genuine: expected {args.count} payments, every order paid, ledgers = balances: "
                             f"{before} → {after}")
        replay = await measured("replay", url, base, NOTIFY_PATH, bodies, args.senders)
        replayed = await counts(url)
        if replayed != after:
            raise SystemExit(f"replay wrote something: {after} → {replayed}")
    for rate in (genuine, replay, floor):
        print(f"{rate.name:8s} {rate.count} notifications in {rate.seconds:6.2f} s: {rate.per_second:8.1f}/s")
    print(f"replay: nothing written ({after['notifications']} notifications, {after['payments']} payments, "
          f"{after['entries']} ledger entries before and after); no table lock seen")
    ratio = genuine.per_second / floor.per_second
    print(f"headline: genuine notifications/s vs verify+insert floor ratio={ratio:.2f} goal=>=0.50")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=10_000, help="orders, one genuine notification each")
    parser.add_argument("--accounts", type=int, default=500, help="accounts the orders are spread over")
    parser.add_argument("--senders", type=int, default=16, help="concurrent senders")
    parser.add_argument("--slices", type=int, default=10, help="genuine and floor alternate in this many slices")
    parser.add_argument("--pool-size", type=int, default=10, help="the server's database pool (and overflow)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="shuiwu-bench-notify-"))
    try:
        from backend.db import migrate

        with embedded_database(workdir) as url:
            migrate(url)
            return asyncio.run(run(args, workdir, url))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
