"""Carrying out one field command on a bus: the request frames, the exchange, and what
the reply means. No database here: :mod:`acquisition.worker` claims the command and
records the :class:`Outcome`.

- ``read_now``: ``901F``; the decoded data is the reply and the reading to ingest.
- ``valve_open`` / ``valve_close``: ``A017`` sent **once** per claim, never retried on
  the wire by the exchange (a reply lost on the way back would otherwise make the valve
  command go out twice). A claim after the first (the command came back to the queue,
  or its worker died) reads the valve first and is done without sending when the valve
  is already where it was sent. A write reply without status is checked by a read.
- ``sync_clock``: ``A015`` with the utility's wall time.
- ``backfill``: the settlement-day totals of the last ``months`` months (``D120`` …),
  in the reply (they belong to the meter's settlement days, which readings decide on later).
- ``write_purchase``: the meter's purchase count is read first (``8105``): when it holds
  this count already (an earlier claim's reply was lost) the command is done without
  sending; when it holds the count before, ``A013`` goes out with the purchase count (mod
  256, the wire's one byte) and the amount, and the reply's count says whether it took
  it; any other count is a mismatch, failed without sending and without retry (the reply
  carries the meter's count: ``backend.remote.purchases`` decides). The meter takes only
  its next count anyway, so even a repeat on the wire never adds twice.
- ``read_params``: the parameters named in ``names`` (none: settlement day, reading day
  and price table): ``8103``, ``8104``, ``8102``, the key version (``8106``, control 09)
  and a prepaid meter's purchase data (``8105``); the reply holds each one's value.
- ``set_params``: each parameter group given is written (``A011`` settlement day,
  ``A012`` reading day, ``A010`` price table) and read back at once by its read
  identifier; the command fails, without retry, when the meter refuses the write or
  holds something else afterwards (the reason says what was written and what is held).
- the rest (a concentrator's own commands) are not CJ/T 188 meter commands: failed as
  not supported, without retry.

Each request goes out with the meter model's wire settings (``MeterOnBus``): DI byte
order, ``FE`` preamble, volume places, and its response timeout when it has one.

Failures keep the transport's kinds (timeout, bad frame, device error, link down); the
first, second and last are worth another claim while attempts remain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from acquisition.links import MeterOnBus
from acquisition.protocols import cjt188
from acquisition.transport import BadReply, DeviceErrorReply, FailureKind, LinkFailure
from backend.remote.catalog import DEFAULT_READ, METER_PARAM_TITLES, MeterParam
from backend.remote.models import CommandKind

# Below this much time left there is no point in asking a meter anything.
_MIN_RESPONSE_TIMEOUT = 0.05
_COMMUNICATION_FAILURES = (FailureKind.timeout, FailureKind.bad_frame, FailureKind.link_down)


class Exchange(Protocol):
    """What a command needs of its link: one request, its reply's bytes (a bus's
    :class:`~acquisition.transport.AsyncLink`, or an NB-IoT meter listening after its
    uplink, ``acquisition.mqtt``); every failure a :class:`LinkFailure`."""

    async def exchange(self, request: bytes, *, timeout: float | None = None,  # noqa: ASYNC109
                       retries: int | None = None) -> bytes: ...


@dataclass(frozen=True, slots=True)
class CommandOrder:
    """What the worker hands over of a claimed command."""

    command_id: int
    kind: CommandKind
    params: Mapping[str, Any]
    attempt: int  # this claim's attempt, 1 for the first
    seconds_left: float  # its time limit, or what is left until its deadline when sooner


@dataclass(frozen=True, slots=True)
class Outcome:
    succeeded: bool
    reply: dict[str, Any] | None = None
    # A 901F answer, to be ingested as an actual reading.
    reading: cjt188.MeterData | None = None
    failure_kind: FailureKind | None = None
    failure_reason: str | None = None
    # Worth another claim while attempts remain.
    retry: bool = False

    @property
    def communication_failed(self) -> bool:
        """The meter was not heard (what the 通讯失败 alarm counts), rather than refusing."""
        return not self.succeeded and self.failure_kind in _COMMUNICATION_FAILURES


def _failed(failure: LinkFailure) -> Outcome:
    return Outcome(False, failure_kind=failure.kind, failure_reason=str(failure),
                   retry=failure.kind in _COMMUNICATION_FAILURES)


def _refused(reason: str) -> Outcome:
    return Outcome(False, failure_kind=FailureKind.device_error, failure_reason=reason)


class _Bus:
    """One meter's requests on the link, with the command's time left and the model's timing."""

    def __init__(self, link: Exchange, meter: MeterOnBus, *, response_timeout: float, seconds_left: float,
                 retries: int) -> None:
        self.link = link
        self.meter = meter
        # The model's own response timeout where it has one, the worker's otherwise.
        model_timeout = meter.response_timeout if meter.response_timeout is not None else response_timeout
        self.timeout = max(_MIN_RESPONSE_TIMEOUT, min(model_timeout, seconds_left))
        self.retries = retries

    def _frame_options(self) -> dict[str, Any]:
        return {"meter_type": self.meter.meter_type, "di_order": self.meter.di_order, "preamble": self.meter.preamble}

    async def ask(self, request: bytes, *, retries: int | None = None) -> cjt188.Frame:
        raw = await self.link.exchange(request, timeout=self.timeout,
                                       retries=self.retries if retries is None else retries)
        try:
            return cjt188.decode(raw, di_order=self.meter.di_order, volume_decimals=self.meter.volume_decimals)
        except cjt188.FrameError as error:
            raise BadReply(f"{type(error).__name__}: {error}") from error

    async def read(self) -> cjt188.MeterData:
        answer = await self.ask(cjt188.encode_read(self.meter.address, **self._frame_options()))
        if not isinstance(answer, cjt188.MeterData):
            raise BadReply(f"901F answered with {type(answer).__name__}")
        if answer.total.in_m3() is None:
            raise BadReply(f"901F register in unit {answer.total.unit:02X}, not a volume")
        return answer

    def request(self, kind: CommandKind, params: Mapping[str, Any], *, now_local: datetime) -> bytes:
        options = self._frame_options()
        address = self.meter.address
        match kind:
            case CommandKind.valve_open | CommandKind.valve_close:
                command = cjt188.ValveCommand.OPEN if kind is CommandKind.valve_open else cjt188.ValveCommand.CLOSE
                return cjt188.encode_valve(address, command=command, **options)
            case CommandKind.sync_clock:
                return cjt188.encode_write_clock(address, clock=now_local.replace(tzinfo=None, microsecond=0), **options)
            case CommandKind.write_purchase:
                return cjt188.encode_write_purchase(address, purchase_count=int(params["purchase_count"]) % 256,
                                                    amount_fen=int(params["amount_fen"]), **options)
        raise ValueError(f"no single request for {kind}")


