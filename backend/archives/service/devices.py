"""Concentrators (集中器) and collectors (采集器)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, Text, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives import errors
from backend.archives.models import (
    Area,
    Collector,
    Concentrator,
    ConnectionKind,
    DeviceStatus,
    Meter,
)
from backend.archives.service.checks import (
    KEEP,
    OTHER_ADDRESS,
    PARITIES,
    REGION_CODE,
    STOPBITS,
    _area_for,
    _changed,
    _exists,
    _flush_collect,
    _flush_unique,
    _like,
    _scoped,
    _text_field,
)
from backend.archives.service.meters import _camel, _missing
from backend.auth.errors import UnknownArea
from backend.auth.scope import in_scope
from backend.auth.security import KeyPurpose, derive_key
from backend.errors import DomainError, ErrorCode, NotFound

# --------------------------------------------------------------------------- concentrators


class TerminalPasswordCipher:
    """Encrypts concentrator terminal passwords (PW) at rest with Fernet, under the key
    derived from the station secret for this purpose (``KeyPurpose.terminal_password``);
    the caller builds it from ``settings.secret()``.

    Passwords stored before per-purpose keys were encrypted under an HMAC of the secret
    itself: they still decrypt (the derived key is tried first, then that legacy key), and
    each is re-encrypted under the derived key the next time it is set.
    """

    def __init__(self, secret: str) -> None:
        from cryptography.fernet import Fernet, MultiFernet

        derived = base64.urlsafe_b64encode(derive_key(secret, KeyPurpose.terminal_password))
        legacy = base64.urlsafe_b64encode(hmac.new(secret.encode(), b"shuiwu/concentrator-terminal-password", hashlib.sha256).digest())
        # MultiFernet encrypts with the first key and decrypts with whichever one fits.
        self._fernet = MultiFernet([Fernet(derived), Fernet(legacy)])

    def encrypt(self, password: str) -> str:
        return self._fernet.encrypt(password.encode()).decode()

    def decrypt(self, token: str) -> str:
        return self._fernet.decrypt(token.encode()).decode()


@dataclass(frozen=True, slots=True)
class ConcentratorChanges:
    """A concentrator's fields: all required ones for :func:`create_concentrator`
    (``KEEP`` means the default), only those to change for :func:`update_concentrator`.
    ``terminal_password`` is plain text here and never stored as such."""

    name: Any = KEEP
    region_code: Any = KEEP
    terminal_address: Any = KEEP
    area_id: Any = KEEP
    connection: Any = KEEP
    model: Any = KEEP
    protocol: Any = KEEP
    serial_url: Any = KEEP
    baudrate: Any = KEEP
    parity: Any = KEEP
    bytesize: Any = KEEP
    stopbits: Any = KEEP
    host: Any = KEEP
    port: Any = KEEP
    status: Any = KEEP
    terminal_password: Any = KEEP


_CONCENTRATOR_REQUIRED = ("name", "region_code", "terminal_address", "area_id", "connection", "protocol", "status")
_CONCENTRATOR_DEFAULTS: dict[str, Any] = {
    "model": None, "protocol": "gdw1376", "serial_url": None, "baudrate": None, "parity": None, "bytesize": None,
    "stopbits": None, "host": None, "port": None, "status": DeviceStatus.active,
}


async def _check_concentrator(
    session: AsyncSession, values: dict[str, Any], concentrator_id: int | None, scope_patterns: Sequence[str] | None
) -> None:
    problems: list[DomainError] = []
    _text_field(problems, values["name"], "name", limit=100)
    region, terminal = values["region_code"], values["terminal_address"]
    if not region or not REGION_CODE.fullmatch(region):
        problems.append(errors.InvalidAddress("行政区划码须为 4 位数字", "A region code is 4 digits", field="regionCode"))
    if terminal is None or not 1 <= terminal <= 65535:
        problems.append(errors.InvalidAddress("终端地址须在 1-65535 之间", "A terminal address is 1-65535", field="terminalAddress"))
    elif region and REGION_CODE.fullmatch(region) and await _exists(session, select(Concentrator.id).where(  # type: ignore[call-overload]
        Concentrator.region_code == region, Concentrator.terminal_address == terminal,  # type: ignore[arg-type]
        Concentrator.id != (concentrator_id or 0),  # type: ignore[arg-type]
    )):
        problems.append(errors.DuplicateConcentratorAddress(field="terminalAddress"))
    try:
        await _area_for(session, values["area_id"], scope_patterns, "areaId")
    except UnknownArea as unknown:
        problems.append(unknown)
    connection = values["connection"]
    if connection is ConnectionKind.serial and not values["serial_url"]:
        problems.append(DomainError("串口连接须填写串口地址", "A serial connection needs a port URL",
                                    field="serialUrl", code=ErrorCode.REQUIRED))
    if connection is ConnectionKind.dtu_socket and not (values["host"] and values["port"]):
        problems.append(DomainError("DTU 连接须填写主机和端口", "A DTU connection needs host and port",
                                    field="host", code=ErrorCode.REQUIRED))
    if values["port"] is not None and not 1 <= values["port"] <= 65535:
        problems.append(DomainError("端口须在 1-65535 之间", "Port must be 1-65535", field="port", code=ErrorCode.INVALID))
    if values["baudrate"] is not None and values["baudrate"] not in (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200):
        problems.append(DomainError("波特率不支持", "Unsupported baud rate", field="baudrate", code=ErrorCode.INVALID))
    if values["parity"] is not None and values["parity"] not in PARITIES:
        problems.append(DomainError("校验位须为 N、E 或 O", "Parity is N, E or O", field="parity", code=ErrorCode.INVALID))
    if values["bytesize"] is not None and values["bytesize"] not in (5, 6, 7, 8):
        problems.append(DomainError("数据位须为 5-8", "Byte size is 5-8", field="bytesize", code=ErrorCode.INVALID))
    if values["stopbits"] is not None and values["stopbits"] not in STOPBITS:
        problems.append(DomainError("停止位须为 1、1.5 或 2", "Stop bits are 1, 1.5 or 2", field="stopbits", code=ErrorCode.INVALID))
    for field, limit in (("serial_url", 200), ("host", 200), ("model", 100), ("protocol", 32)):
        if values[field] is not None:
            _text_field(problems, values[field], _camel(field), limit=limit, required=field == "protocol")
    if values.get("terminal_password") is not None and len(values["terminal_password"]) > 64:
        problems.append(DomainError("终端密码过长", "Terminal password too long", field="terminalPassword", code=ErrorCode.TOO_LONG))
    await _flush_collect(problems)


def _store_password(concentrator: Concentrator, values: dict[str, Any], cipher: TerminalPasswordCipher) -> None:
    if "terminal_password" in values:
        password = values.pop("terminal_password")
        concentrator.terminal_password_encrypted = cipher.encrypt(password) if password else None


async def create_concentrator(
    session: AsyncSession, *, fields: ConcentratorChanges, cipher: TerminalPasswordCipher,
    scope_patterns: Sequence[str] | None = None,
) -> Concentrator:
    """Register a concentrator; ``name``, ``region_code``, ``terminal_address``, ``area_id``
    and ``connection`` are required."""
    values = {**_CONCENTRATOR_DEFAULTS, **_changed(fields)}
    await _flush_collect(_missing(values, _CONCENTRATOR_REQUIRED))
    await _check_concentrator(session, values, None, scope_patterns)
    password = values.pop("terminal_password", None)
    concentrator = Concentrator(**values)
    _store_password(concentrator, {"terminal_password": password}, cipher)
    await _flush_unique(session, concentrator)
    return concentrator


async def concentrator_in_scope(
    session: AsyncSession, *, concentrator_id: int, scope_patterns: Sequence[str] | None, field: str = "id"
) -> Concentrator:
    return await _scoped(session, Concentrator, concentrator_id, scope_patterns, field=field)


async def update_concentrator(
    session: AsyncSession, *, concentrator_id: int, changes: ConcentratorChanges, cipher: TerminalPasswordCipher,
    scope_patterns: Sequence[str] | None = None,
) -> Concentrator:
    concentrator = await _scoped(session, Concentrator, concentrator_id, scope_patterns, lock=True)
    values = _changed(changes)
    current = {name: getattr(concentrator, name) for name in (*_CONCENTRATOR_DEFAULTS, "name", "region_code",
                                                              "terminal_address", "area_id", "connection")}
    # A null for a required field is refused here rather than by the NOT NULL constraint.
    await _flush_collect(_missing({**current, **values}, _CONCENTRATOR_REQUIRED))
    await _check_concentrator(session, {**current, **values}, concentrator_id, scope_patterns)
    _store_password(concentrator, values, cipher)
    for name, value in values.items():
        setattr(concentrator, name, value)
    await _flush_unique(session)
    return concentrator


async def terminal_password(session: AsyncSession, *, concentrator_id: int, cipher: TerminalPasswordCipher) -> str | None:
    """The plain terminal password, for the acquisition worker (never for the API)."""
    concentrator = await session.get(Concentrator, concentrator_id)
    if concentrator is None:
        raise NotFound(field="concentratorId")
    stored = concentrator.terminal_password_encrypted
    return cipher.decrypt(stored) if stored else None


async def delete_concentrator(session: AsyncSession, *, concentrator_id: int, scope_patterns: Sequence[str] | None = None) -> Concentrator:
    """Delete a concentrator with no collector or meter under it (DEVICE_IN_USE otherwise)."""
    concentrator = await _scoped(session, Concentrator, concentrator_id, scope_patterns, lock=True)
    used = await session.execute(
        text("SELECT EXISTS (SELECT 1 FROM collectors WHERE concentrator_id = :id)"
             " OR EXISTS (SELECT 1 FROM meters WHERE concentrator_id = :id)"), {"id": concentrator_id})
    if used.scalar_one():
        raise errors.DeviceInUse(field="id")
    await session.delete(concentrator)
    await session.flush()
    return concentrator


def concentrators_statement(
    *, scope_patterns: Sequence[str], area_id: int | None = None, status: DeviceStatus | None = None,
    connection: ConnectionKind | None = None, search: str | None = None,
) -> Select[Any]:
    """Concentrators within the scope, filtered, by region code and terminal address."""
    statement = select(Concentrator).join(Area, Area.id == Concentrator.area_id).where(in_scope(Area.path, scope_patterns))  # type: ignore[arg-type]
    if area_id is not None:
        root = select(Area.path).where(Area.id == area_id).scalar_subquery()  # type: ignore[arg-type, call-overload]
        statement = statement.where(Area.path.startswith(root))  # type: ignore[attr-defined, arg-type]
    if status is not None:
        statement = statement.where(Concentrator.status == status)  # type: ignore[arg-type]
    if connection is not None:
        statement = statement.where(Concentrator.connection == connection)  # type: ignore[arg-type]
    if search:
        term = _like(search)
        statement = statement.where(or_(Concentrator.name.like(term, escape="\\"), Concentrator.region_code.like(term, escape="\\"),  # type: ignore[attr-defined]
                                        func.cast(Concentrator.terminal_address, Text).like(term, escape="\\")))  # type: ignore[arg-type]
    return statement.order_by(Concentrator.region_code, Concentrator.terminal_address, Concentrator.id)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- collectors


async def _collector_in_scope(session: AsyncSession, collector_id: int, scope_patterns: Sequence[str] | None) -> Collector:
    collector = await session.get(Collector, collector_id, with_for_update=True)
    if collector is None:
        raise NotFound(field="id")
    await _scoped(session, Concentrator, collector.concentrator_id, scope_patterns, field="id")
    return collector


async def save_collector(
    session: AsyncSession, *, concentrator_id: int, address: str, name: str, collector_id: int | None = None,
    scope_patterns: Sequence[str] | None = None,
) -> Collector:
    """Create a collector under a concentrator, or change collector ``collector_id``."""
    await _scoped(session, Concentrator, concentrator_id, scope_patterns, field="concentratorId")
    collector = await _collector_in_scope(session, collector_id, scope_patterns) if collector_id is not None else None
    problems: list[DomainError] = []
    _text_field(problems, name, "name", limit=100)
    if not address or not OTHER_ADDRESS.fullmatch(address):
        problems.append(errors.InvalidAddress("采集器地址只能包含字母和数字, 最多 32 位",
                                              "A collector address is up to 32 letters or digits",
                                              field="address"))
    elif await _exists(session, select(Collector.id).where(  # type: ignore[call-overload]
        Collector.concentrator_id == concentrator_id, Collector.address == address, Collector.id != (collector_id or 0)  # type: ignore[arg-type]
    )):
        problems.append(errors.DuplicateCollectorAddress(field="address"))
    if collector is not None and collector.concentrator_id != concentrator_id and await _exists(
        session, select(Meter.id).where(Meter.collector_id == collector.id)  # type: ignore[call-overload, arg-type]
    ):
        problems.append(errors.DeviceInUse("采集器下仍有水表, 不能换集中器", "Meters still hang under this collector",
                                           field="concentratorId"))
    await _flush_collect(problems)
    created: list[Collector] = []
    if collector is None:
        collector = Collector(concentrator_id=concentrator_id, address=address, name=name)
        created.append(collector)
    else:
        collector.concentrator_id, collector.address, collector.name = concentrator_id, address, name
    await _flush_unique(session, *created)
    return collector


async def delete_collector(session: AsyncSession, *, collector_id: int, scope_patterns: Sequence[str] | None = None) -> Collector:
    collector = await _collector_in_scope(session, collector_id, scope_patterns)
    if await _exists(session, select(Meter.id).where(Meter.collector_id == collector_id)):  # type: ignore[call-overload, arg-type]
        raise errors.DeviceInUse(field="id")
    await session.delete(collector)
    await session.flush()
    return collector
