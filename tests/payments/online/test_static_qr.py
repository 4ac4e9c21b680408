"""Static QR stickers: a community's sheet prints one sticker per household (QR, 户号,
masked address, 扫码缴水费), each building from a new page, only within the caller's
scope; a household's QR encodes its landing page's token; the demo writes its own test
merchants unless a merchants file is named."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from backend.billing.notices import local_today
from backend.clock import utcnow
from backend.errors import NotFound
from backend.exports.pdf import PdfFont
from backend.payments.online import demo, static_qr
from backend.payments.online.merchants import load_merchants
from backend.payments.online.pages import household_of_token
from backend.settings import Settings
from tests.billing.bill_rows import make_bill_town
from tests.billing.factories import SHANGHAI
from tests.payments.receipt_pdf import embedded_fonts, pages, text_runs

BASE = "https://pay.example-water.cn"
SECRET = "s" * 48


async def test_a_community_sheet_has_one_sticker_per_household_each_building_from_a_new_page(
        session: AsyncSession) -> None:
    town = await make_bill_town(session, local_today(utcnow(), SHANGHAI))
    assert town.tree.east_community.id is not None

    stickers = await static_qr.sticker_households(session, area_id=town.tree.east_community.id, scope_patterns=None,
                                                  public_base_url=BASE, secret=SECRET)
    pdf = static_qr.render_sticker_sheet(stickers, font=PdfFont())

    numbers = [town.households[key].account_no for key in ("wang", "zhang", "li")]
    assert [s.account_no for s in stickers] == numbers  # a door round: building, room
    assert pages(pdf) == 2  # 1号楼 (王芳, 张伟), then 2号楼 (李强)
    first, second = ([run.text for run in text_runs(pdf, page)] for page in (0, 1))
    assert first.count("扫码缴水费") == 2 and second.count("扫码缴水费") == 1
    assert {f"户号 {numbers[0]}", f"户号 {numbers[1]}"} <= set(first) and f"户号 {numbers[2]}" in second
    assert "王芳" not in " ".join(first + second)
    assert any(embedded for name, embedded in embedded_fonts(pdf).items())
    for sticker in stickers:
        token = sticker.url.removeprefix(f"{BASE}/pay/s/")
        assert household_of_token(SECRET, token) == sticker.household_id


async def test_a_household_outside_the_scope_is_not_found(session: AsyncSession) -> None:
    town = await make_bill_town(session, local_today(utcnow(), SHANGHAI))
    na = town.households["na"]  # 西山名苑, the west
    assert na.id is not None

    with pytest.raises(NotFound):
        await static_qr.household_sticker(session, household_id=na.id, scope_patterns=[f"{town.tree.east.path}%"],
                                          public_base_url=BASE, secret=SECRET)
    sticker = await static_qr.household_sticker(session, household_id=na.id, scope_patterns=None,
                                                public_base_url=BASE, secret=SECRET)
    assert sticker.url == static_qr.static_qr_url(BASE, SECRET, na.id)


def test_a_qr_image_is_a_png_and_an_svg_of_the_same_modules() -> None:
    url = static_qr.static_qr_url(BASE, SECRET, 123)
    matrix = static_qr.qr_matrix(url)
    side = len(matrix) + 2 * static_qr.QUIET_ZONE

    png = static_qr.qr_png(url, scale=4)
    svg = static_qr.qr_svg(url)

    assert png.startswith(b"\x89PNG") and f'viewBox="0 0 {side} {side}"' in svg
    assert svg.count("h1v1h-1z") == sum(sum(row) for row in matrix)
    assert matrix[0][:7] == [True] * 7  # a finder pattern in the corner


def test_the_demo_writes_its_test_merchants_unless_a_file_is_named(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(demo.CONFIG_VARIABLE, raising=False)
    settings = Settings(data_dir=tmp_path)

    environment = demo.demo_environment(settings, "http://127.0.0.1:8000")

    path = Path(environment[demo.CONFIG_VARIABLE])
    assert path.parent == tmp_path / "payments"
    merchants = load_merchants(path)
    assert merchants.public_base_url == "http://127.0.0.1:8000"
    assert [m.name for m in merchants.alipay] == ["demo"] and [m.name for m in merchants.wechat] == ["demo", "legacy"]
    monkeypatch.setenv(demo.CONFIG_VARIABLE, str(path))
    assert demo.demo_environment(settings, "http://127.0.0.1:8000") == {}