def _valve_target(kind: CommandKind) -> cjt188.ValveStatus:
    return cjt188.ValveStatus.open if kind is CommandKind.valve_open else cjt188.ValveStatus.closed


async def carry_out(link: Exchange, order: CommandOrder, meter: MeterOnBus, *, response_timeout: float,
                    retries: int, now_local: datetime) -> Outcome:
    """Carry ``order`` out on ``link`` for ``meter`` (module docstring); every failure is
    an :class:`Outcome`, never an exception, except a bug."""
    bus = _Bus(link, meter, response_timeout=response_timeout, seconds_left=order.seconds_left, retries=retries)
    try:
        match order.kind:
            case CommandKind.read_now:
                data = await bus.read()
                return Outcome(True, reply=cjt188.to_json(data), reading=data)
            case CommandKind.valve_open | CommandKind.valve_close:
                return await _valve(bus, order)
            case CommandKind.sync_clock:
                answer = await bus.ask(bus.request(order.kind, order.params, now_local=now_local))
                if not isinstance(answer, cjt188.WriteReply):
                    raise BadReply(f"A015 answered with {type(answer).__name__}")
                return Outcome(True, reply=cjt188.to_json(answer) | {"clock": now_local.replace(
                    tzinfo=None, microsecond=0).isoformat()})
            case CommandKind.backfill:
                return await _backfill(bus, int(order.params.get("months", 1)))
            case CommandKind.write_purchase:
                return await _purchase(bus, order)
            case CommandKind.read_params:
                return await _read_params(bus, order)
            case CommandKind.set_params:
                return await _set_params(bus, order)
    except LinkFailure as failure:
        return _failed(failure)
    return _refused(f"CJ/T 188 水表不支持此命令 / not a CJ/T 188 meter command: {order.kind.value}")


