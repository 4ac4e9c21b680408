"""Household bindings (绑定): a resident binds, confirms with the code and unbinds; an owner
or the counter approves or rejects."""

from __future__ import annotations

from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info

from backend.auth import service
from backend.auth.schema.mutations.common import _over_limit, _policy
from backend.auth.schema.types import HouseholdBindingType
from backend.auth.sms.senders import sender_for
from backend.clock import utcnow
from backend.errors import DomainError
from backend.graphql.errors import UserError
from backend.graphql.limits import AuthMutation
from backend.graphql.mutations import record_afterwards, run_mutation
from backend.graphql.permissions import Requires
from backend.graphql.relay import decode_id


@strawberry.type
class HouseholdPayload:
    binding: HouseholdBindingType | None = strawberry.field(default=None, description="The binding and its state.")
    errors: list[UserError]
    # Set once the household is bound (active); archives adds the ``household`` field.
    household_pk: strawberry.Private[int | None] = None


def _binding_payload(outcome: service.BindingOutcome | None, errors: list[UserError]) -> HouseholdPayload:
    if outcome is None:
        return HouseholdPayload(binding=None, errors=errors)
    household_pk = outcome.household.id if outcome.household is not None else None
    return HouseholdPayload(binding=HouseholdBindingType.from_outcome(outcome), errors=errors, household_pk=household_pk)


async def _decide_binding(info: Info, id: strawberry.ID, approve: bool, *, action: str, who: str) -> HouseholdPayload:
    actor, now = info.context.caller, utcnow()

    async def work(session: AsyncSession) -> service.BindingOutcome:
        return await service.decide_household_binding(
            session, actor=actor, binding_id=decode_id(id, "HouseholdBinding"), approve=approve, now=now
        )

    verdict = "同意" if approve else "拒绝"
    return await run_mutation(
        info, module="resident", action=action,
        describe=lambda outcome: f"{who}{verdict}绑定缴费号 {outcome.account_no if outcome else id}",
        payload=_binding_payload, work=work,
    )


@strawberry.type
class BindingMutations:
    @strawberry.mutation(permission_classes=[Requires("resident:self")], description=(
        "Bind a household by 缴费号 and registered name. Bound at once when your phone is its registered phone; "
        "otherwise PENDING: confirm with the code sent to the registered phone (confirmHouseholdBinding), or "
        "wait for an owner or the counter to approve."), extensions=[AuthMutation()])
    async def bind_household(self, info: Info, account_no: str, name: str) -> HouseholdPayload:
        principal, policy, now = info.context.caller, _policy(info), utcnow()
        sender = sender_for(info.context.services)
        outcomes: list[service.BindingOutcome] = []

        async def work(session: AsyncSession) -> service.BindingOutcome:
            outcome = await service.bind_household(
                session, resident=principal, account_no=account_no, name=name, now=now, policy=policy
            )
            outcomes.append(outcome)
            return outcome

        answer = await run_mutation(
            info, module="resident", action="bindHousehold", describe=lambda _: f"住户绑定缴费号 {account_no[:32]}",
            payload=_binding_payload,
            before=lambda session: service.claim_bind_attempt(
                session, resident=principal, now=now, policy=policy, ip=info.context.ip, over_limit=_over_limit(info)
            ),
            work=work,
        )
        # Committed by now (a refusal raised or left no outcome): the code goes out
        # with no lock or transaction held.
        if outcomes and not answer.errors:
            try:
                await service.send_binding_code(outcomes[0], sender=sender)
            except DomainError as failure:
                # Not sent (the vendor refused, the gateway failed): the code is withdrawn
                # and the binding waits for the owner or the counter; the resident is told why.
                async with info.context.write() as session:
                    withdrawn = await service.withdraw_binding_code(session, outcome=outcomes[0])
                    # The entry above says the binding was made; this one says the code
                    # never went out and was withdrawn.
                    await record_afterwards(
                        info, session, action="bindHousehold", module="resident", success=False, summary=(
                            f"住户绑定缴费号 {account_no[:32]}: 短信未发出 ({failure.message}), 验证码已撤回, 待户主或柜台审核"),
                    )
                return _binding_payload(withdrawn, UserError.from_domain(failure))
        return answer

    @strawberry.mutation(permission_classes=[Requires("resident:self")],
                         description="Confirm your pending binding with the code sent to the household's registered phone.",
                         extensions=[AuthMutation()])
    async def confirm_household_binding(self, info: Info, id: strawberry.ID, code: str) -> HouseholdPayload:
        principal, policy, now = info.context.caller, _policy(info), utcnow()
        binding_pk = decode_id(id, "HouseholdBinding")
        return await run_mutation(
            info, module="resident", action="confirmHouseholdBinding", describe=lambda _: "住户以验证码确认绑定",
            payload=_binding_payload,
            before=lambda session: service.claim_binding_code_attempt(session, resident=principal, binding_id=binding_pk, now=now),
            work=lambda session: service.confirm_household_binding(
                session, resident=principal, binding_id=binding_pk, code=code, now=now, policy=policy
            ),
        )

    @strawberry.mutation(permission_classes=[Requires("resident:self")],
                         description="As the household's owner, approve or reject someone's pending binding (a tenant).")
    async def decide_household_binding(self, info: Info, id: strawberry.ID, approve: bool) -> HouseholdPayload:
        return await _decide_binding(info, id, approve, action="decideHouseholdBinding", who="户主")

    @strawberry.mutation(permission_classes=[Requires("archives:manage")],
                         description="At the counter: approve or reject a pending binding of a household in your scope.")
    async def decide_household_binding_at_counter(self, info: Info, id: strawberry.ID, approve: bool) -> HouseholdPayload:
        return await _decide_binding(info, id, approve, action="decideHouseholdBindingAtCounter", who="柜台")

    @strawberry.mutation(permission_classes=[Requires("resident:self")], description="Unbind one of your households.")
    async def unbind_household(self, info: Info, household_id: strawberry.ID) -> HouseholdPayload:
        principal, now = info.context.caller, utcnow()

        async def work(session: AsyncSession) -> Any:
            household_pk = decode_id(household_id, "Household", field="householdId")
            return await service.unbind_household(session, resident=principal, household_id=household_pk, now=now)

        return await run_mutation(
            info, module="resident", action="unbindHousehold", describe=lambda _: "住户解绑住户",
            payload=lambda h, errors: HouseholdPayload(errors=errors, household_pk=h.id if h else None),
            work=work,
        )
