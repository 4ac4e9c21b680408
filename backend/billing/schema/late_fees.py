"""GraphQL for late fees (滞纳金): ``lateFeeRules`` (``bills:read``), ``setLateFeeRule``
(``bills:configure``) and ``waiveLateFee`` (``bills:waive``); each mutation one
transaction with its audit entry under the 账单管理 menu. The rules and the arithmetic
live in ``backend.billing.late_fees``."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.archives.models import CustomerType
from backend.billing import late_fees
from backend.clock import utcnow
from backend.graphql.errors import UserError
from backend.graphql.mutations import run_mutation
from backend.graphql.permissions import Requires
from backend.graphql.relay import decode_id, encode_id
from backend.graphql.scalars import Money

# The archives' enum, by reference: a schema module imports no other package's schema.
CustomerTypeRef = Annotated["CustomerTypeEnum", strawberry.lazy("backend.archives.schema.types")]  # type: ignore[name-defined]  # noqa: F821

READ = [Requires("bills:read")]
CONFIGURE = [Requires("bills:configure")]
WAIVE = [Requires("bills:waive")]


@strawberry.type(name="LateFeeRule", description="滞纳金规则 of a customer type: from the day after a bill's due date "
                 "(graceDays of grace, set by the billing run), dailyRate of the principal still owed each day, "
                 "capped at capPercent % of the bill. A bill copies the rule when it is issued. A type never set "
                 "shows the defaults (isDefault).")
class LateFeeRuleType:
    customer_type: CustomerTypeRef
    enabled: bool
    daily_rate: Decimal = strawberry.field(description="Per day, e.g. 0.0005 (0.5‰); at most 8 places.")
    grace_days: int
    cap_percent: int = strawberry.field(description="The cap as a percentage of the bill's amount (100: the bill).")
    is_default: bool = strawberry.field(description="No rule was set for this type: the defaults apply.")
    updated_by: str | None
    updated_at: datetime | None

    @classmethod
    def of(cls, rule: late_fees.LateFeeRuleView) -> LateFeeRuleType:
        return cls(customer_type=rule.customer_type, enabled=rule.enabled, daily_rate=rule.daily_rate,  # type: ignore[arg-type]
                   grace_days=rule.grace_days, cap_percent=rule.cap_percent, is_default=rule.updated_at is None,
                   updated_by=rule.updated_by, updated_at=rule.updated_at)


@strawberry.type(name="LateFeeWaiver", description="减免滞纳金 done: the fee owed that day is waived; its posted part "
                 "is written off by a credit entry.")
class LateFeeWaiverType:
    bill_id: strawberry.ID
    account_id: strawberry.ID
    waived: Money = strawberry.field(description="The late fee waived (owed on the waiver's day).")  # type: ignore[valid-type]
    written_off: Money = strawberry.field(  # type: ignore[valid-type]
        description="The posted, unpaid part written off (核销) by a credit entry.")
    waived_at: datetime
    waived_by: str
    reason: str
    bill_paid: bool = strawberry.field(description="The bill's principal was paid: the waiver settled it.")

    @classmethod
    def of(cls, waiver: late_fees.LateFeeWaiver) -> LateFeeWaiverType:
        return cls(bill_id=strawberry.ID(encode_id("Bill", waiver.bill_id)),
                   account_id=strawberry.ID(encode_id("Account", waiver.account_id)), waived=waiver.waived_fen,
                   written_off=waiver.written_off_fen, waived_at=waiver.waived_at, waived_by=waiver.waived_by,
                   reason=waiver.reason, bill_paid=waiver.paid)


@strawberry.input(description="滞纳金规则: every field, as the form shows them.")
class LateFeeRuleInput:
    customer_type: CustomerTypeRef
    enabled: bool
    daily_rate: Decimal = strawberry.field(description="0 to 0.01 per day, at most 8 places (0.0005 = 0.5‰).")
    grace_days: int = strawberry.field(description="0 to 365 days of grace a bill is given to its due date.")
    cap_percent: int = strawberry.field(description="0 to 1000 (% of the bill's amount).")


@strawberry.type
class LateFeeRulePayload:
    rule: LateFeeRuleType | None
    errors: list[UserError]


@strawberry.type
class WaiveLateFeePayload:
    waiver: LateFeeWaiverType | None
    errors: list[UserError]


@strawberry.type
class Query:
    @strawberry.field(permission_classes=READ, description="滞纳金规则 of the three customer types (defaults where "
                      "none was set).")
    async def late_fee_rules(self, info: Info) -> list[LateFeeRuleType]:
        async with info.context.read() as session:
            rules = await late_fees.late_fee_rules(session)
        return [LateFeeRuleType.of(rule) for rule in rules.values()]


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=CONFIGURE, description="Set a customer type's late-fee rule (bills issued "
                         "from now on copy it). Refused (INVALID): dailyRate outside 0–0.01 or with more than 8 "
                         "places, graceDays outside 0–365, capPercent outside 0–1000.")
    async def set_late_fee_rule(self, info: Info, input: LateFeeRuleInput) -> LateFeeRulePayload:
        async def work(session: AsyncSession) -> late_fees.LateFeeRuleView:
            return await late_fees.set_late_fee_rule(
                session, customer_type=CustomerType(input.customer_type), enabled=input.enabled,
                daily_rate=input.daily_rate, grace_days=input.grace_days, cap_percent=input.cap_percent,
                by=info.context.caller.name, now=utcnow())

        def payload(rule: late_fees.LateFeeRuleView | None, errors: list[UserError]) -> LateFeeRulePayload:
            return LateFeeRulePayload(rule=LateFeeRuleType.of(rule) if rule is not None else None, errors=errors)

        return await run_mutation(info, action="setLateFeeRule",
                                  describe=lambda _: f"设置滞纳金规则 {CustomerType(input.customer_type).value}",
                                  payload=payload, work=work)

    @strawberry.mutation(permission_classes=WAIVE, description="减免滞纳金: waive the bill's late fee owed today (a "
                         "reason is required, at most 200 characters); its posted part is written off. Refused: "
                         "NOT_FOUND (unknown or outside your scope), BILL_VOIDED, LATE_FEE_NOTHING_TO_WAIVE.")
    async def waive_late_fee(self, info: Info, bill_id: strawberry.ID, reason: str) -> WaiveLateFeePayload:
        async def work(session: AsyncSession) -> late_fees.LateFeeWaiver:
            return await late_fees.waive_late_fee(
                session, bill_id=decode_id(bill_id, "Bill", field="billId"), reason=reason,
                by=info.context.caller.name, now=utcnow(), tz=info.context.settings.tz,
                scope_patterns=info.context.caller.scope_patterns())

        def payload(waiver: late_fees.LateFeeWaiver | None, errors: list[UserError]) -> WaiveLateFeePayload:
            return WaiveLateFeePayload(waiver=LateFeeWaiverType.of(waiver) if waiver is not None else None,
                                       errors=errors)

        def describe(waiver: late_fees.LateFeeWaiver | None) -> str:
            return f"减免滞纳金 账单 {waiver.bill_id}" if waiver is not None else "减免滞纳金"

        return await run_mutation(info, action="waiveLateFee", describe=describe, payload=payload, work=work)