async def _valve(bus: _Bus, order: CommandOrder) -> Outcome:
    target = _valve_target(order.kind)
    reading: cjt188.MeterData | None = None
    if order.attempt > 1:
        # An earlier claim may have moved the valve and lost only the reply: look first.
        reading = await bus.read()
        if reading.status.valve is target:
            return Outcome(True, reply={"valve": target.value, "already": True, "read": cjt188.to_json(reading)},
                           reading=reading)
    answer = await bus.ask(bus.request(order.kind, order.params, now_local=datetime.min), retries=0)
    if not isinstance(answer, cjt188.WriteReply):
        raise BadReply(f"A017 answered with {type(answer).__name__}")
    status = answer.status
    if status is None:  # a maker that acknowledges without status: read it back
        reading = await bus.read()
        status = reading.status
    if status.valve is target:
        return Outcome(True, reply={"valve": target.value, "battery_low": status.battery_low}, reading=reading)
    if status.valve is cjt188.ValveStatus.abnormal:
        return _refused(f"阀门异常 / the valve reports abnormal (status {status.to_bytes().hex(' ').upper()})")
    return Outcome(False, reply={"valve": status.valve.value}, failure_kind=FailureKind.device_error,
                   failure_reason=f"阀门未动作 / the valve stayed {status.valve.value}", retry=True)


async def _backfill(bus: _Bus, months: int) -> Outcome:
    history = []
    for months_ago in range(1, months + 1):
        answer = await bus.ask(cjt188.encode_read_history(bus.meter.address, months_ago=months_ago,
                                                          **bus._frame_options()))
        if not isinstance(answer, cjt188.HistoryData):
            raise BadReply(f"history {cjt188.history_di(months_ago):04X} answered with {type(answer).__name__}")
        fields = cjt188.to_json(answer)
        history.append({name: fields[name] for name in fields if name.startswith(("months_ago", "settlement"))})
    return Outcome(True, reply={"history": history})


async def _purchase(bus: _Bus, order: CommandOrder) -> Outcome:
    count = int(order.params["purchase_count"]) % 256
    held = await bus.ask(cjt188.encode_read(bus.meter.address, di=cjt188.DataId.READ_PURCHASE, **bus._frame_options()))
    if not isinstance(held, cjt188.PurchaseData):
        raise BadReply(f"8105 answered with {type(held).__name__}")
    before = cjt188.to_json(held)
    if held.purchase_count == count:
        return Outcome(True, reply=before | {"already": True})
    if held.purchase_count != (count - 1) % 256:
        return Outcome(False, reply=before, failure_kind=FailureKind.device_error,
                       failure_reason=f"水表购水次数为 {held.purchase_count}, 不能接受第 {count} 次 / "
                                      f"the meter holds purchase {held.purchase_count}: {count} is not its next")
    answer = await bus.ask(bus.request(order.kind, order.params, now_local=datetime.min))
    if not isinstance(answer, cjt188.PurchaseReply):
        raise BadReply(f"A013 answered with {type(answer).__name__}")
    reply = cjt188.to_json(answer) | {"balance_before_fen": held.balance_fen}
    if answer.purchase_count != count:
        return Outcome(False, reply=reply, failure_kind=FailureKind.device_error,
                       failure_reason=f"水表购水次数为 {answer.purchase_count}, 未接受第 {count} 次 / "
                                      f"the meter holds purchase {answer.purchase_count}, not {count}", retry=True)
    return Outcome(True, reply=reply)


# ---------------------------------------------------------------------------- parameters

# The price table's parameters of set_params, in the order of PriceTable's fields.
_PRICE_PARAMS = ("price_1_fen", "price_2_fen", "price_3_fen")
_STEP_PARAMS = ("step_1_m3", "step_2_m3")


