"""``shuiwu frame decode|encode`` (acquisition.cli:frame_app), as the issue specifies it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from acquisition.cli import frame_app

FRAMES = Path(__file__).parent / "frames"
ISSUE_EXAMPLE_REPLY = "FE FE 68 10 34 12 90 78 56 34 12 81 16 90 1F 00 50 34 12 00 2C 00 30 12 00 2C 30 20 10 15 03 25 20 00 00 95 16"
ISSUE_EXAMPLE_OUTPUT = (
    '{"address": "12345678901234", "meter_type": "10", "control": "81", "di": "901F", '
    '"ser": 0, "total_m3": "1234.50", "settlement_m3": "1230.00", "clock": '
    '"2025-03-15T10:20:30", "valve": "open", "battery_low": false, "checksum_ok": true}'
)

runner = CliRunner()


def golden_hex(name: str) -> str:
    lines = (FRAMES / name).read_text().splitlines()
    return " ".join(line for line in lines if not line.startswith("#"))


def test_decode_json_prints_the_issue_example_exactly() -> None:
    result = runner.invoke(frame_app, ["decode", ISSUE_EXAMPLE_REPLY, "--json"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ISSUE_EXAMPLE_OUTPUT + "\n"


def test_decode_takes_unquoted_and_unspaced_hex() -> None:
    words = ISSUE_EXAMPLE_REPLY.split()
    spaced = runner.invoke(frame_app, ["decode", *words, "--json"])
    packed = runner.invoke(frame_app, ["decode", "".join(words), "--json"])
    assert spaced.stdout == packed.stdout == ISSUE_EXAMPLE_OUTPUT + "\n"


def test_decode_without_json_lists_the_fields() -> None:
    result = runner.invoke(frame_app, ["decode", ISSUE_EXAMPLE_REPLY])
    assert result.exit_code == 0
    lines = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in result.stdout.splitlines())
    assert lines["total_m3"] == "1234.50"
    assert lines["valve"] == "open"
    assert lines["battery_low"] == "false"


def test_decode_le_model_needs_its_di_order() -> None:
    swapped = golden_hex("swapped/meter_data_901f.hex")
    result = runner.invoke(frame_app, ["decode", swapped, "--di-order", "le", "--json"])
    assert result.exit_code == 0
    decoded = json.loads(result.stdout)
    assert (decoded["di"], decoded["meter_type"], decoded["valve"], decoded["battery_low"]) == ("901F", "11", "closed", True)
    # Read as the standard order, the identifier is 1F90 and the data stays raw.
    misread = json.loads(runner.invoke(frame_app, ["decode", swapped, "--json"]).stdout)
    assert misread["di"] == "1F90"
    assert "total_m3" not in misread


def test_decode_omits_what_the_frame_lacks() -> None:
    result = runner.invoke(frame_app, ["decode", golden_hex("standard/reference_meter_data_no_clock.hex"), "--json"])
    decoded = json.loads(result.stdout)
    assert "clock" not in decoded
    assert decoded["total_m3"] == "2.00"


@pytest.mark.parametrize(
    ("golden", "kind"),
    [
        ("standard/bad_checksum.hex", "BadChecksum"),
        ("standard/bad_length.hex", "BadLength"),
        ("standard/missing_end.hex", "MissingEnd"),
        ("standard/wrong_end.hex", "MissingEnd"),
        ("standard/not_bcd_address.hex", "NotBcd"),
        ("standard/not_bcd_volume.hex", "NotBcd"),
    ],
)
def test_unreadable_frame_is_one_line_and_exit_2(golden: str, kind: str) -> None:
    result = runner.invoke(frame_app, ["decode", golden_hex(golden), "--json"])
    assert result.exit_code == 2
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"shuiwu frame: {kind}: ")
    assert "Traceback" not in result.output


def test_text_that_is_not_hex_is_one_line_and_exit_2() -> None:
    result = runner.invoke(frame_app, ["decode", "68 1G"])
    assert result.exit_code == 2
    assert result.stderr == "shuiwu frame: not hex bytes: '68 1G'\n"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["read"], "FE FE 68 10 34 12 90 78 56 34 12 01 03 90 1F 00 15 16"),
        (["read", "--di-order", "le", "--ser", "1", "--preamble", "0"], "68 10 34 12 90 78 56 34 12 01 03 1F 90 01 16 16"),
        (["valve-open", "--ser", "2"], "FE FE 68 10 34 12 90 78 56 34 12 04 04 A0 17 02 55 78 16"),
        (["valve-close", "--meter-type", "11", "--preamble", "4"], "FE FE FE FE 68 11 34 12 90 78 56 34 12 04 04 A0 17 00 99 BB 16"),
        (["read-address"], "FE FE 68 10 34 12 90 78 56 34 12 03 03 81 0A 00 F3 16"),
    ],
)
def test_encode_prints_spaced_upper_case_hex(args: list[str], expected: str) -> None:
    result = runner.invoke(frame_app, ["encode", *args, "--address", "12345678901234"])
    assert result.exit_code == 0, result.output
    assert result.stdout == expected + "\n"


def test_encode_matches_the_published_read_address_example() -> None:
    result = runner.invoke(frame_app, ["encode", "read-address", "--address", "AAAAAAAAAAAAAA", "--meter-type", "AA", "--preamble", "4"])
    assert result.stdout == golden_hex("standard/reference_read_address_request.hex") + "\n"


@pytest.mark.parametrize(
    ("args", "golden"),
    [
        (["read-prices", "--ser", "6"], "standard/price_table_read_request.hex"),
        (["read-settlement-day", "--ser", "8", "--meter-type", "11"], "standard/settlement_day_read_request.hex"),
        (["read-key-version", "--ser", "12"], "standard/key_version_request.hex"),
        (["write-settlement-day", "--day", "20", "--ser", "10"], "standard/settlement_day_write_request.hex"),
        (["write-reading-day", "--day", "25", "--ser", "11", "--preamble", "0"], "standard/reading_day_write_request.hex"),
        (["write-prices", "--prices", "280,390,840", "--steps", "180,260", "--day", "1", "--ser", "7"],
         "standard/price_table_write_request.hex"),
        (["write-prices", "--prices", "280,390,840", "--steps", "180,260", "--day", "15", "--ser", "7", "--di-order", "le"],
         "swapped/price_table_write_request.hex"),
    ],
)
def test_encode_parameter_requests_as_the_golden_frames(args: list[str], golden: str) -> None:
    result = runner.invoke(frame_app, ["encode", *args, "--address", "12345678901234"])
    assert result.exit_code == 0, result.output
    assert result.stdout == golden_hex(golden) + "\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["write-settlement-day"], "write-settlement-day needs --day"),
        (["write-reading-day", "--day", "32"], "day 32 is not a day of the month (1-31)"),
        (["write-prices", "--day", "1", "--prices", "1,2", "--steps", "1,2"], "--prices takes 3 whole numbers separated by commas"),
        (["write-prices", "--day", "1", "--prices", "1,2,3", "--steps", "1,x"], "--steps takes 2 whole numbers separated by commas"),
    ],
)
def test_parameter_requests_refuse_bad_options_in_one_line(args: list[str], message: str) -> None:
    result = runner.invoke(frame_app, ["encode", *args, "--address", "1"])
    assert result.exit_code == 2
    assert result.stderr == f"shuiwu frame: {message}\n"


def test_encoded_request_decodes_back() -> None:
    encoded = runner.invoke(frame_app, ["encode", "valve-close", "--address", "42", "--ser", "200", "--di-order", "le"]).stdout
    decoded = json.loads(runner.invoke(frame_app, ["decode", encoded.strip(), "--di-order", "le", "--json"]).stdout)
    assert decoded == {
        "address": "00000000000042",
        "meter_type": "10",
        "control": "04",
        "di": "A017",
        "ser": 200,
        "valve_command": "close",
        "checksum_ok": True,
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["read", "--address", "12x"], "address '12x' is not up to 14 decimal digits"),
        (["read", "--address", "1", "--ser", "256"], "SER 256 is not a byte"),
        (["read", "--address", "1", "--meter-type", "1G"], "meter type '1G' is not one byte in hex (two digits, e.g. 10)"),
        (["read", "--address", "1", "--preamble", "17"], "preamble 17 is not 0..16 FE bytes"),
    ],
)
def test_encode_refuses_bad_options_in_one_line(args: list[str], message: str) -> None:
    result = runner.invoke(frame_app, ["encode", *args])
    assert result.exit_code == 2
    assert result.stderr == f"shuiwu frame: {message}\n"


def test_help_states_the_defaults() -> None:
    result = runner.invoke(frame_app, ["encode", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0
    help_text = re.sub(r"\s+", " ", result.stdout)
    for default in ("[default: be]", "[default: 10]", "[default: 0]", "[default: 2]"):
        assert default in help_text
    assert "read|valve-open|valve-close|read-address" in help_text
