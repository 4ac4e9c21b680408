"""One key per purpose, derived from the station secret (HKDF), so no two uses share one."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

import jwt
import pytest
from cryptography.fernet import Fernet
from sqlalchemy.ext.asyncio import AsyncSession

from backend.archives.service import TerminalPasswordCipher
from backend.auth import errors
from backend.auth import service as auth
from backend.auth.models import PrincipalKind
from backend.auth.principal import Principal
from backend.auth.security import KeyPurpose, code_digest, derive_key
from backend.exports.http import sign_download_token, verify_download_token
from tests.auth.support import NOW, POLICY, log_in
from tests.factories import make_staff

SECRET = POLICY.secret


def test_every_purpose_gets_its_own_key_and_none_is_the_secret_itself() -> None:
    keys = {purpose: derive_key(SECRET, purpose) for purpose in KeyPurpose}

    assert len(set(keys.values())) == len(KeyPurpose)
    assert all(len(key) == 32 and SECRET.encode() not in key for key in keys.values())
    assert derive_key("another-secret-of-at-least-32-characters", KeyPurpose.access_token) != keys[KeyPurpose.access_token]


async def test_an_access_token_signed_with_the_bare_secret_is_refused(session: AsyncSession) -> None:
    staff = await make_staff(session)
    pair = await log_in(session, staff)
    claims = jwt.decode(pair.access_token, options={"verify_signature": False})

    bare = jwt.encode(claims, SECRET, algorithm="HS256")

    with pytest.raises(errors.TokenInvalid):
        await auth.authenticate(session, token=bare, now=NOW, policy=POLICY)
    assert (await auth.authenticate(session, token=pair.access_token, now=NOW, policy=POLICY)).id == staff.user.id


def test_a_download_link_is_not_signed_with_the_bare_secret() -> None:
    admin = Principal(kind=PrincipalKind.staff, id=7, name="管理员", session_id=uuid.uuid4())
    token, _ = sign_download_token(secret=SECRET, purpose="/exports/meters.xlsx", principal=admin, params={}, now=NOW)
    *claims, _signature = token.split(".")
    message = "\n".join(("shuiwu/download/v2", "/exports/meters.xlsx", *claims, ""))
    bare = base64.urlsafe_b64encode(hmac.new(SECRET.encode(), message.encode(), hashlib.sha256).digest()).decode().rstrip("=")

    with pytest.raises(errors.TokenInvalid):
        verify_download_token(".".join((*claims, bare)), secret=SECRET, purpose="/exports/meters.xlsx", params={}, now=NOW)
    grant = verify_download_token(token, secret=SECRET, purpose="/exports/meters.xlsx", params={}, now=NOW)
    assert (grant.kind, grant.principal_id, grant.session_id) == (PrincipalKind.staff, 7, admin.session_id)


def test_a_login_code_digest_is_keyed_by_its_own_key() -> None:
    bare = hmac.new(SECRET.encode(), b"13800000001:123456", hashlib.sha256).hexdigest()

    assert code_digest(SECRET, "13800000001:123456") != bare


def test_a_terminal_password_stored_under_the_legacy_key_still_decrypts_and_new_ones_use_the_derived_key() -> None:
    legacy_key = base64.urlsafe_b64encode(hmac.new(SECRET.encode(), b"shuiwu/concentrator-terminal-password", hashlib.sha256).digest())
    stored_before = Fernet(legacy_key).encrypt(b"pw-2019").decode()
    cipher = TerminalPasswordCipher(SECRET)

    fresh = cipher.encrypt("pw-2026")

    assert cipher.decrypt(stored_before) == "pw-2019"
    assert Fernet(base64.urlsafe_b64encode(derive_key(SECRET, KeyPurpose.terminal_password))).decrypt(fresh.encode()) == b"pw-2026"
    assert cipher.decrypt(fresh) == "pw-2026"

