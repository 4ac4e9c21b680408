"""Account queries (账户管理): ``accounts`` (销户 / 充值缴费 lists), ``account``,
``accountStatement`` and its Excel link, ``prepaidStatements`` (历史账单), the
``node(id:)`` fetcher of ``Account`` and ``Household.account`` / ``Household.accounts``."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

import strawberry
from strawberry.types import Info

from backend.auth.principal import Principal
from backend.billing import statements
from backend.billing.accounts import account_in_scope
from backend.billing.http import STATEMENT_EXPORT_PATH
from backend.billing.models import AccountStatus, AlertState, BillingMode
from backend.billing.schema.types import (
    AccountsByHouseholdIdLoader,
    AccountStatementType,
    AccountStatusEnum,
    AccountType,
    AlertStateEnum,
    BillingModeEnum,
    LedgerEntryType,
    LedgerKindTotalType,
    PrepaidMonthStatementType,
    caller_reach,
)
from backend.clock import utcnow
from backend.errors import DomainError, NotFound
from backend.graphql.context import Context
from backend.graphql.extend import TypeExtension
from backend.graphql.pagination import Connection, PageRequest
from backend.graphql.periods import FROM_DAY, TO_DAY
from backend.graphql.permissions import Requires, RequiresAny
from backend.graphql.relay import decode_id

READ = [Requires("accounts:read")]
# Residents will read their own household's (the resident app's 历史账单): the rule is
# the readings' one, a bound household instead of an area scope (caller_reach).
READ_OWN = [RequiresAny("accounts:read", "resident:self")]


async def fetch_account(context: Any, pk: int) -> AccountType | None:
    """An account the caller may see: in a staff member's scope (``accounts:read``), or of
    a resident's own household."""
    principal: Principal | None = context.principal
    if principal is None or not (principal.has("accounts:read") or principal.is_resident):
        return None
    async with context.read() as session:
        try:
            account = await account_in_scope(session, pk, **caller_reach(principal))
        except DomainError:
            return None
    return AccountType.from_row(account)


@strawberry.input(description="Filters of the accounts list; each left out filters nothing.")
class AccountFilterInput:
    area_id: strawberry.ID | None = strawberry.field(default=None, description="Households in this area's subtree.")
    mode: BillingModeEnum | None = None  # type: ignore[valid-type]
    status: AccountStatusEnum | None = None  # type: ignore[valid-type]
    alert_state: AlertStateEnum | None = None  # type: ignore[valid-type]
    search: str | None = strawberry.field(default=None,
                                          description="Account number (编码), name, phone or address, in part.")

    def to_filter(self) -> statements.AccountFilter:
        return statements.AccountFilter(
            area_id=decode_id(self.area_id, "Area", field="areaId") if self.area_id else None,
            mode=BillingMode(self.mode) if self.mode is not None else None,
            status=AccountStatus(self.status) if self.status is not None else None,
            alert_state=AlertState(self.alert_state) if self.alert_state is not None else None,
            search=self.search,
        )


def _account_pk(account_id: strawberry.ID) -> int:
    return decode_id(account_id, "Account", field="accountId")


