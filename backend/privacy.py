"""Residents' data rights under the PIPL (个人信息保护法): ``shuiwu privacy export|erase``.

A host: it walks the installed domains' :class:`backend.domain.PersonalData`
declarations in domain order and names none of them (docs/domains.md, "Personal
data"; docs/privacy.md says what each holds). Every domain answers for its own tables,
so a later domain (billing, payments, work orders) adds what it holds by declaring it,
and ``tests/test_privacy.py`` fails while a personal-looking column is unaccounted for.

The phone is a whole mobile or landline number, as the archives accept them (the log is
searched for it, and part of a number would match other people's). Both commands act as
the system actor and write one operation-log entry: the export
records that it happened and how many rows each section had, never what they held; the
erasure records the pseudonym and how many rows changed, never the phone.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from backend.audit.models import AuditEntry
from backend.audit.service import record_operation
from backend.domain import DataSubject, Domain, PersonalData, PersonalSection, load, system_principal
from backend.errors import DomainError, ErrorCode

FORMAT = "shuiwu.personal-data/1"
MODULE = "privacy"
EXPORT_ACTION = "exportPersonalData"
ERASE_ACTION = "erasePersonalData"
# A phone as the archives accept it (backend.archives.service.checks: MOBILE | LANDLINE,
# restated: a host names no domain; tests/test_privacy.py checks the two agree).
PHONE = re.compile(r"1[3-9][0-9]{9}|0[0-9]{2,3}-?[0-9]{7,8}(-[0-9]{1,6})?", re.ASCII)


class UnknownPhone(DomainError):
    code = ErrorCode.NOT_FOUND
    message = "没有与该手机号有关的个人信息"
    message_en = "Nothing is held about this phone number"


def subject_token(secret: str, phone: str) -> str:
    """The pseudonym's stable part: a keyed hash of the phone (the same on every run, so
    a second erasure names the person alike; without the key it leads back to nobody),
    64 bits, so two residents' pseudonyms do not collide."""
    return hmac.new(secret.encode(), f"privacy:{phone}".encode(), hashlib.sha256).hexdigest()[:16]


def masked(phone: str) -> str:
    """138****5678: what the log and the console show of the phone."""
    return phone[:3] + "****" + phone[-4:] if len(phone) >= 8 else "****"


def declarations(domains: Sequence[Domain]) -> list[tuple[Domain, PersonalData]]:
    return [(domain, domain.personal_data) for domain in domains if domain.personal_data is not None]


