"""销户 at the desk: which reading closes the account, then :func:`close_account`.

The final reading is, in this order:

1. one the cashier types (``final_reading``, a register total in m³): stored first as a
   manual reading on the household's current meter through the readings' manual entry
   (``backend.readings.entry.enter_reading``: its validation, quality and
   ``readings.ingested``), at ``final_reading_at`` (default now); a household with no
   current meter, or several, cannot take one (BAD_USER_INPUT on ``finalReading``: enter
   each meter's reading first, then close without one);
2. otherwise the newest stored reading of the household's current meters
   (``latest_readings``);
3. a household with no meter or no reading at all has nothing to price: the account is
   charged up to now (which charges nothing) and closed.

The final charge, the refund or collection and the close are then
:func:`backend.payments.counter.close_account`'s, in the same transaction as the
reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, tzinfo
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.service import assignments_by_household_ids
from backend.billing.accounts import account_in_scope
from backend.errors import BadUserInput
from backend.payments.counter import ClosedAccount, Operator, close_account
from backend.payments.models import PaymentChannel
from backend.readings.entry import enter_reading
from backend.readings.service import latest_readings

__all__ = ["close_account_at_desk", "final_reading_instant"]


async def final_reading_instant(
    session: AsyncSession,
    *,
    household_id: int,
    final_reading: Decimal | None,
    final_reading_at: datetime | None,
    by: str,
    now: datetime,
    tz: str | tzinfo,
    scope_patterns: Sequence[str] | None,
) -> datetime:
    """The instant the account is charged up to (module docstring), storing the desk's
    reading first when one is given."""
    current = [a.meter_id for a in (await assignments_by_household_ids(session, [household_id])).get(household_id, [])
               if a.valid_to is None]
    if final_reading is None:
        if final_reading_at is not None:
            raise BadUserInput("只有填写最终读数时才能指定其时间", "finalReadingAt goes with finalReading",
                               field="finalReadingAt")
        latest = await latest_readings(session, meter_ids=current) if current else {}
        return max((row.read_at for row in latest.values()), default=now)
    if len(current) != 1:
        raise BadUserInput("该用户没有水表或有多块水表: 请先逐表录入读数, 再不填最终读数销户",
                           "The household has no meter or several: enter each meter's reading first, then close "
                           "without finalReading", field="finalReading")
    read_at = final_reading_at if final_reading_at is not None else now
    await enter_reading(session, meter_id=current[0], read_at=read_at, total_m3=final_reading, by=by, now=now, tz=tz,
                        scope_patterns=scope_patterns)
    return read_at


async def close_account_at_desk(
    session: AsyncSession,
    *,
    account_id: int,
    operator: Operator,
    now: datetime,
    idempotency_key: str,
    tz: str | tzinfo = "Asia/Shanghai",
    final_reading: Decimal | None = None,
    final_reading_at: datetime | None = None,
    collect_channel: PaymentChannel = PaymentChannel.cash,
    collect_reference: str | None = None,
    collect_bank_partner: str | None = None,
    collect_bank_outlet: str | None = None,
    scope_patterns: Sequence[str] | None = None,
) -> ClosedAccount:
    """销户 with the desk's final reading or the meter's latest (module docstring). The
    caller commits."""
    account = await account_in_scope(session, account_id, scope_patterns, field="accountId")
    at = await final_reading_instant(session, household_id=account.household_id, final_reading=final_reading,
                                     final_reading_at=final_reading_at, by=operator.name, now=now, tz=tz,
                                     scope_patterns=scope_patterns)
    return await close_account(session, account_id=account_id, final_reading_at=at, operator=operator, now=now,
                               idempotency_key=idempotency_key, tz=tz, collect_channel=collect_channel,
                               collect_reference=collect_reference, collect_bank_partner=collect_bank_partner,
                               collect_bank_outlet=collect_bank_outlet, scope_patterns=scope_patterns)
