"""The command catalog's check of parameters (pure: no database). The service applies it
before anything is queued (tests/remote/test_commands.py)."""

from __future__ import annotations

from typing import Any

import pytest

from backend.errors import ErrorCode
from backend.remote.catalog import PRICE_TABLE_PARAMS, TargetKind, checked_params, spec_of
from backend.remote.errors import ParamsInvalid
from backend.remote.models import CommandKind

SET = spec_of(TargetKind.meter, CommandKind.set_params)
READ = spec_of(TargetKind.meter, CommandKind.read_params)
TABLE = {"price_1_fen": 280, "step_1_m3": 180, "price_2_fen": 390, "step_2_m3": 260, "price_3_fen": 840,
         "prices_from_day": 1}


@pytest.mark.parametrize(("params", "field"), [
    ({"report_interval_h": 24}, "params.report_interval_h"),  # not a CJ/T 188 parameter: no meter could obey
    ({"price_1_fen": 350}, "params.step_1_m3"),  # the price table is written whole
    ({**TABLE, "step_2_m3": 180}, "params.step_2_m3"),  # steps must rise
    ({**TABLE, "price_3_fen": 1_000_000}, "params.price_3_fen"),  # six BCD digits
    ({**TABLE, "prices_from_day": 29}, "params.prices_from_day"),
    ({"reading_day": 0}, "params.reading_day"),
])
def test_set_params_refuses_what_a_meter_cannot_hold(params: dict[str, Any], field: str) -> None:
    with pytest.raises(ParamsInvalid) as refused:
        checked_params(SET, params)
    assert (refused.value.code, refused.value.field) == (ErrorCode.REMOTE_PARAMS_INVALID, field)


def test_a_whole_price_table_is_stored_as_integers() -> None:
    assert checked_params(SET, {**{name: str(value) for name, value in TABLE.items()}, "reading_day": 5}) == {
        "reading_day": 5, **TABLE}
    assert set(PRICE_TABLE_PARAMS) == set(TABLE)


@pytest.mark.parametrize(("params", "stored"), [
    ({}, {}),
    ({"names": []}, {}),
    ({"names": ["price_table", "settlement_day", "price_table"]}, {"names": ["settlement_day", "price_table"]}),
])
def test_read_params_names_what_to_read_once_each_in_catalog_order(params: dict[str, Any],
                                                                   stored: dict[str, Any]) -> None:
    assert checked_params(READ, params) == stored


@pytest.mark.parametrize("names", [["valve"], "settlement_day", [1]])
def test_read_params_refuses_anything_but_a_list_of_known_names(names: Any) -> None:
    with pytest.raises(ParamsInvalid) as refused:
        checked_params(READ, {"names": names})
    assert refused.value.field == "params.names"


def test_the_catalog_describes_each_parameter_for_the_form() -> None:
    """名称 / 数据 / 单位 / 说明: every parameter has a title, a unit where it has one, and its range."""
    price = next(param for param in SET.params if param.name == "price_1_fen")
    assert (price.title, price.unit, price.description) == ("一阶水价", "分/m³", "0-999999")
    names = next(param for param in READ.params if param.name == "names")
    assert [choice.title for choice in names.choices] == ["结算日", "抄表日", "价格表", "密钥版本号", "购入金额"]