def operator_name(command: str) -> str:
    """Who the log names for a CLI run: the system, and the operating-system user at the console."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"系统 (命令行 {command}, {user})"


@dataclass(frozen=True, slots=True)
class Collected:
    subject: DataSubject
    sections: list[tuple[str, PersonalSection]]  # (domain name, section)

    @property
    def rows(self) -> int:
        return sum(len(section.rows) for _, section in self.sections)

    def document(self) -> dict[str, Any]:
        sections: dict[str, Any] = {}
        for domain, section in self.sections:
            if section.key in sections:
                raise ValueError(f"two privacy sections are called {section.key!r}")
            sections[section.key] = {"title": section.title, "domain": domain, "rows": section.rows}
        return {
            "format": FORMAT,
            "description": "住户个人信息副本 (《个人信息保护法》第四十五条): 本单位以该手机号保存的全部个人信息; "
                           "各部分的含义见 docs/privacy.md. A copy of everything held about this phone number.",
            "phone": self.subject.phone,
            "exported_at": self.subject.now.isoformat(),
            "sections": sections,
        }


def _subject(phone: str, *, secret: str, now: datetime, timezone: str) -> DataSubject:
    """The subject of ``phone``: a mobile or landline number as the archives accept it,
    nothing shorter (the log is searched for it: "13" would match every number)."""
    phone = phone.strip()
    if not PHONE.fullmatch(phone):
        raise DomainError("手机号格式错误: 需要手机号或固定电话", "Malformed phone number: a mobile or landline number",
                          field="phone", code=ErrorCode.INVALID)
    return DataSubject(phone=phone, token=subject_token(secret, phone), now=now, timezone=timezone)


async def _collect(session: AsyncSession, subject: DataSubject, domains: Sequence[Domain]) -> Collected:
    sections: list[tuple[str, PersonalSection]] = []
    for domain, declared in declarations(domains):
        if declared.export is not None:
            sections.extend((domain.name, section) for section in await load(declared.export)(session, subject))
    return Collected(subject, sections)


async def _record(session: AsyncSession, *, action: str, summary: str, payload: dict[str, Any], now: datetime,
                  domains: Sequence[Domain], operator: str) -> None:
    await record_operation(session, at=now, actor=system_principal(tuple(domains)), module=MODULE, action=action,
                           summary=summary, payload=payload, success=True, ip=None, request_id=None,
                           actor_name=operator)


async def export_personal_data(
    session: AsyncSession, *, phone: str, secret: str, now: datetime, timezone: str, domains: Sequence[Domain],
    operator: str,
) -> dict[str, Any]:
    """The JSON document of everything held about ``phone`` (UnknownPhone when nothing
    is), and the log entry saying an export happened; the caller commits."""
    collected = await _collect(session, _subject(phone, secret=secret, now=now, timezone=timezone), domains)
    if collected.rows == 0:
        raise UnknownPhone(field="phone")
    counts = {section.key: len(section.rows) for _, section in collected.sections}
    await _record(session, action=EXPORT_ACTION, now=now, domains=domains, operator=operator,
                  summary=f"导出 {masked(collected.subject.phone)} 的个人信息 ({collected.rows} 条记录)",
                  payload={"phone": masked(collected.subject.phone), "rows": counts})
    return collected.document()


@dataclass(frozen=True, slots=True)
class Erasure:
    pseudonym: str
    changed: dict[str, int]
    # Nothing was held any more: an earlier erasure under the same pseudonym took it.
    already_erased: bool = False


async def erase_personal_data(
    session: AsyncSession, *, phone: str, secret: str, now: datetime, timezone: str, domains: Sequence[Domain],
    operator: str,
) -> Erasure:
    """Replace the identity of ``phone``'s resident everywhere the domains hold it, and
    log it; the caller commits. A phone erased before answers ``already_erased`` (and
    writes nothing); one never known is UnknownPhone."""
    subject = _subject(phone, secret=secret, now=now, timezone=timezone)
    collected = await _collect(session, subject, domains)
    if collected.rows == 0:
        if await _erased_before(session, subject.pseudonym):
            return Erasure(subject.pseudonym, {}, already_erased=True)
        raise UnknownPhone(field="phone")
    sections = [section for _, section in collected.sections]
    subject = replace(subject, aliases=frozenset(name for section in sections for name in section.names),
                      log_identifiers=frozenset(found for section in sections for found in section.log_identifiers),
                      log_references=frozenset(found for section in sections for found in section.log_references))
    changed: dict[str, int] = {}
    # Latest domain first: each still finds the subject through the rows of the domains
    # before it (the log finds the resident's account by phone before auth renames it).
    for _, declared in reversed(declarations(domains)):
        if declared.erase is not None:
            for what, count in (await load(declared.erase)(session, subject)).items():
                changed[what] = changed.get(what, 0) + count
    await _record(session, action=ERASE_ACTION, now=now, domains=domains, operator=operator,
                  summary=f"注销住户个人信息, 化名 {subject.pseudonym}",
                  payload={"pseudonym": subject.pseudonym, "changed": changed})
    return Erasure(subject.pseudonym, changed)


async def _erased_before(session: AsyncSession, pseudonym: str) -> bool:
    found = await session.execute(
        select(col(AuditEntry.id)).where(col(AuditEntry.module) == MODULE, col(AuditEntry.action) == ERASE_ACTION,
                                         col(AuditEntry.payload)["pseudonym"].astext == pseudonym).limit(1))
    return found.first() is not None
