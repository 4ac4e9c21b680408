"""Auth test fixtures."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from backend.auth import security


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2 with minimal cost: still real argon2 hashes and checks, but ~1 ms instead of
    ~100 ms, so the folder stays fast. These tests pin the auth rules, not the cost
    parameters (hashes embed their own parameters, so verification is unaffected)."""
    monkeypatch.setattr(security, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