@strawberry.type
class Query:
    @strawberry.field(permission_classes=READ,
                      description="Accounts (销户 / 充值缴费 lists) of households in your scope, by account number.")
    async def accounts(
        self, info: Info, filter: AccountFilterInput | None = None, first: int | None = None, after: str | None = None,
    ) -> Connection[AccountType]:
        page = PageRequest.from_args(first, after)
        account_filter = filter.to_filter() if filter is not None else statements.AccountFilter()
        async with info.context.read() as session:
            found = await statements.account_page(session, scope_patterns=info.context.caller.scope_patterns(),
                                                  account_filter=account_filter, offset=page.offset, limit=page.limit)
        return Connection.from_page([AccountType.from_list_row(row) for row in found.rows], total=found.total,
                                    offset=page.offset)

    @strawberry.field(permission_classes=READ_OWN,
                      description="One account: in your scope, or of your own household. Others are NOT_FOUND.")
    async def account(self, info: Info, id: strawberry.ID) -> AccountType:
        found = await fetch_account(info.context, decode_id(id, "Account"))
        if found is None:
            raise NotFound(field="id")
        return found

    @strawberry.field(
        permission_classes=READ,
        description="An account's statement (对账单) over the days [from, to] (at most 366, RANGE_TOO_LONG): "
        "opening and closing balance, the net per entry kind, and the entries, oldest first.",
    )
    async def account_statement(
        self, info: Info, account_id: strawberry.ID,
        from_: Annotated[date, strawberry.argument(name="from", description=FROM_DAY)],
        to: Annotated[date, strawberry.argument(description=TO_DAY)],
        first: int | None = None, after: str | None = None,
    ) -> AccountStatementType:
        page = PageRequest.from_args(first, after)
        start, end = statements.day_range(from_, to, tz=info.context.settings.tz)
        async with info.context.read() as session:
            figures = await statements.statement_figures(session, account_id=_account_pk(account_id), start=start,
                                                         end=end, scope_patterns=info.context.caller.scope_patterns())
            entries = await statements.statement_entries(session, account_id=_account_pk(account_id), start=start,
                                                         end=end, offset=page.offset, limit=page.limit)
        return AccountStatementType(
            account=AccountType.from_row(figures.account), from_=from_, to=to, opening_balance=figures.opening_fen,
            closing_balance=figures.closing_fen,
            totals=[LedgerKindTotalType(kind=kind, amount=amount) for kind, amount in figures.totals_fen.items()],
            entries=Connection.from_page([LedgerEntryType.of(e) for e in entries], total=figures.entries,
                                         offset=page.offset),
        )

    @strawberry.field(
        permission_classes=READ,
        description="A relative URL downloading `accountStatement` (days [from, to]) as .xlsx, valid 5 minutes "
        "without an Authorization header (signed for you and these arguments).",
    )
    async def account_statement_export_url(
        self, info: Info, account_id: strawberry.ID,
        from_: Annotated[date, strawberry.argument(name="from", description=FROM_DAY)],
        to: Annotated[date, strawberry.argument(description=TO_DAY)],
    ) -> str:
        context: Context = info.context
        statements.day_range(from_, to, tz=context.settings.tz)  # a bad range is refused now, not at download
        async with context.read() as session:
            await account_in_scope(session, _account_pk(account_id), context.caller.scope_patterns(),
                                   field="accountId")
        params = {"accountId": account_id, "from": from_.isoformat(), "to": to.isoformat()}
        return context.signed_link(STATEMENT_EXPORT_PATH, params)

    @strawberry.field(
        permission_classes=READ_OWN,
        description="The prepaid monthly statement (历史账单): the last `months` months (1 to "
        f"{statements.MAX_MONTHS}) since the account opened, newest first. Staff read accounts in their scope; "
        "a resident their own household's.",
    )
    async def prepaid_statements(self, info: Info, account_id: strawberry.ID,
                                 months: int = 12) -> list[PrepaidMonthStatementType]:
        context = info.context
        async with context.read() as session:
            found = await statements.prepaid_months(session, account_id=_account_pk(account_id), months=months,
                                                    now=utcnow(), tz=context.settings.tz,
                                                    **caller_reach(context.caller))
        return [PrepaidMonthStatementType.of(month) for month in found]


@strawberry.type
class HouseholdAccountFields:
    @strawberry.field(permission_classes=READ_OWN,
                      description="The open account; null: no account yet (开户 offers openAccount).")
    async def account(self, info: Info) -> AccountType | None:
        household: Any = self  # the archives' Household
        accounts = await info.context.loader(AccountsByHouseholdIdLoader).load(household.pk)
        current = [a for a in accounts if a.status is AccountStatus.open]
        return AccountType.from_row(current[0]) if current else None

    @strawberry.field(permission_classes=READ_OWN,
                      description="Every account of the household, newest first (closed ones are history).")
    async def accounts(self, info: Info) -> list[AccountType]:
        household: Any = self
        return [AccountType.from_row(a) for a in await info.context.loader(AccountsByHouseholdIdLoader).load(household.pk)]


EXTENSIONS = (TypeExtension("Household", HouseholdAccountFields),)
NODES = {"Account": fetch_account}
