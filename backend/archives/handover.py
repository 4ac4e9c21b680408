"""The register readings at a handover, stored by the readings domain.

A move-in, a move-out, a meter replacement and an assignment import take register
readings (配表, 拆表, 换表): archives decides which, readings stores them through its one
ingest, so usage (``backend.readings.usage``) splits there with no special case. Readings
comes after archives (DESIGN.md, "Domain order"), so archives never imports it: readings
offers its writer here when its package is imported (``backend/readings/__init__.py``),
the way a later domain offers a service to an earlier one. Every process that runs
archives' handovers (the app, the job worker, the CLI, the tests) imports readings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from decimal import Decimal
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from backend.errors import ErrorCode


@dataclass(frozen=True, slots=True)
class HandoverReading:
    """A register reading at a handover: stored as a manual reading."""

    meter_id: int
    read_at: datetime
    total_m3: Decimal


class HandoverRejection(Protocol):
    """Reading ``index`` of the handover was not stored, and why."""

    @property
    def index(self) -> int: ...
    @property
    def code(self) -> ErrorCode: ...
    @property
    def message(self) -> str: ...
    @property
    def message_en(self) -> str: ...


class HandoverReadingsWriter(Protocol):
    async def __call__(self, session: AsyncSession, *, readings: Sequence[HandoverReading], source: str,
                       now: datetime, tz: str | tzinfo) -> Sequence[HandoverRejection]: ...


_writer: list[HandoverReadingsWriter] = []


def offer_handover_writer(writer: HandoverReadingsWriter) -> None:
    """Make ``writer`` the one that stores handover readings (the readings domain's)."""
    _writer[:] = [writer]


async def store_handover_readings(session: AsyncSession, *, readings: Sequence[HandoverReading], source: str,
                                  now: datetime, tz: str | tzinfo) -> Sequence[HandoverRejection]:
    """Store ``readings`` as manual readings in one batch received ``now`` (days in the
    zone ``tz``); the rejected ones, by index, are returned and nothing else of them kept."""
    if not _writer:
        raise RuntimeError("no domain stores handover readings: import backend.readings first")
    return await _writer[0](session, readings=readings, source=source, now=now, tz=tz)
