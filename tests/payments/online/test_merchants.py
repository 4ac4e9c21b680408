"""The merchants file: test merchants load; every mistake is one line naming where."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.payments.models import PaymentChannel
from backend.payments.online.merchants import AlipayMerchant, MerchantsInvalid, WechatMerchant, load_merchants
from backend.payments.online.models import GatewayApi
from backend.payments.online.testkeys import ALIPAY_APP_ID, write_test_merchants


def test_the_generated_test_merchants_load_with_their_keys(tmp_path: Path) -> None:
    written = write_test_merchants(tmp_path / "keys", public_base_url="http://127.0.0.1:8000/")

    merchants = load_merchants(written.merchants_file)

    alipay = merchants.default(PaymentChannel.alipay)
    wechat = merchants.default(PaymentChannel.wechat)
    assert merchants.public_base_url == "http://127.0.0.1:8000"
    assert alipay is not None and alipay.app_id == ALIPAY_APP_ID
    assert isinstance(alipay, AlipayMerchant) and alipay.private_key.startswith("-----BEGIN PRIVATE KEY-----")
    assert wechat is not None and wechat.api is GatewayApi.wechat_v3 and wechat.name == "demo"
    legacy = merchants.named(PaymentChannel.wechat, "legacy")
    assert isinstance(legacy, WechatMerchant) and legacy.api is GatewayApi.wechat_v2 and legacy.api_key and len(legacy.api_key) == 32


def test_keys_survive_a_rewrite_of_the_file(tmp_path: Path) -> None:
    first = write_test_merchants(tmp_path, public_base_url="http://a")
    key = (tmp_path / "alipay_app_private.pem").read_text()
    write_test_merchants(tmp_path, public_base_url="http://b")

    assert (tmp_path / "alipay_app_private.pem").read_text() == key
    assert load_merchants(first.merchants_file).public_base_url == "http://b"


def test_every_mistake_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "merchants.toml"
    path.write_text('''
order_expiry_minutes = 0
colour = "blue"

[[alipay]]
name = "Main App"
app_id = "2021"
private_key = "-----BEGIN PRIVATE KEY-----"
alipay_public_key = { file = "missing.pem" }

[[wechat]]
name = "v2"
api = "v2"
app_id = "wx0000000000000002"
mch_id = "1230000001"
api_key = { env = "NOT_SET_ANYWHERE" }
''', encoding="utf-8")

    with pytest.raises(MerchantsInvalid) as refused:
        load_merchants(path, environ={})

    lines = refused.value.lines
    assert any("`order_expiry_minutes` must be a whole number from 1 to 1440" in line for line in lines)
    assert any("unknown key `colour`" in line for line in lines)
    assert any("[[alipay]] #1: `name`" in line for line in lines)
    assert any("[[alipay]] #1: `app_id`" in line for line in lines)
    assert any("`private_key` must be { env" in line and "never the secret itself" in line for line in lines)
    assert any("missing.pem" in line for line in lines)
    assert any("NOT_SET_ANYWHERE is not set" in line for line in lines)
    assert not any("`public_base_url` is missing" in line for line in lines)  # no merchant loaded cleanly
    assert len(lines) == 8, lines


def test_no_file_means_no_merchants() -> None:
    merchants = load_merchants(None)

    assert merchants.default(PaymentChannel.alipay) is None and merchants.of_channel(PaymentChannel.wechat) == ()
