"""Legal e-invoices (数电发票, 全面数字化的电子发票): the interface a provider will implement.

**Not implemented.** No provider is registered and nothing calls this interface yet: a
receipt (票据) printed by :mod:`backend.payments.receipts` is a payment voucher, not a
tax invoice. A utility that must issue 数电发票 does so through the tax bureau's platform
(乐企 direct connection) or a licensed service provider; that integration is a later
issue, which registers an implementation of :class:`EInvoiceProvider` as a gateway
(docs/gateways.md: a blocking SDK in a worker thread, each exchange kept) and records
each invoice against its payment.

The shape below is what such providers offer in common: issue a blue invoice (蓝字发票)
for a payment, write it off with a red invoice (红字发票 / 红冲) when the payment is
reversed or refunded, and query an invoice's state, since issuing is asynchronous.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol


class EInvoiceState(StrEnum):
    pending = "pending"  # 开具中: accepted by the provider, not yet by the tax platform
    issued = "issued"  # 已开具
    red_flushed = "red_flushed"  # 已红冲
    failed = "failed"  # 开具失败 (``message`` says why)


@dataclass(frozen=True, slots=True)
class EInvoiceBuyer:
    """购买方: a household's name, and for a business its 统一社会信用代码."""

    name: str
    tax_id: str | None = None
    address_phone: str | None = None
    bank_account: str | None = None
    email: str | None = None  # where the provider sends the PDF/OFD


@dataclass(frozen=True, slots=True)
class EInvoiceLine:
    """One line: 项目名称 with its 税收分类编码 (water: 1100301010000000000 自来水),
    quantity in m³ when known, amount and tax rate (water supply: 9% or 3% simplified)."""

    item: str
    tax_code: str
    amount_fen: int  # tax included
    tax_rate: str  # "0.09", "0.03"
    quantity_m3: str | None = None
    unit_price: str | None = None


@dataclass(frozen=True, slots=True)
class EInvoiceRequest:
    payment_id: int
    serial_no: str  # the payment's 流水号: the provider's idempotency key
    buyer: EInvoiceBuyer
    lines: tuple[EInvoiceLine, ...]
    remark: str = ""


@dataclass(frozen=True, slots=True)
class EInvoice:
    payment_id: int
    state: EInvoiceState
    invoice_no: str | None = None  # 发票号码 (20 digits for 数电票)
    issued_at: datetime | None = None
    download_url: str | None = None  # the provider's PDF/OFD/XML
    message: str = ""


class EInvoiceProvider(Protocol):
    """What an e-invoice provider implements (module docstring: none exists yet).
    Blocking SDKs run in a worker thread; every method is idempotent by the payment."""

    async def issue(self, request: EInvoiceRequest) -> EInvoice:
        """开具蓝字发票 for a payment; a repeat of the same ``serial_no`` returns the first."""
        ...

    async def red_flush(self, *, payment_id: int, invoice_no: str, reason: str) -> EInvoice:
        """红冲: write an issued invoice off with a red invoice (reversal, refund, wrong buyer)."""
        ...

    async def query(self, *, payment_id: int) -> EInvoice:
        """The invoice's state at the provider (issuing is asynchronous)."""
        ...
