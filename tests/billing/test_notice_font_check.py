"""``shuiwu check``'s billing.notice_font line: the bill notices' font is there, or one
failed line saying what to install."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker

from backend.billing.checks import notice_font
from backend.jobs import runtime_for
from backend.settings import Settings

# The check reads no table: a session factory bound to nothing.
NO_DATABASE: async_sessionmaker = async_sessionmaker()  # type: ignore[type-arg]


async def test_the_notice_font_line_names_the_font(tmp_path: Path) -> None:
    result = await notice_font(runtime_for(Settings(data_dir=tmp_path), NO_DATABASE))

    assert result.ok and result.detail == "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc (face 0)"


async def test_a_missing_notice_font_fails_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHUIWU_BILLING_NOTICE_FONT", str(tmp_path / "none.ttf"))

    result = await notice_font(runtime_for(Settings(data_dir=tmp_path), NO_DATABASE))

    assert not result.ok and "fonts-wqy-microhei" in result.detail
