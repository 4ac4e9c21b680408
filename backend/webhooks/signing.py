"""Signing a delivery, and sealing the endpoint secrets that sign (docs/webhooks.md, "Verifying a delivery").

``X-Shuiwu-Signature: sha256=<hex>`` where ``<hex>`` is HMAC-SHA256, keyed with the
endpoint's secret (its UTF-8 bytes), of ``<X-Shuiwu-Timestamp>.<raw body bytes>``. The
timestamp is Unix seconds of the attempt, so a receiver refuses old or replayed
requests by time (five minutes is the suggested tolerance).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet

from backend.auth.security import KeyPurpose, derive_key

SIGNATURE_PREFIX = "sha256="


def new_secret() -> str:
    """A fresh endpoint secret: ``whsec_`` and 43 URL-safe characters (256 bits)."""
    return "whsec_" + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Shuiwu-Signature`` value of ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def verify(secret: str, timestamp: str, body: bytes, header: str) -> bool:
    """What a receiver does: recompute and compare in constant time."""
    if not timestamp.isdigit():
        return False
    return hmac.compare_digest(signature(secret, int(timestamp), body), header)


def _fernet(station_secret: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(derive_key(station_secret, KeyPurpose.webhook_secret)))


def seal(station_secret: str, secret: str) -> str:
    """``secret`` encrypted under the station key (stored in ``webhook_endpoints``)."""
    return _fernet(station_secret).encrypt(secret.encode()).decode()


def unseal(station_secret: str, sealed: str) -> str:
    return _fernet(station_secret).decrypt(sealed.encode()).decode()
