"""Account mutations (开户 / 批量开户 / 修改 / 最终结算 / 销户, 手工结算): each one
transaction with its audit entry under the declared operation (``backend.billing.domain``),
refusals as payload errors. The rules live in ``backend.billing.accounts``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.billing import accounts
from backend.billing.accounts import KEEP, AccountTerms, OpenedAccounts
from backend.billing.models import Account, BillingMode
from backend.billing.schema.types import AccountType, BillingModeEnum, PrepaidSettlementType
from backend.billing.settlement import PrepaidSettlement
from backend.clock import utcnow
from backend.graphql.errors import UserError
from backend.graphql.mutations import run_mutation
from backend.graphql.permissions import Requires
from backend.graphql.relay import decode_id
from backend.graphql.scalars import Money

MANAGE = [Requires("accounts:manage")]
SETTLE = [Requires("prepaid:settle")]
PayloadT = TypeVar("PayloadT")


@strawberry.type
class AccountPayload:
    account: AccountType | None
    errors: list[UserError]


@strawberry.type
class OpenAccountsPayload:
    opened: int = strawberry.field(description="Accounts opened.")
    skipped: int = strawberry.field(description="Households of the subtree with an open account already, or closed.")
    errors: list[UserError]


@strawberry.type
class FinalChargePayload:
    account: AccountType | None
    settlement: PrepaidSettlementType | None
    errors: list[UserError]


@strawberry.type
class SettlePrepaidPayload:
    settlement: PrepaidSettlementType | None
    errors: list[UserError]


@strawberry.input(description="开户: the account's terms; each left out takes its default.")
class OpenAccountInput:
    household_id: strawberry.ID
    mode: BillingModeEnum  # type: ignore[valid-type]
    tariff_code: str | None = strawberry.field(
        default=None, description="Default: the lowest code in force today for the household's customer type.")
    persons: int | None = strawberry.field(default=None, description="户籍人数; null: no household-size extension.")
    alert_threshold: Money | None = strawberry.field(default=None, description="Default ¥20.00.")  # type: ignore[valid-type]
    close_threshold: Money | None = strawberry.field(  # type: ignore[valid-type]
        default=None, description="Default ¥0.00; may be negative, never above the alert threshold.")
    grace: Money | None = strawberry.field(default=None, description="Default ¥0.00; not negative.")  # type: ignore[valid-type]
    vulnerable: bool | None = None


@strawberry.input(description="批量开户: one mode, tariff and thresholds for every household of a subtree.")
class OpenAccountsInput:
    area_id: strawberry.ID
    mode: BillingModeEnum  # type: ignore[valid-type]
    tariff_code: str
    alert_threshold: Money | None = None  # type: ignore[valid-type]
    close_threshold: Money | None = None  # type: ignore[valid-type]
    grace: Money | None = None  # type: ignore[valid-type]


@strawberry.input(description="What updateAccount changes; a field left out keeps its value.")
class UpdateAccountInput:
    tariff_code: str | None = strawberry.UNSET
    persons: int | None = strawberry.field(default=strawberry.UNSET,
                                           description="null clears it (no household-size extension).")
    alert_threshold: Money | None = strawberry.UNSET  # type: ignore[valid-type]
    close_threshold: Money | None = strawberry.UNSET  # type: ignore[valid-type]
    grace: Money | None = strawberry.UNSET  # type: ignore[valid-type]
    vulnerable: bool | None = strawberry.UNSET


def _given(value: Any) -> Any:
    """None for a field left out or null (AccountTerms' "keep"), else the value."""
    return None if value is strawberry.UNSET else value


def _scope(info: Info) -> list[str]:
    return info.context.caller.scope_patterns()  # type: ignore[no-any-return]


def _by(info: Info) -> str:
    return str(info.context.caller.name)


def _account(account: Account | None, errors: list[UserError]) -> AccountPayload:
    return AccountPayload(account=AccountType.from_row(account) if account is not None else None, errors=errors)


async def _run(info: Info, action: str, describe: Callable[[Any], str],
               payload: Callable[[Any, list[UserError]], PayloadT],
               work: Callable[[AsyncSession], Awaitable[Any]]) -> PayloadT:
    return await run_mutation(info, action=action, describe=describe, payload=payload, work=work)


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=MANAGE, description="开户: open the household's account. A household with "
                         "an open account is ACCOUNT_EXISTS; a closed household HOUSEHOLD_CLOSED.")
    async def open_account(self, info: Info, input: OpenAccountInput) -> AccountPayload:
        async def work(session: AsyncSession) -> Account:
            terms = AccountTerms(tariff_code=input.tariff_code, persons=input.persons,
                                 alert_threshold_fen=input.alert_threshold, close_threshold_fen=input.close_threshold,
                                 grace_fen=input.grace, vulnerable=input.vulnerable)
            return await accounts.open_account(
                session, household_id=decode_id(input.household_id, "Household", field="householdId"),
                mode=BillingMode(input.mode), terms=terms, now=utcnow(), by=_by(info), tz=info.context.settings.tz,
                scope_patterns=_scope(info))

        return await _run(info, "openAccount", lambda _: "开户", _account, work)

    @strawberry.mutation(permission_classes=MANAGE, description="批量开户: open an account for every household of the "
                         "area's subtree that has none and is not closed; the rest are counted as skipped.")
    async def open_accounts(self, info: Info, input: OpenAccountsInput) -> OpenAccountsPayload:
        async def work(session: AsyncSession) -> OpenedAccounts:
            terms = AccountTerms(alert_threshold_fen=input.alert_threshold, close_threshold_fen=input.close_threshold,
                                 grace_fen=input.grace)
            return await accounts.open_accounts(
                session, area_id=decode_id(input.area_id, "Area", field="areaId"), mode=BillingMode(input.mode),
                tariff_code=input.tariff_code, terms=terms, now=utcnow(), by=_by(info), tz=info.context.settings.tz,
                scope_patterns=_scope(info))

        def payload(opened: OpenedAccounts | None, errors: list[UserError]) -> OpenAccountsPayload:
            return OpenAccountsPayload(opened=opened.opened if opened else 0, skipped=opened.skipped if opened else 0,
                                       errors=errors)

        return await _run(info, "openAccounts",
                          lambda opened: f"批量开户 {opened.opened} 户" if opened else "批量开户", payload, work)

    @strawberry.mutation(permission_classes=MANAGE, description="Change an open account's tariff, household size, "
                         "thresholds or vulnerable flag; the alert state follows the thresholds at once.")
    async def update_account(self, info: Info, id: strawberry.ID, input: UpdateAccountInput) -> AccountPayload:
        async def work(session: AsyncSession) -> Account:
            terms = AccountTerms(
                tariff_code=_given(input.tariff_code),
                persons=KEEP if input.persons is strawberry.UNSET else input.persons,
                alert_threshold_fen=_given(input.alert_threshold), close_threshold_fen=_given(input.close_threshold),
                grace_fen=_given(input.grace), vulnerable=_given(input.vulnerable))
            return await accounts.update_account(session, account_id=decode_id(id, "Account"), terms=terms,
                                                 scope_patterns=_scope(info), now=utcnow(),
                                                 tz=info.context.settings.tz)

        return await _run(info, "updateAccount", lambda _: "修改账户", _account, work)

    @strawberry.mutation(permission_classes=MANAGE, description="最终结算: price the account's usage up to `at` (its "
                         "final reading, not in the future) and mark it settled to `at`.")
    async def final_charge(self, info: Info, id: strawberry.ID, at: datetime) -> FinalChargePayload:
        async def work(session: AsyncSession) -> tuple[Account, PrepaidSettlement]:
            account_id = decode_id(id, "Account")
            settled = await accounts.final_charge(session, account_id=account_id, at=at, tz=info.context.settings.tz,
                                                  scope_patterns=_scope(info), now=utcnow())
            account = await session.get(Account, account_id, populate_existing=True)
            assert account is not None
            return account, settled

        def payload(done: tuple[Account, PrepaidSettlement] | None, errors: list[UserError]) -> FinalChargePayload:
            return FinalChargePayload(account=AccountType.from_row(done[0]) if done else None,
                                      settlement=PrepaidSettlementType.of(done[1]) if done else None, errors=errors)

        return await _run(info, "finalCharge", lambda _: "最终结算", payload, work)

    @strawberry.mutation(permission_classes=MANAGE, description="销户 of a settled account with a zero balance: "
                         "ACCOUNT_UNSETTLED while a reading is not settled (make the final charge), "
                         "BALANCE_OUTSTANDING while money is owed or held (refund or collect it).")
    async def close_settled_account(self, info: Info, id: strawberry.ID) -> AccountPayload:
        async def work(session: AsyncSession) -> Account:
            return await accounts.close_settled_account(session, account_id=decode_id(id, "Account"), now=utcnow(),
                                                        by=_by(info), scope_patterns=_scope(info),
                                                        tz=info.context.settings.tz)

        return await _run(info, "closeSettledAccount", lambda _: "销户", _account, work)

    @strawberry.mutation(permission_classes=SETTLE, description="手工结算: settle every open master-station prepaid "
                         "account of the area's subtree to now.")
    async def settle_prepaid(self, info: Info, area_id: strawberry.ID) -> SettlePrepaidPayload:
        async def work(session: AsyncSession) -> PrepaidSettlement:
            return await accounts.settle_area(session, area_id=decode_id(area_id, "Area", field="areaId"),
                                              now=utcnow(), by=_by(info), tz=info.context.settings.tz,
                                              scope_patterns=_scope(info))

        def payload(settled: PrepaidSettlement | None, errors: list[UserError]) -> SettlePrepaidPayload:
            return SettlePrepaidPayload(settlement=PrepaidSettlementType.of(settled) if settled else None,
                                        errors=errors)

        return await _run(info, "settlePrepaid",
                          lambda settled: f"预付费结算 {settled.accounts} 户" if settled else "预付费结算", payload, work)
