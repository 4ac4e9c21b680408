"""``shuiwu tariff load`` and ``shuiwu tariff quote``, run through the real ``shuiwu``
command against a database of this module's own."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from typer.testing import CliRunner, Result

from backend.cli import app

EXAMPLES = Path(__file__).resolve().parents[2] / "tariffs" / "examples"


async def shuiwu(database_url: str, *args: str) -> Result:
    """``shuiwu <args>`` in a thread (the command runs its own event loop)."""
    return await asyncio.to_thread(CliRunner().invoke, app, list(args),
                                   env={"SHUIWU_DATABASE_URL": database_url, "COLUMNS": "240"})


async def test_load_is_idempotent_refuses_other_content_and_quotes_the_issues_json(
    database_url: str, tmp_path: Path
) -> None:
    example = EXAMPLES / "sh-res-2024.toml"
    first = await shuiwu(database_url, "tariff", "load", str(example))
    assert (first.exit_code, first.stdout.strip()) == (0, "SH-RES 2024-01-01: saved"), first.output
    again = await shuiwu(database_url, "tariff", "load", str(example))
    assert (again.exit_code, again.stdout.strip()) == (0, "SH-RES 2024-01-01: unchanged"), again.output

    changed = tmp_path / "changed.toml"
    changed.write_text(example.read_text(encoding="utf-8").replace('"1.92"', '"1.95"'), encoding="utf-8")
    refused = await shuiwu(database_url, "tariff", "load", str(changed))
    assert refused.exit_code == 1
    assert refused.stderr.strip().splitlines() == [
        "TARIFF_VERSION_CONFLICT (valid_from): 该水价版本已存在且内容不同; 调价请使用更晚的生效日期 / "
        "This tariff version exists with different content; a change needs a later valid_from"]

    quoted = await shuiwu(database_url, "tariff", "quote", "SH-RES", "--volume", "230", "--on", "2024-06-01", "--json")
    assert quoted.exit_code == 0, quoted.output
    assert json.loads(quoted.stdout) == {"tariff": "SH-RES", "volume": "230.0000", "lines": [
        {"component": "water", "tier": 1, "volume": "220.0000", "price": "1.9200", "amount": "422.40"},
        {"component": "water", "tier": 2, "volume": "10.0000", "price": "3.3000", "amount": "33.00"},
        {"component": "sewage", "tier": 1, "volume": "220.0000", "price": "1.5300", "amount": "336.60"},
        {"component": "sewage", "tier": 2, "volume": "10.0000", "price": "1.5300", "amount": "15.30"}],
        "total": "807.30"}


async def test_quote_of_the_beijing_example_is_1040_yuan_and_a_mismatched_file_is_refused(
    database_url: str, tmp_path: Path
) -> None:
    loaded = await shuiwu(database_url, "tariff", "load", str(EXAMPLES / "bj-res-2024.toml"))
    assert loaded.exit_code == 0, loaded.output
    quoted = await shuiwu(database_url, "tariff", "quote", "BJ-RES", "--volume", "200",
                          "--from", "2024-01-01", "--to", "2024-12-31", "--json")
    assert json.loads(quoted.stdout)["total"] == "1040.00"

    bad = tmp_path / "bad.toml"
    bad.write_text('code = "BAD"\nname = "坏"\ncustomer_type = "residential"\nvalid_from = 2024-01-01\n'
                   'cycle = "year"\ntier_limits = [100]\n[[components]]\ncode = "water"\nname = "水费"\n'
                   'prices = ["1.00"]\n', encoding="utf-8")
    refused = await shuiwu(database_url, "tariff", "load", str(bad))
    assert refused.exit_code == 1
    assert refused.stderr.startswith("TARIFF_TIERS_MISMATCH (components.prices): ")


async def test_a_file_past_64_kib_is_refused_unread(database_url: str, tmp_path: Path) -> None:
    text = (EXAMPLES / "sh-res-2024.toml").read_text(encoding="utf-8").replace('"SH-RES"', '"SH-BIG"')
    at_bound = tmp_path / "at.toml"
    at_bound.write_bytes(text.encode() + b"#" * (64 * 1024 - len(text.encode())))
    assert (await shuiwu(database_url, "tariff", "load", str(at_bound))).exit_code == 0
    past = tmp_path / "past.toml"
    past.write_bytes(at_bound.read_bytes() + b"#")
    refused = await shuiwu(database_url, "tariff", "load", str(past))
    assert (refused.exit_code, refused.stderr.strip()) == (1, f"{past}: larger than 65536 bytes")
