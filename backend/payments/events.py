"""The events payments own (DESIGN.md, "Events")."""

from __future__ import annotations

from dataclasses import dataclass

from backend.events.payloads import event_payload
from backend.payments.models import PaymentChannel


@event_payload("payment.succeeded")
@dataclass(frozen=True, slots=True)
class PaymentSucceeded:
    """A payment was credited to an account, whatever its channel (counter, online, bank,
    IC card), in the transaction that posted its ledger entry. ``balance_after_fen`` is
    the account's balance right after it."""

    payment_id: int
    account_id: int
    household_id: int
    channel: PaymentChannel
    amount_fen: int
    balance_after_fen: int


@event_payload("account.closed")
@dataclass(frozen=True, slots=True)
class AccountClosed:
    """An account was closed (销户) after its final charge and refund or collection; the
    acquisition issue's handler closes a valve meter's valve."""

    account_id: int
    household_id: int


@event_payload("payment_order.changed")
@dataclass(frozen=True, slots=True)
class PaymentOrderChanged:
    """An online payment order changed state (created, paid, closed, failed), in the
    transaction that changed it; the resident app's payment result and the counter's QR
    screen follow it."""

    order_id: int
    state: str
