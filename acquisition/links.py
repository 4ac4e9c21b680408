"""The links a worker can serve, as the archives describe them.

A link is a concentrator record whose bus the worker dials itself: ``serial`` (a directly
wired RS-485 / M-Bus port: ``/dev/ttyUSB0``, a pty, ``rfc2217://host:port``) or
``dtu_socket`` (a transparent TCP DTU: ``socket://host:port``, or the record's host and
port). ``tcp_login`` terminals dial in and speak Q/GDW 1376.1: the Concentrators issue.
Meters reach the worker through their concentrator's link, with their model's data
identifier byte order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import serial
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from acquisition.protocols import cjt188
from acquisition.transport import LineSettings
from backend.archives.models import Concentrator, ConnectionKind, DeviceStatus, DiByteOrder, Meter, MeterModel, MeterType
from backend.remote.models import LinkLease
from backend.remote.service import concentrator_link

log = logging.getLogger(__name__)

BUS_CONNECTIONS = (ConnectionKind.serial, ConnectionKind.dtu_socket)
_METER_TYPE_BYTES = {MeterType.cold_water: 0x10, MeterType.hot_water: 0x11}


@dataclass(frozen=True, slots=True)
class LinkPlan:
    """One bus the worker can open: its link name (the lease's and the commands'), the
    port URL and the line settings."""

    concentrator_id: int
    link: str
    url: str
    line: LineSettings


@dataclass(frozen=True, slots=True)
class MeterOnBus:
    """What a request to a meter needs: its address and type byte, and its model's wire
    settings: DI byte order, ``FE`` preamble, volume places on the wire and response
    timeout in seconds (``None``: the worker's ``response_timeout_s``)."""

    meter_id: int
    address: str
    meter_type: int
    di_order: cjt188.DiOrder
    preamble: int = cjt188.DEFAULT_PREAMBLE
    volume_decimals: int = cjt188.DEFAULT_VOLUME_DECIMALS
    response_timeout: float | None = None


def port_url(concentrator: Concentrator) -> str | None:
    """The URL the worker opens for a serial or DTU concentrator; None when the record
    says too little to reach it."""
    if concentrator.connection is ConnectionKind.serial:
        return concentrator.serial_url or None
    if concentrator.serial_url and concentrator.serial_url.startswith("socket://"):
        return concentrator.serial_url
    if concentrator.host and concentrator.port:
        return f"socket://{concentrator.host}:{concentrator.port}"
    return None


def line_settings(concentrator: Concentrator) -> LineSettings:
    """The bus's framing; CJ/T 188's 2400 8E1 where the record says nothing. A DTU ignores
    it but the bus behind it runs at it (it still says how long the bytes take)."""
    parity = (concentrator.parity or serial.PARITY_EVEN).upper()
    stopbits = 2 if (concentrator.stopbits or "1").strip() == "2" else 1
    return LineSettings(baudrate=concentrator.baudrate or 2400, bytesize=concentrator.bytesize or 8,
                        parity=parity, stopbits=stopbits)


async def servable_links(session: AsyncSession) -> list[LinkPlan]:
    """Every bus a worker may serve (serial and DTU concentrators not retired), by id."""
    rows = (await session.execute(
        select(Concentrator).where(col(Concentrator.connection).in_(BUS_CONNECTIONS),
                                   col(Concentrator.status) != DeviceStatus.retired)
        .order_by(col(Concentrator.id)))).scalars().all()
    plans = []
    for concentrator in rows:
        url = port_url(concentrator)
        if url is None:
            log.warning("concentrator %s (%s) has no port URL or DTU address: not served", concentrator.id,
                        concentrator.name)
            continue
        plans.append(LinkPlan(concentrator.id or 0, concentrator_link(concentrator.id or 0), url,
                              line_settings(concentrator)))
    return plans


async def links_held_by_others(session: AsyncSession, *, links: Sequence[str], holder: str, now: datetime) -> set[str]:
    """Those of ``links`` whose lease another holder has and has not let expire."""
    if not links:
        return set()
    rows = await session.execute(
        select(col(LinkLease.link)).where(col(LinkLease.link).in_(list(links)), col(LinkLease.holder) != holder,
                                          col(LinkLease.expires_at) > now))
    return set(rows.scalars().all())


# What :func:`on_bus` takes after the meter id: a meter's address, type and its model's wire settings.
WIRE_COLUMNS = (col(Meter.address), col(Meter.meter_type), col(MeterModel.di_byte_order), col(MeterModel.preamble_len),
                 col(MeterModel.wire_decimals), col(MeterModel.response_timeout_ms))


async def meters_on_bus(session: AsyncSession, meter_ids: Sequence[int]) -> dict[int, MeterOnBus]:
    """:func:`meter_on_bus` of several meters in one query; a meter gone is missing."""
    if not meter_ids:
        return {}
    rows = (await session.execute(
        select(col(Meter.id), *WIRE_COLUMNS)
        .outerjoin(MeterModel, col(MeterModel.id) == col(Meter.model_id))
        .where(col(Meter.id).in_(sorted(set(meter_ids)))))).all()
    return {row[0]: on_bus(row[0], *row[1:]) for row in rows if row[0] is not None}


def on_bus(meter_id: int, address: Any, meter_type: Any, di_byte_order: Any, preamble_len: Any, wire_decimals: Any,
            response_timeout_ms: Any) -> MeterOnBus:
    return MeterOnBus(
        meter_id=meter_id,
        address=str(address).zfill(14),
        meter_type=_METER_TYPE_BYTES.get(MeterType(meter_type), cjt188.DEFAULT_METER_TYPE),
        di_order=cjt188.di_order_for(DiByteOrder(di_byte_order or DiByteOrder.standard).value),
        preamble=cjt188.DEFAULT_PREAMBLE if preamble_len is None else int(preamble_len),
        volume_decimals=cjt188.DEFAULT_VOLUME_DECIMALS if wire_decimals is None else int(wire_decimals),
        response_timeout=None if response_timeout_ms is None else response_timeout_ms / 1000,
    )


async def meter_on_bus(session: AsyncSession, meter_id: int) -> MeterOnBus | None:
    """The meter's address, type byte and its model's wire settings (the standard's for
    a meter without a model); None for a meter gone from the archives."""
    return (await meters_on_bus(session, [meter_id])).get(meter_id)
