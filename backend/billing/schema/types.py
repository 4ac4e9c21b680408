"""Account types, their enums and DataLoaders. The archives' ``Household`` is reached by
its GraphQL name (``strawberry.lazy``) and built through the class the schema holds, so
this module imports nothing of the archives' schema (tests/test_layers.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.archives import service as archives
from backend.archives.models import Household
from backend.auth.principal import Principal
from backend.billing import statements
from backend.billing.models import Account, AccountStatus, AlertState, BillingMode, EntryKind
from backend.billing.settlement import PrepaidSettlement
from backend.graphql.loaders import SessionLoader
from backend.graphql.pagination import Connection
from backend.graphql.relay import Node, encode_id
from backend.graphql.scalars import Money

HouseholdRef = Annotated["HouseholdType", strawberry.lazy("backend.archives.schema.types")]  # type: ignore[name-defined]  # noqa: F821

BillingModeEnum = strawberry.enum(BillingMode, name="BillingMode",
                                  description="主站预付费 / IC卡预付费 / 表端预付费 / 后付费")
AccountStatusEnum = strawberry.enum(AccountStatus, name="AccountStatus", description="正常 / 已销户")
AlertStateEnum = strawberry.enum(AlertState, name="AlertState",
                                 description="Where a master-station prepaid balance stands: 正常 / 余额提醒 / 关阀")
EntryKindEnum = strawberry.enum(EntryKind, name="LedgerEntryKind",
                                description="充值 / 扣费 / 账单 / 缴费 / 滞纳金 / 调整 / 退费 / 冲正 / 核销")


# --------------------------------------------------------------------------- loaders


class AccountsByHouseholdIdLoader(SessionLoader[int, list[Account]]):
    """Every account of a household, newest first (one statement per batch)."""

    missing: list[Account] = []

    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, list[Account]]:
        return await statements.accounts_by_household_ids(session, keys)


class BillingHouseholdByIdLoader(SessionLoader[int, Household | None]):
    """Households through the archives' service (its schema's loader is not ours to import)."""

    async def fetch(self, session: AsyncSession, keys: Sequence[int]) -> Mapping[int, Household]:
        return await archives.households_by_ids(session, keys)


def household_type(info: Info, household: Household) -> Any:
    """The archives' ``Household`` GraphQL object of ``household``, built by the class the
    executing schema holds under that name."""
    found: Any = info.schema.get_type_by_name("Household")
    return found.origin.from_row(household)


# --------------------------------------------------------------------------- accounts


@dataclass(frozen=True, slots=True)
class HouseholdBrief:
    """What the accounts list shows of the household, fetched with the page."""

    account_no: str
    name: str
    phone: str | None
    address: str


@strawberry.type(name="Account", description="A household's account (账户): billing mode, tariff, balance and "
                 "thresholds. A household has at most one open account; closed ones stay as history.")
class AccountType(Node):
    mode: BillingModeEnum  # type: ignore[valid-type]
    tariff_code: str
    persons: int | None = strawberry.field(description="户籍人数 for the tariff's household-size rule; null: none applies.")
    balance: Money = strawberry.field(description="The balance (余额): the sum of the ledger's entries.")  # type: ignore[valid-type]
    alert_threshold: Money = strawberry.field(description="At or below it the resident is told to recharge.")  # type: ignore[valid-type]
    close_threshold: Money = strawberry.field(  # type: ignore[valid-type]
        description="At or below it minus grace the valve may close; may be negative.")
    grace: Money = strawberry.field(description="透支额度: how far below the close threshold the balance may go.")  # type: ignore[valid-type]
    vulnerable: bool = strawberry.field(description="低保 / 医疗: the valve is never closed for money.")
    status: AccountStatusEnum  # type: ignore[valid-type]
    alert_state: AlertStateEnum  # type: ignore[valid-type]
    opened_at: datetime
    opened_by: str
    closed_at: datetime | None
    closed_by: str | None
    settled_to: datetime | None = strawberry.field(description="Usage is priced up to this instant (最后结算时间).")
    pk: strawberry.Private[int]
    household_pk: strawberry.Private[int]
    brief: strawberry.Private[HouseholdBrief | None] = None

    @classmethod
    def from_row(cls, account: Account, brief: HouseholdBrief | None = None) -> AccountType:
        assert account.id is not None
        return cls(
            id=encode_id("Account", account.id), mode=account.mode, tariff_code=account.tariff_code,
            persons=account.persons, balance=account.balance_fen, alert_threshold=account.alert_threshold_fen,
            close_threshold=account.close_threshold_fen, grace=account.grace_fen, vulnerable=account.vulnerable,
            status=account.status, alert_state=account.alert_state, opened_at=account.opened_at,
            opened_by=account.opened_by, closed_at=account.closed_at, closed_by=account.closed_by,
            settled_to=account.settled_to, pk=account.id, household_pk=account.household_id, brief=brief,
        )

    @classmethod
    def from_list_row(cls, row: statements.AccountRow) -> AccountType:
        return cls.from_row(row.account, HouseholdBrief(row.account_no, row.household_name, row.phone, row.address))

    async def _brief(self, info: Info) -> HouseholdBrief | None:
        if self.brief is not None:
            return self.brief
        household = await info.context.loader(BillingHouseholdByIdLoader).load(self.household_pk)
        if household is None:
            return None
        return HouseholdBrief(household.account_no, household.name, household.phone, household.address)

    @strawberry.field(description="The household the account belongs to.")
    async def household(self, info: Info) -> HouseholdRef | None:
        household = await info.context.loader(BillingHouseholdByIdLoader).load(self.household_pk)
        return household_type(info, household) if household is not None else None

    @strawberry.field(description="The household's 缴费号 / 编码.")
    async def account_no(self, info: Info) -> str:
        brief = await self._brief(info)
        return brief.account_no if brief else ""

    @strawberry.field(description="用户姓名: the household's registered name.")
    async def household_name(self, info: Info) -> str:
        brief = await self._brief(info)
        return brief.name if brief else ""

    @strawberry.field(description="The household's phone.")
    async def phone(self, info: Info) -> str | None:
        brief = await self._brief(info)
        return brief.phone if brief else None

    @strawberry.field(description="The household's address.")
    async def address(self, info: Info) -> str:
        brief = await self._brief(info)
        return brief.address if brief else ""


def caller_reach(principal: Principal) -> dict[str, Any]:
    """Whose accounts the caller reaches: a resident their bound households', staff their scope's."""
    if principal.is_resident:
        return {"scope_patterns": None, "household_ids": tuple(principal.household_ids)}
    return {"scope_patterns": principal.scope_patterns()}


# --------------------------------------------------------------------------- statements


@strawberry.type(name="LedgerEntry", description="One change of the balance (账务流水), with the balance after it.")
class LedgerEntryType:
    kind: EntryKindEnum  # type: ignore[valid-type]
    amount: Money = strawberry.field(description="The change of the balance: credits positive, debits negative.")  # type: ignore[valid-type]
    balance_after: Money  # type: ignore[valid-type]
    ref: str = strawberry.field(description="What the entry is for: cycle:2026-11-01, payment:42 …")
    note: str
    cycle_start: date | None = strawberry.field(description="A settlement's tier cycle.")
    volume: Decimal | None = strawberry.field(description="m³ of the cycle to date after a settlement's entry.")
    posted_at: datetime
    posted_by: str

    @classmethod
    def of(cls, entry: statements.StatementEntry) -> LedgerEntryType:
        return cls(kind=entry.kind, amount=entry.amount_fen, balance_after=entry.balance_after_fen, ref=entry.ref,
                   note=entry.note, cycle_start=entry.cycle_start, volume=entry.volume_m3, posted_at=entry.posted_at,
                   posted_by=entry.posted_by)


@strawberry.type(name="LedgerKindTotal", description="The net change of one entry kind over a statement.")
class LedgerKindTotalType:
    kind: EntryKindEnum  # type: ignore[valid-type]
    amount: Money  # type: ignore[valid-type]


@strawberry.type(name="AccountStatement", description="An account's statement (账户流水) over days [from, to].")
class AccountStatementType:
    account: AccountType
    from_: date = strawberry.field(name="from")
    to: date
    opening_balance: Money = strawberry.field(description="The balance when `from` began.")  # type: ignore[valid-type]
    closing_balance: Money = strawberry.field(description="The balance when `to` ended (or now).")  # type: ignore[valid-type]
    totals: list[LedgerKindTotalType] = strawberry.field(description="Per kind with entries in the range.")
    entries: Connection[LedgerEntryType] = strawberry.field(description="The range's entries, oldest first.")


@strawberry.type(name="PrepaidMonthStatement", description="One month of the prepaid monthly statement (历史账单).")
class PrepaidMonthStatementType:
    month: date = strawberry.field(description="The month's first day (the utility's calendar).")
    usage_m3: Decimal = strawberry.field(description="m³ used in the month while the account was open.")
    charged: Money = strawberry.field(description="扣费: charges and adjustments, as a positive debit.")  # type: ignore[valid-type]
    recharged: Money = strawberry.field(description="充值: recharges and payments.")  # type: ignore[valid-type]
    other: Money = strawberry.field(  # type: ignore[valid-type]
        description="Every other entry (refunds, reversals, write-offs, late fees), as a change of the balance.")
    closing_balance: Money = strawberry.field(description="The balance at the month's end (or now).")  # type: ignore[valid-type]

    @classmethod
    def of(cls, month: statements.MonthStatement) -> PrepaidMonthStatementType:
        return cls(month=month.month, usage_m3=month.usage_m3, charged=month.charged_fen, recharged=month.recharged_fen,
                   other=month.other_fen, closing_balance=month.closing_fen)


@strawberry.type(name="PrepaidSettlement", description="What a settlement did.")
class PrepaidSettlementType:
    accounts: int = strawberry.field(description="Accounts settled.")
    charged: int = strawberry.field(description="Accounts that got an entry.")
    charged_amount: Money = strawberry.field(description="Net amount debited (credits subtracted).")  # type: ignore[valid-type]
    adjustments: int = strawberry.field(description="Entries for cycles already ended, or crediting back.")
    alerted: list[strawberry.ID] = strawberry.field(description="Accounts this settlement moved into alert.")
    to_close: list[strawberry.ID] = strawberry.field(
        description="Accounts it moved into close (vulnerable ones left out: their valve stays open).")

    @classmethod
    def of(cls, settlement: PrepaidSettlement) -> PrepaidSettlementType:
        return cls(accounts=settlement.accounts, charged=settlement.charged, charged_amount=settlement.charged_fen,
                   adjustments=settlement.adjustments, alerted=[encode_id("Account", i) for i in settlement.alerted],
                   to_close=[encode_id("Account", i) for i in settlement.to_close])
