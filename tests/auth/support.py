"""What the auth tests share: a fixed clock, a policy, a fake SMS gateway, and row counts
for refusal tests."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth.service import TokenPair, claim_login_attempt, login_staff
from tests.factories import Staff, auth_policy

NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
POLICY = auth_policy("test-secret-of-at-least-thirty-two-bytes")

# Tables a refusal must leave alone; the names are constants, never input.
_COUNTED = frozenset(
    {
        "roles", "role_permissions", "role_areas", "staff_users", "staff_user_roles",
        "api_clients", "api_client_areas", "auth_sessions", "one_time_codes",
        "residents", "resident_households", "login_failures", "household_bindings",
    }
)


class FakeSms:
    """Stands in for the SMS gateway: records what would have been sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def send_login_code(self, phone: str, code: str) -> None:
        self.sent.append((phone, code))

    async def send_binding_code(self, phone: str, code: str, account_no: str) -> None:
        self.sent.append((phone, code))

    @property
    def last_code(self) -> str:
        return self.sent[-1][1]


async def row_count(session: AsyncSession, table: str) -> int:
    assert table in _COUNTED
    return int((await session.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


async def row_counts(session: AsyncSession, *tables: str) -> dict[str, int]:
    return {table: await row_count(session, table) for table in tables}


async def log_in(session: AsyncSession, staff: Staff, *, now: datetime = NOW) -> TokenPair:
    """Log in as the login mutation does: count the attempt, then check the password."""
    await claim_login_attempt(session, username=staff.username, now=now, policy=POLICY, ip="203.0.113.9")
    return await login_staff(session, username=staff.username, password=staff.password, now=now, policy=POLICY, ip="203.0.113.9")
