"""Password hashing, token primitives and the keys they use (no database, no settings).

Every primitive that needs a key takes the station secret (``SHUIWU_SECRET_KEY``) and
derives its own key from it with :func:`derive_key` (HKDF-SHA256, one label per
:class:`KeyPurpose`), so a key recovered from one use (a leaked download link's HMAC, a
decrypted terminal password) says nothing about another, and no two uses share a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import os
import re
import secrets
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from backend.auth.errors import PasswordTooCommon, PasswordTooWeak, TokenExpired, TokenInvalid
from backend.auth.models import PrincipalKind

_hasher = PasswordHasher()
# Verified against when the username is unknown, so both paths take the same time.
_DUMMY_HASH = _hasher.hash("shuiwu-timing-equaliser")
JWT_ALGORITHM = "HS256"


class KeyPurpose(StrEnum):
    """What a derived key is for; the value is its HKDF label (never change one: every
    token, link, code or ciphertext made with the old label would stop verifying)."""

    access_token = "shuiwu/key/access-token/v1"
    download_link = "shuiwu/key/download-link/v1"
    login_code = "shuiwu/key/login-code/v1"
    terminal_password = "shuiwu/key/terminal-password/v1"
    webhook_secret = "shuiwu/key/webhook-secret/v1"


@functools.lru_cache(maxsize=64)
def derive_key(secret: str, purpose: KeyPurpose) -> bytes:
    """The 32-byte key for ``purpose``, derived from the station secret (HKDF-SHA256)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.value.encode()).derive(secret.encode())


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def _yield_to_the_event_loop() -> None:
    # Linux: a thread's nice value is its own; the event loop keeps the default priority.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


# argon2 is ~0.15 s of CPU and releases the GIL: on the default executor a burst of logins
# runs on every core at once and starves the event loop (and so every other request).
# Hashes run here instead, at most one per core but one, at a lower priority; the rest wait.
PASSWORD_THREADS = max(1, (os.cpu_count() or 2) - 1)
_password_executor = ThreadPoolExecutor(PASSWORD_THREADS, thread_name_prefix="argon2", initializer=_yield_to_the_event_loop)


async def hash_password_off_loop(password: str) -> str:
    return await asyncio.get_running_loop().run_in_executor(_password_executor, hash_password, password)


async def verify_password_off_loop(password_hash: str | None, password: str) -> bool:
    return await asyncio.get_running_loop().run_in_executor(_password_executor, verify_password, password_hash, password)


# Passwords that pass the length and letter/digit rule but head every leaked-password
# list (Chinese sites' leaks included); compared without case and punctuation.
COMMON_PASSWORDS = frozenset({
    "password1", "password12", "password123", "passw0rd", "p4ssw0rd", "admin123", "admin1234", "admin12345",
    "admin888", "administrator1", "abc12345", "abc123456", "abcd1234", "a1234567", "a12345678", "a123456789",
    "aa123456", "aa12345678", "qq123456", "qwe12345", "qwer1234", "qwerty12", "qwerty123",
    "1qaz2wsx", "1qazwsx", "1qaz2wsx3edc", "1qazxsw2",
    "1q2w3e4r", "1q2w3e4r5t", "q1w2e3r4", "zxcvbnm1", "asdf1234", "iloveyou1", "woaini1314", "woaini520",
    "123456abc", "123456aa", "12345678a", "123456789a", "1234qwer", "shuiwu123", "shuiwu2026", "water123",
    "welcome1", "test1234", "root1234", "user1234", "changeme1",
})


def check_password_strength(password: str, *, field: str = "password") -> None:
    """At least 8 characters (at most 128) with letters and digits, and not one of the
    most common passwords."""
    if len(password) < 8 or len(password) > 128 or not re.search(r"[A-Za-z]", password) or not re.search(r"\d", password):
        raise PasswordTooWeak(field=field)
    folded = re.sub(r"[^0-9a-z]", "", password.lower())
    if folded in COMMON_PASSWORDS:
        raise PasswordTooCommon(field=field)


def token_digest(token: str) -> str:
    """SHA-256 of a high-entropy token or secret (no stretching needed for 256-bit randoms)."""
    return hashlib.sha256(token.encode()).hexdigest()


def code_digest(secret: str, value: str) -> str:
    """HMAC for short secrets such as 6-digit codes, which a plain hash would not protect,
    under the login-code key derived from the station secret."""
    return hmac.new(derive_key(secret, KeyPurpose.login_code), value.encode(), hashlib.sha256).hexdigest()


def new_token(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def issue_access_token(
    *, secret: str, kind: PrincipalKind, principal_id: int, session_id: uuid.UUID, now: datetime, ttl_s: int
) -> tuple[str, datetime]:
    expires_at = now + timedelta(seconds=ttl_s)
    claims = {
        "sub": str(principal_id),
        "knd": kind.value,
        "sid": str(session_id),
        "iat": int(now.timestamp()),
        "exp": int(expires_at.timestamp()),
        "typ": "access",
    }
    return jwt.encode(claims, derive_key(secret, KeyPurpose.access_token), algorithm=JWT_ALGORITHM), expires_at


@functools.lru_cache(maxsize=4096)
def _verified_claims(token: str, secret: str) -> dict[str, Any]:
    """Signature-checked claims, memoized: a client sends the same token on every request
    for 15 minutes, and verifying it costs more than the rest of authentication. Only
    successes are cached (an exception is never stored); expiry is checked per call."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            derive_key(secret, KeyPurpose.access_token),
            algorithms=[JWT_ALGORITHM],
            options={"verify_exp": False, "require": ["sub", "knd", "sid", "exp"]},
        )
    except jwt.PyJWTError:
        raise TokenInvalid() from None
    if claims.get("typ") != "access":
        raise TokenInvalid()
    return claims


def decode_access_token(token: str, *, secret: str, now: datetime) -> dict[str, Any]:
    """The claims of a valid access token; expired and forged tokens are refused."""
    claims = dict(_verified_claims(token, secret))  # a copy: the memoized one stays intact
    # Expiry is checked against the injected clock, not the wall clock, so tests can travel.
    if int(claims["exp"]) <= now.timestamp():
        raise TokenExpired()
    return claims
