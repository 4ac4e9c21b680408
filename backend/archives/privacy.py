"""What the archives hold about a resident, for ``shuiwu privacy export|erase`` (docs/privacy.md).

Found by the phone: the households that name it (as the owner's ``phone`` or as
``phone2``), the owner records (``household_owners``) registered with it, past and
present, the status changes of the households they own now, and the meter assignments
within each ownership. Other owners of the same household are other people: their rows
are neither exported nor touched.

Erasure replaces identity and keeps the record: a household they own now keeps its id,
account number, area, meters, status and everything billed against it, but its name
becomes the pseudonym and its phones, ID number and street address are cleared; a
household that lists the phone only as ``phone2`` loses that number; their owner rows
(past ones too) keep their dates under the pseudonym. The export also tells the
operation log's erasure what identifies them there (:func:`log_identity`): entries about
their households carry the address and ID number without the phone.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.archives.models import Area, Household, HouseholdOwner, HouseholdStatusChange
from backend.archives.service import owned_meter_periods
from backend.audit.service import masked_id_number
from backend.auth.privacy import changed_rows, plain, rows_of
from backend.domain import DataSubject, PersonalSection
from backend.graphql.relay import encode_id


async def export(session: AsyncSession, subject: DataSubject) -> list[PersonalSection]:
    phone = subject.phone
    households = rows_of(await session.execute(
        select(col(Household.id), col(Household.account_no), col(Household.name), col(Household.phone),
               col(Household.phone2), col(Household.id_number), col(Household.address), col(Area.name).label("area"),
               col(Household.customer_type), col(Household.sub_type), col(Household.population),
               col(Household.status), col(Household.created_at), col(Household.updated_at))
        .join(Area, col(Area.id) == col(Household.area_id))
        .where(or_(col(Household.phone) == phone, col(Household.phone2) == phone)).order_by(col(Household.id))))
    owners = rows_of(await session.execute(
        select(col(HouseholdOwner.id), col(HouseholdOwner.household_id), col(Household.account_no),
               col(HouseholdOwner.name), col(HouseholdOwner.phone), col(HouseholdOwner.id_number),
               col(HouseholdOwner.valid_from), col(HouseholdOwner.valid_to))
        .join(Household, col(Household.id) == col(HouseholdOwner.household_id))
        .where(col(HouseholdOwner.phone) == phone).order_by(col(HouseholdOwner.household_id), col(HouseholdOwner.valid_from))))
    for row in households:
        # Listed only as the second phone: the name, phone, ID number and address are the
        # owner's, another person's, and withheld.
        row["listed_as"] = "owner" if row["phone"] == phone else "phone2"
        if row["listed_as"] == "phone2":
            row.update(name=None, phone=None, id_number=None, address=None)
    owned_now = [row["id"] for row in households if row["listed_as"] == "owner"]
    statuses = rows_of(await session.execute(
        select(col(HouseholdStatusChange.household_id), col(HouseholdStatusChange.status),
               col(HouseholdStatusChange.reason), col(HouseholdStatusChange.changed_at))
        .where(col(HouseholdStatusChange.household_id).in_(owned_now))
        .order_by(col(HouseholdStatusChange.household_id), col(HouseholdStatusChange.changed_at))))
    periods = await owned_meter_periods(session, phone=phone, timezone=subject.timezone)
    assignments = [
        {"id": period.assignment_id, "household_id": period.household_id, "account_no": period.account_no,
         "meter_id": period.meter_id, "meter_code": period.meter_code, "valid_from": plain(period.valid_from),
         "valid_to": plain(period.valid_to), "start_reading": plain(period.start_reading),
         "end_reading": plain(period.end_reading), "owned_from": plain(period.start), "owned_to": plain(period.end)}
        for period in periods
    ]
    theirs = [row for row in households if row["listed_as"] == "owner"]
    names = frozenset(row["name"] for row in owners) | frozenset(row["name"] for row in theirs)
    identifiers, references = log_identity(theirs, owners)
    return [
        PersonalSection("households", "登记了该手机号的住户 (户主电话或第二电话)", households, names=names,
                        log_identifiers=identifiers, log_references=references),
        PersonalSection("household_owners", "作为户主的记录 (含过户前)", owners, names=names),
        PersonalSection("household_status_history", "本人名下住户的状态变更", statuses),
        PersonalSection("meter_assignments", "本人为户主期间为其住户服务的水表", assignments),
    ]


def log_identity(owned: list[dict[str, Any]], owners: list[dict[str, Any]]) -> tuple[frozenset[str], frozenset[str]]:
    """What the operation log holds of the subject's households (``owned``: theirs now)
    and owner rows, past and present: the identifying strings as entries carry them (the
    street address of a household theirs now, ID numbers whole and as the log masks them)
    and the references that make an entry about one of those households (global id,
    account number; they stay, the household keeps them)."""
    identifiers: set[str] = {row["address"] for row in owned if row["address"]}
    for number in (row["id_number"] for row in (*owned, *owners)):
        if number and len(number) > 8:  # shorter ones are logged as *** (every such entry alike)
            identifiers |= {number, masked_id_number(number)}
    references: set[str] = set()
    for household_id, account_no in {(row["id"], row["account_no"]) for row in owned} | {
            (row["household_id"], row["account_no"]) for row in owners}:
        references |= {str(encode_id("Household", int(household_id))), str(account_no)}
    return frozenset(identifier for identifier in identifiers if len(identifier) >= 2), frozenset(references)


async def erase(session: AsyncSession, subject: DataSubject) -> dict[str, int]:
    phone, pseudonym = subject.phone, subject.pseudonym
    owned_now = select(col(Household.id)).where(col(Household.phone) == phone)
    # Their owner rows, and the current owner row of a household registered to their
    # phone (the two agree unless someone edited the table by hand).
    owners = await session.execute(
        update(HouseholdOwner)
        .where(or_(col(HouseholdOwner.phone) == phone,
                   col(HouseholdOwner.valid_to).is_(None) & col(HouseholdOwner.household_id).in_(owned_now)))
        .values(name=pseudonym, phone=None, id_number=None).execution_options(synchronize_session=False))
    owned = await session.execute(
        update(Household).where(col(Household.phone) == phone)
        .values(name=pseudonym, phone=None, phone2=None, id_number=None, address="")
        .execution_options(synchronize_session=False))
    contact = await session.execute(
        update(Household).where(col(Household.phone2) == phone).values(phone2=None)
        .execution_options(synchronize_session=False))
    return {"households": changed_rows(owned) + changed_rows(contact), "household_owners": changed_rows(owners)}