class _ParamRefused(Exception):
    """The meter answered a parameter's request with an error reply (it does not keep it, or refuses it)."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.status = status


async def _read_param(bus: _Bus, name: MeterParam) -> Any:
    """One parameter as JSON: an int (days, key version) or a dict (price table, purchase)."""
    options = bus._frame_options()
    address = bus.meter.address
    try:
        match name:
            case MeterParam.settlement_day | MeterParam.reading_day:
                di = (cjt188.DataId.READ_SETTLEMENT_DAY if name is MeterParam.settlement_day
                      else cjt188.DataId.READ_READING_DAY)
                answer = await bus.ask(cjt188.encode_read(address, di=di, **options))
                if isinstance(answer, cjt188.DayData) and answer.di == di:
                    return answer.day
            case MeterParam.price_table:
                answer = await bus.ask(cjt188.encode_read(address, di=cjt188.DataId.READ_PRICES, **options))
                if isinstance(answer, cjt188.PriceTableData):
                    return {"prices_fen": list(answer.table.prices_fen), "steps_m3": list(answer.table.steps_m3)}
            case MeterParam.key_version:
                answer = await bus.ask(cjt188.encode_read_key_version(address, **options))
                if isinstance(answer, cjt188.KeyVersionData):
                    return answer.key_version
            case MeterParam.purchase:
                answer = await bus.ask(cjt188.encode_read(address, di=cjt188.DataId.READ_PURCHASE, **options))
                if isinstance(answer, cjt188.PurchaseData):
                    return {"purchase_count": answer.purchase_count, "amount_fen": answer.amount_fen,
                            "total_bought_fen": answer.total_bought_fen, "balance_fen": answer.balance_fen}
    except DeviceErrorReply as refused:
        raise _ParamRefused(f"水表不支持读取{METER_PARAM_TITLES[name]} / the meter does not give {name.value} "
                            f"(error status {refused.status:04X})", refused.status) from refused
    raise BadReply(f"{name.value} answered with {type(answer).__name__}")


async def _read_params(bus: _Bus, order: CommandOrder) -> Outcome:
    names = [MeterParam(name) for name in order.params.get("names") or DEFAULT_READ]
    values: dict[str, Any] = {}
    for name in names:
        try:
            values[name.value] = await _read_param(bus, name)
        except _ParamRefused as refused:
            return Outcome(False, reply=values, failure_kind=FailureKind.device_error, failure_reason=str(refused))
    return Outcome(True, reply=values)


def _writes(bus: _Bus, params: Mapping[str, Any]) -> list[tuple[MeterParam, Any, bytes]]:
    """(parameter, the value it should read back as, the write request) for each group given."""
    options = bus._frame_options()
    address = bus.meter.address
    writes: list[tuple[MeterParam, Any, bytes]] = []
    for name, di in ((MeterParam.settlement_day, cjt188.DataId.WRITE_SETTLEMENT_DAY),
                     (MeterParam.reading_day, cjt188.DataId.WRITE_READING_DAY)):
        if name.value in params:
            day = int(params[name.value])
            writes.append((name, day, cjt188.encode_write_day(address, di=di, day=day, **options)))
    if _PRICE_PARAMS[0] in params:
        prices = tuple(int(params[key]) for key in _PRICE_PARAMS)
        steps = tuple(int(params[key]) for key in _STEP_PARAMS)
        table = cjt188.PriceTable((prices[0], prices[1], prices[2]), (steps[0], steps[1]))
        request = cjt188.encode_write_prices(address, table=table, start_day=int(params["prices_from_day"]), **options)
        writes.append((MeterParam.price_table, {"prices_fen": list(prices), "steps_m3": list(steps)}, request))
    return writes


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "/".join(str(part) for part in value["prices_fen"]) + " 分 @ " + "/".join(
            str(part) for part in value["steps_m3"]) + " m³"
    return str(value)


async def _set_params(bus: _Bus, order: CommandOrder) -> Outcome:
    """Write each group, then read it back; stop at the first refusal or difference."""
    written: dict[str, Any] = {}
    for name, wanted, request in _writes(bus, order.params):
        title = METER_PARAM_TITLES[name]
        try:
            answer = await bus.ask(request)
        except DeviceErrorReply as refused:
            return Outcome(False, reply={"written": written}, failure_kind=FailureKind.device_error,
                           failure_reason=f"水表拒绝写{title} / the meter refused {name.value} "
                                          f"(error status {refused.status:04X})")
        if not isinstance(answer, cjt188.WriteReply):
            raise BadReply(f"the {name.value} write answered with {type(answer).__name__}")
        try:
            held = await _read_param(bus, name)
        except _ParamRefused as refused:
            return Outcome(False, reply={"written": written}, failure_kind=FailureKind.device_error,
                           failure_reason=f"{title}写入后无法回读 / {refused}")
        if held != wanted:
            return Outcome(False, reply={"written": written, "read_back": {name.value: held}},
                           failure_kind=FailureKind.device_error,
                           failure_reason=f"回读不符: {title}写入 {_shown(wanted)}, 水表为 {_shown(held)} / read-back "
                                          f"differs: {name.value} written {_shown(wanted)}, the meter holds {_shown(held)}")
        written[name.value] = held
    return Outcome(True, reply=written)
