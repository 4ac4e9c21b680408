"""A notice's fan-out to 100k households, and its pushes (issue 19, "Performance").

Self-contained: an embedded PostgreSQL in a temp dir, migrated; one company area with
``--households`` households, each with a bound resident who has one or two active app
devices (every other resident two: 1.5 devices a resident), all written set-based.

**Fan-out** (``--rounds`` rounds; each publishes a new notice to everyone through the
real service, ``publish_notice``, and commits):

1. the real path: the handler of ``notice.published`` (``notice_messages``: the notice,
   then ``notify_households`` with the audience's query, whose one statement selects the
   households, expands them to the bound residents, writes the messages, queues the
   pushes in 1000-id batches and writes the ``message.created`` events), in one committed
   transaction, timed;
2. the floor: a bare ``INSERT INTO bench_messages SELECT * FROM messages WHERE
   dedupe_key = …`` of the very rows 1 wrote, into a table made ``LIKE messages
   INCLUDING ALL`` (the same columns, defaults and indexes), committed, timed. That
   table is new and empty every round, while ``messages`` holds the earlier rounds'
   notices (their inbox index entries interleave with the new ones); so, for
   information only, the same INSERT…SELECT also runs into one table kept across the
   rounds (``bench_messages_held``), which holds what ``messages`` holds.

Checked: each round writes one message per resident, and the same rows again on the
handler's replay (none: the dedupe key). Printed per round and as medians: messages/s of
both and their ratio.

**Pushes** (the first round's batches): the local JPush fake (``shuiwu fake-gateway
jpush``, a process of its own) receives them

1. through the real push job (``send_pushes``: one delivery row locked, the JPush SDK on
   the gateway's thread pool, the row marked sent), run until nothing is queued;
2. as bare HTTP posts of the same ``/v3/push`` bodies (httpx, one at a time as the job
   sends them, Basic auth as the SDK sends it).

Checked: every delivery ``sent``, and the fake answered every bare post 200. Printed:
registration ids pushed per second both ways, and their ratio.

The last line is ``headline: notice fan-out messages/s vs bare INSERT…SELECT ratio=<x.xx>
goal=>=0.50``. About a minute at the defaults on the shared 2-core machines; compare the
ratios, not the rates.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from _embedded import embedded_database, free_port
from _timing import spent, timed  # bench/ is the script directory: sys.path[0]

ROOT = Path(__file__).resolve().parent.parent
BENCH_SECRET = "bench-" + "x" * 40


# --------------------------------------------------------------------------- setup


@dataclass(frozen=True, slots=True)
class Seeded:
    households: int
    residents: int
    devices: int


async def seed(url: str, *, households: int) -> Seeded:
    """The company, its households, one bound resident each and their devices (set-based)."""
    from backend.archives.models import AreaKind
    from backend.archives.service import create_area
    from backend.db import create_engine, session_factory, to_libpq_url

    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        async with session_factory(engine)() as session, session.begin():
            area = await create_area(session, name="基准公司", kind=AreaKind.company)
            assert area.id is not None
            area_id = area.id
    finally:
        await engine.dispose()
    connection = await asyncpg.connect(to_libpq_url(url))
    try:
        async with connection.transaction():
            await connection.execute("""
                INSERT INTO households (account_no, name, area_id)
                SELECT 'P' || lpad(g::text, 8, '0'), '基准用户', $1 FROM generate_series(1, $2) g
            """, area_id, households)
            await connection.execute("""
                INSERT INTO residents (phone) SELECT '139' || lpad(g::text, 8, '0') FROM generate_series(1, $1) g
            """, households)
            await connection.execute("""
                INSERT INTO resident_households (resident_id, household_id, is_owner)
                SELECT r.id, h.id, true
                FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM residents) r
                JOIN (SELECT id, row_number() OVER (ORDER BY id) AS n FROM households) h USING (n)
            """)
            # One device each, a second for every other resident (1.5 a resident).
            await connection.execute("""
                INSERT INTO push_devices (registration_id, platform, user_kind, user_id, active, registered_at)
                SELECT 'reg' || r.id || '-' || d, CASE WHEN d = 1 THEN 'android' ELSE 'ios' END, 'resident', r.id,
                       true, now()
                FROM residents r CROSS JOIN generate_series(1, 2) d
                WHERE d = 1 OR r.id % 2 = 0
            """)
        await connection.execute("ANALYZE")
        residents = await connection.fetchval("SELECT count(*) FROM resident_households")
        devices = await connection.fetchval("SELECT count(*) FROM push_devices WHERE active")
    finally:
        await connection.close()
    return Seeded(households=households, residents=int(residents), devices=int(devices))


# --------------------------------------------------------------------------- the fan-out


@dataclass(frozen=True, slots=True)
class Round:
    notice_id: int
    messages: int
    real_s: float
    bare_s: float
    held_s: float  # the same INSERT…SELECT into a table holding the earlier rounds' rows

    @property
    def real_rate(self) -> float:
        return self.messages / self.real_s

    @property
    def bare_rate(self) -> float:
        return self.messages / self.bare_s

    @property
    def ratio(self) -> float:
        return self.real_rate / self.bare_rate

    @property
    def held_ratio(self) -> float:
        return self.held_s / self.real_s


def runtime_for(url: str, services: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """A Runtime over ``url`` (the system actor, the wall clock) and its engine."""
    from backend.db import create_engine, session_factory
    from backend.domain import system_principal
    from backend.domains import DOMAINS
    from backend.runtime import Runtime
    from backend.settings import Settings

    engine = create_engine(url, pool_size=2, max_overflow=0)
    runtime = Runtime(settings=Settings(secret_key=BENCH_SECRET), sessions=session_factory(engine),
                      actor=system_principal(DOMAINS), services=services or {})
    return runtime, engine


async def publish_to_all(runtime: Any, number: int) -> tuple[int, Any]:
    """A notice to everyone, published now through the service; its committed event."""
    from sqlalchemy import text

    from backend.events.service import load_event
    from backend.notifications import notices
    from backend.notifications.notices_models import NoticeAudience

    writer = notices.Writer(name="基准", scope_patterns=None)
    async with runtime.sessions() as session, session.begin():
        notice = await notices.create_notice(session, draft=notices.NoticeDraft(
            title=f"停水通知 {number}", body="因管网维修, 明日 9:00–17:00 停水, 请提前储水。", audience=NoticeAudience.all),
            writer=writer, files=None, now=runtime.now())
        assert notice.id is not None
        await notices.publish_notice(session, notice_id=notice.id, at=None, writer=writer, now=runtime.now())
    async with runtime.sessions() as session:
        event_id = (await session.execute(text(
            "SELECT id FROM domain_events WHERE kind = 'notice.published' AND key = :key"),
            {"key": f"notice:{notice.id}"})).scalar_one()
        event = await load_event(session, event_id)
    return notice.id, event


def instrument() -> None:
    """Time the fan-out's step (``_timing``): ``notify_households``, the one statement that
    selects the audience, writes the messages, pushes and events (and notifies those)."""
    from backend.notifications import service

    service.notify_households = timed("notify_households (all of it)", service.notify_households)  # type: ignore[assignment]


async def fan_out_round(runtime: Any, libpq_url: str, number: int, *, expected: int) -> Round:
    from backend.notifications.notices import notice_messages

    notice_id, event = await publish_to_all(runtime, number)
    started = time.perf_counter()
    async with runtime.sessions() as session, session.begin():
        written = await notice_messages(runtime, session, event)
    real_s = time.perf_counter() - started
    if written != expected:
        raise SystemExit(f"round {number}: the fan-out wrote {written} messages, expected {expected}")
    before = dict(spent)
    async with runtime.sessions() as session, session.begin():
        replayed = await notice_messages(runtime, session, event)
    spent.clear()
    spent.update(before)  # the replay is no part of the fan-out's figures
    if replayed:
        raise SystemExit(f"round {number}: the replayed event wrote {replayed} messages, expected none")

    connection = await asyncpg.connect(libpq_url)
    try:
        table = f"bench_messages_{number}"
        await connection.execute(f"CREATE TABLE {table} (LIKE messages INCLUDING ALL)")
        started = time.perf_counter()
        async with connection.transaction():
            status = await connection.execute(
                f"INSERT INTO {table} SELECT * FROM messages WHERE dedupe_key = $1", f"notice:{notice_id}")
        bare_s = time.perf_counter() - started
        if int(status.split()[-1]) != expected:
            raise SystemExit(f"round {number}: the bare INSERT…SELECT wrote {status}, expected {expected}")
        # For information: the same rows into one table kept across rounds, which then holds
        # the earlier rounds' copies as messages holds the earlier notices (its indexes grow
        # the same way; the headline's table starts empty every round).
        await connection.execute("CREATE TABLE IF NOT EXISTS bench_messages_held (LIKE messages INCLUDING ALL)")
        started = time.perf_counter()
        async with connection.transaction():
            status = await connection.execute(
                "INSERT INTO bench_messages_held SELECT * FROM messages WHERE dedupe_key = $1", f"notice:{notice_id}")
        held_s = time.perf_counter() - started
        if int(status.split()[-1]) != expected:
            raise SystemExit(f"round {number}: the held INSERT…SELECT wrote {status}, expected {expected}")
    finally:
        await connection.close()
    return Round(notice_id=notice_id, messages=expected, real_s=real_s, bare_s=bare_s, held_s=held_s)


# --------------------------------------------------------------------------- the pushes


@contextlib.contextmanager
def jpush_fake(port: int) -> Iterator[str]:
    """``shuiwu fake-gateway jpush`` in a process of its own; its base URL."""
    process = subprocess.Popen([sys.executable, "-m", "backend.cli", "fake-gateway", "jpush", "--port", str(port)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/_control/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                error = process.stderr.read().decode(errors="replace") if process.stderr else ""
                raise SystemExit(f"the JPush fake did not start: {error[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)


@dataclass(frozen=True, slots=True)
class Pushes:
    calls: int
    ids: int
    real_s: float
    bare_s: float


async def pushes(url: str, libpq_url: str, fake_url: str) -> Pushes:
    """The queued batches through the push job, then the same bodies posted bare."""
    from backend.domain import collect_services
    from backend.domains import DOMAINS
    from backend.notifications.delivery import send_pushes
    from backend.notifications.jpush import push_payload
    from backend.settings import Settings

    connection = await asyncpg.connect(libpq_url)
    try:
        rows = await connection.fetch(
            "SELECT title, body, extras, registration_ids FROM push_deliveries WHERE state = 'queued' ORDER BY id")
        calls = len(rows)
        ids = sum(len(row["registration_ids"]) for row in rows)
    finally:
        await connection.close()
    services = collect_services(Settings(secret_key=BENCH_SECRET), DOMAINS)
    runtime, engine = runtime_for(url, services)
    client = services["gateway.jpush"]
    settings = client.settings
    try:
        started = time.perf_counter()
        sent = 0
        while True:
            done = await send_pushes(runtime, {})
            sent += done
            if not done:
                break
        real_s = time.perf_counter() - started
    finally:
        await engine.dispose()
        for offered in services.values():
            closer = getattr(offered, "aclose", None)
            if callable(closer):
                await closer()
    connection = await asyncpg.connect(libpq_url)
    try:
        states = dict(await connection.fetch("SELECT state, count(*) FROM push_deliveries GROUP BY state"))
    finally:
        await connection.close()
    if sent != calls or states.get("sent", 0) != calls:
        raise SystemExit(f"the push job sent {sent} of {calls} deliveries (states {states})")

    import json

    bodies = [push_payload(registration_ids=row["registration_ids"], title=row["title"], body=row["body"],
                           extras=json.loads(row["extras"]) if isinstance(row["extras"], str) else row["extras"],
                           apns_production=settings.apns_production) for row in rows]
    secret = f"{settings.app_key}:{settings.master_secret.get_secret_value()}"
    headers = {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode()}
    async with httpx.AsyncClient(base_url=fake_url, headers=headers, timeout=30) as http:
        started = time.perf_counter()
        for body in bodies:
            answer = await http.post("/v3/push", json=body)
            if answer.status_code != 200:
                raise SystemExit(f"the fake answered a bare post {answer.status_code}: {answer.text[:300]}")
        bare_s = time.perf_counter() - started
    return Pushes(calls=calls, ids=ids, real_s=real_s, bare_s=bare_s)


# --------------------------------------------------------------------------- main


async def run(args: argparse.Namespace, url: str) -> int:
    import os

    from backend.db import to_libpq_url

    libpq_url = to_libpq_url(url)
    started = time.perf_counter()
    seeded = await seed(url, households=args.households)
    print(f"setup: {seeded.households} households, {seeded.residents} bound residents, {seeded.devices} devices "
          f"in {time.perf_counter() - started:.1f} s", flush=True)
    if args.setup_only:
        return 0

    port = free_port()
    os.environ["SHUIWU_JPUSH_URL"] = f"http://127.0.0.1:{port}"
    runtime, engine = runtime_for(url)
    rounds = []
    instrument()
    try:
        for number in range(1, args.rounds + 1):
            done = await fan_out_round(runtime, libpq_url, number, expected=seeded.residents)
            rounds.append(done)
            print(f"round {number}: {done.messages} messages — fan-out {done.real_s:.2f} s "
                  f"({done.real_rate:,.0f}/s), bare INSERT…SELECT {done.bare_s:.2f} s ({done.bare_rate:,.0f}/s), "
                  f"ratio {done.ratio:.2f}; into a table holding the earlier rounds' rows {done.held_s:.2f} s "
                  f"(ratio {done.held_ratio:.2f})", flush=True)
    finally:
        await engine.dispose()
    # Later rounds' pushes stay out of the push figure: the first round's batches only.
    connection = await asyncpg.connect(libpq_url)
    try:
        await connection.execute(
            # A delivery holds messages of one notify_many call: its first message tells whose it is.
            "UPDATE push_deliveries d SET state = 'failed', reason = 'bench: not sent' WHERE d.state = 'queued' "
            "AND NOT EXISTS (SELECT FROM messages m WHERE m.id = d.message_ids[1] AND m.dedupe_key = $1)",
            f"notice:{rounds[0].notice_id}")
    finally:
        await connection.close()

    real_rate = statistics.median(r.real_rate for r in rounds)
    bare_rate = statistics.median(r.bare_rate for r in rounds)
    print(f"fan-out (median of {len(rounds)}): {real_rate:,.0f} messages/s; bare INSERT…SELECT {bare_rate:,.0f} rows/s")
    total = sum(r.real_s for r in rounds)
    for name, seconds in spent.items():
        print(f"  {name}: {seconds / len(rounds):.2f} s a round ({seconds / total:.0%} of the fan-out)")

    if not args.skip_pushes:
        with jpush_fake(port) as fake_url:
            sent = await pushes(url, libpq_url, fake_url)
        print(f"pushes: {sent.calls} JPush calls, {sent.ids} registration ids — push job {sent.real_s:.2f} s "
              f"({sent.ids / sent.real_s:,.0f} ids/s, {sent.calls / sent.real_s:,.1f} calls/s); bare HTTP posts "
              f"{sent.bare_s:.2f} s ({sent.ids / sent.bare_s:,.0f} ids/s, {sent.calls / sent.bare_s:,.1f} calls/s); "
              f"ratio {sent.bare_s / sent.real_s:.2f}")

    print(f"for information: fan-out vs bare INSERT…SELECT into a table holding the earlier rounds' rows "
          f"ratio={statistics.median(r.held_ratio for r in rounds):.2f} (round 1: both tables empty)")
    ratio = statistics.median(r.ratio for r in rounds)
    print(f"headline: notice fan-out messages/s vs bare INSERT…SELECT ratio={ratio:.2f} goal=>=0.50")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--households", type=int, default=100_000, help="households, one bound resident each")
    parser.add_argument("--rounds", type=int, default=3, help="notices published (fan-out and floor each round)")
    parser.add_argument("--skip-pushes", action="store_true", help="leave the JPush part out")
    parser.add_argument("--setup-only", action="store_true", help="seed, print the setup and stop")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="shuiwu-bench-push-"))
    try:
        from backend.db import migrate

        with embedded_database(workdir) as url:
            migrate(url)
            return asyncio.run(run(args, url))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
