"""The SMS claims of login and binding codes: one lock order for the phone's counter and
the day's claim (no deadlock, a refusal claims nothing), the resend minute claimed before
anything is sent (a double tap sends one SMS), and a code kept when the send's outcome is
unknown (the vendor may have delivered it)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.auth import errors
from backend.auth import service as auth
from backend.auth.service.residents import codes_sent_key
from backend.auth.service.throttles import claim_sms, count_daily_hit
from backend.gateways.errors import GatewayTimeout, GatewayUnavailable
from tests.auth.support import NOW, POLICY, FakeSms
from tests.auth.test_residents import log_in_resident
from tests.factories import make_area_tree, make_household

CAPPED = dataclasses.replace(POLICY, sms_codes_per_phone_per_day=1)


async def claimed_today(session: AsyncSession) -> int:
    return int((await session.execute(text("SELECT coalesce(sum(claimed), 0) FROM sms_sends"))).scalar_one())


async def test_a_binding_the_phones_daily_limit_refuses_claims_none_of_the_days_sms(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    first = await make_household(session, area=tree.east_community, name="甲", phone="13700000001")
    second = await make_household(session, area=tree.east_community, name="乙", phone="13700000001")
    resident = (await log_in_resident(session, phone="13900000009")).principal
    sent = await auth.bind_household(session, resident=resident, account_no=first.account_no, name="甲", now=NOW, policy=CAPPED)
    before = await claimed_today(session)

    refused = await auth.bind_household(session, resident=resident, account_no=second.account_no, name="乙", now=NOW,
                                        policy=CAPPED)

    assert sent.unsent_code is not None and refused.unsent_code is None
    assert await claimed_today(session) == before


async def test_a_binding_the_days_cap_refuses_counts_nothing_for_the_phone(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    household = await make_household(session, area=tree.east_community, name="甲", phone="13700000003")
    resident = (await log_in_resident(session, phone="13900000008")).principal
    await claim_sms(session, now=NOW, policy=POLICY)  # the day's row, now spent:
    spent = dataclasses.replace(POLICY, sms_daily_cap=await claimed_today(session))

    outcome = await auth.bind_household(session, resident=resident, account_no=household.account_no, name="甲", now=NOW,
                                        policy=spent)

    assert outcome.unsent_code is None
    hits = (await session.execute(text("SELECT coalesce(sum(hits), 0) FROM auth_throttle WHERE key = :key"),
                                  {"key": codes_sent_key("13700000003")})).scalar_one()
    assert hits == 0


async def test_a_login_code_and_a_binding_for_one_phone_at_once_do_not_deadlock(
    committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    owner = "13700000002"
    async with committed_sessions() as s, s.begin():
        tree = await make_area_tree(s)
        household = await make_household(s, area=tree.east_community, name="丙", phone=owner)
    async with committed_sessions() as s, s.begin():
        resident = (await log_in_resident(s, phone="13900000011")).principal

    async with committed_sessions() as login, committed_sessions() as binding, login.begin(), binding.begin():
        # The login code request holds the phone's counter (claim_code_send's first step) …
        await count_daily_hit(login, key=codes_sent_key(owner), now=NOW, limit=POLICY.sms_codes_per_phone_per_day,
                              refusal=errors.CodeDailyLimit())
        # … the binding for the same phone starts and must wait for it without taking the day's row …
        bind = asyncio.create_task(auth.bind_household(binding, resident=resident, account_no=household.account_no,
                                                       name="丙", now=NOW, policy=POLICY))
        await asyncio.sleep(0.5)
        # … so the login request claims the day's SMS and commits, and then the binding goes on.
        await claim_sms(login, now=NOW, policy=POLICY)
        await login.commit()
        outcome = await asyncio.wait_for(bind, timeout=10)

    assert outcome.unsent_code is not None


class SlowSms(FakeSms):
    """A vendor slow to answer the first send: ``sending`` is set while it waits for ``answer``."""

    def __init__(self) -> None:
        super().__init__()
        self.sending, self.answer = asyncio.Event(), asyncio.Event()

    async def send_login_code(self, phone: str, code: str) -> None:
        if not self.sending.is_set():
            self.sending.set()
            await self.answer.wait()
        await super().send_login_code(phone, code)


async def test_a_second_request_while_the_first_code_is_being_sent_sends_nothing(
    committed_sessions: async_sessionmaker[AsyncSession],
) -> None:
    phone, sms = "13900000012", SlowSms()

    async def request(ip: str) -> None:
        async with committed_sessions() as s, s.begin():
            await auth.claim_code_send(s, phone=phone, now=NOW, policy=POLICY, ip=ip)
        async with committed_sessions() as s, s.begin():
            await auth.request_login_code(s, phone=phone, now=NOW, policy=POLICY, sender=sms)

    first = asyncio.create_task(request("203.0.113.21"))
    await asyncio.wait_for(sms.sending.wait(), timeout=10)
    # A double tap: the first code is still on its way to the vendor.
    with pytest.raises(errors.CodeRateLimited):
        await request("203.0.113.22")
    sms.answer.set()
    await asyncio.wait_for(first, timeout=10)

    assert len(sms.sent) == 1
    async with committed_sessions() as s, s.begin():
        pair = await auth.login_resident(s, phone=phone, code=sms.last_code, now=NOW, policy=POLICY)
    assert pair.principal.is_resident


class FailingSms(FakeSms):
    def __init__(self, failure: Exception) -> None:
        super().__init__()
        self.failure = failure

    async def send_login_code(self, phone: str, code: str) -> None:
        await super().send_login_code(phone, code)
        raise self.failure

    async def send_binding_code(self, phone: str, code: str, account_no: str) -> None:
        await super().send_binding_code(phone, code, account_no)
        raise self.failure


@pytest.mark.parametrize("failure", [
    GatewayTimeout(detail="ReadTimeout"),
    GatewayUnavailable(detail="ConnectionError: ('Connection aborted.', ConnectionResetError(104))", maybe_done=True),
], ids=["timeout", "reset after sending"])
async def test_a_send_whose_outcome_is_unknown_keeps_the_code(session: AsyncSession, failure: Exception) -> None:
    phone, sms = "13900000013", FailingSms(failure)
    await auth.claim_code_send(session, phone=phone, now=NOW, policy=POLICY, ip="203.0.113.23")

    await auth.request_login_code(session, phone=phone, now=NOW, policy=POLICY, sender=sms)

    # The vendor may have delivered it: the code the resident reads still signs them in.
    pair = await auth.login_resident(session, phone=phone, code=sms.last_code, now=NOW, policy=POLICY)
    assert pair.principal.is_resident


@pytest.mark.parametrize("failure", [
    errors.SmsRejected(detail="aliyun refused: isv.AMOUNT_NOT_ENOUGH"),
    GatewayUnavailable(detail="ConnectionError: connection refused"),
    GatewayTimeout(detail="ConnectTimeout", maybe_done=False),
], ids=["vendor refused", "never connected", "connect timeout"])
async def test_a_send_refused_for_sure_keeps_no_code_and_gives_the_minute_back(
    session: AsyncSession, failure: Exception,
) -> None:
    phone, sms = "13900000014", FailingSms(failure)
    await auth.claim_code_send(session, phone=phone, now=NOW, policy=POLICY, ip="203.0.113.24")

    with pytest.raises(type(failure)):
        async with session.begin_nested():
            await auth.request_login_code(session, phone=phone, now=NOW, policy=POLICY, sender=sms)
    await auth.release_code_claim(session, phone=phone, now=NOW)

    with pytest.raises(errors.InvalidCode):
        await auth.login_resident(session, phone=phone, code=sms.last_code, now=NOW, policy=POLICY)
    # Nothing went out: the resident may ask again at once.
    await auth.claim_code_send(session, phone=phone, now=NOW, policy=POLICY, ip="203.0.113.24")
    await auth.request_login_code(session, phone=phone, now=NOW, policy=POLICY, sender=FakeSms())


async def test_a_binding_code_whose_send_timed_out_is_kept_and_one_refused_is_raised(session: AsyncSession) -> None:
    tree = await make_area_tree(session)
    household = await make_household(session, area=tree.east_community, name="丁", phone="13700000004")
    resident = (await log_in_resident(session, phone="13900000015")).principal
    outcome = await auth.bind_household(session, resident=resident, account_no=household.account_no, name="丁", now=NOW,
                                        policy=POLICY)
    timed_out = FailingSms(GatewayTimeout(detail="ReadTimeout"))

    await auth.send_binding_code(outcome, sender=timed_out)
    with pytest.raises(errors.SmsPhoneLimited):
        await auth.send_binding_code(outcome, sender=FailingSms(errors.SmsPhoneLimited(detail="limit")))

    # The owner may have got it: the code still confirms the binding.
    confirmed = await auth.confirm_household_binding(session, resident=resident, binding_id=outcome.binding.id,
                                                     code=timed_out.last_code, now=NOW, policy=POLICY)
    assert confirmed.household is not None
