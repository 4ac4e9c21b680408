"""Auth tables. Secrets are stored only as hashes (argon2 for passwords, SHA-256 for
high-entropy tokens and client secrets, which need no key stretching)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Boolean, Column, Date, ForeignKey, Index, Integer, String, Text, func, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlmodel import Field, SQLModel

from backend.db import enum_column, timestamptz


class RoleKind(StrEnum):
    """The brochure's role hierarchy, highest first (系统管理员 > 单位管理员 > 部门管理员 > 系统操作员)."""

    system_admin = "system_admin"
    unit_admin = "unit_admin"
    department_admin = "department_admin"
    operator = "operator"

    @property
    def rank(self) -> int:
        return list(RoleKind).index(self)


class PrincipalKind(StrEnum):
    staff = "staff"
    resident = "resident"
    client = "client"
    # Automatic work (scheduled jobs, event handlers): backend.auth.system.
    system = "system"


def _pk() -> Column:  # type: ignore[type-arg]
    return Column(BigInteger, primary_key=True, autoincrement=True)


def _unit_column() -> Column:  # type: ignore[type-arg]
    return Column(BigInteger, ForeignKey("areas.id"), nullable=True, index=True)


class StaffUser(SQLModel, table=True):
    __tablename__ = "staff_users"
    __mapper_args__ = {"eager_defaults": True}  # server defaults come back with RETURNING

    id: int | None = Field(default=None, sa_column=_pk())
    username: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    full_name: str = Field(sa_column=Column(String(64), nullable=False))
    email: str | None = Field(default=None, sa_column=Column(String(254), nullable=True))
    phone: str | None = Field(default=None, sa_column=Column(String(32), nullable=True))
    password_hash: str = Field(sa_column=Column(String(255), nullable=False))
    is_active: bool = Field(default=True, sa_column=Column(Boolean, nullable=False, server_default="true"))
    created_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=False, server_default=func.now()))
    updated_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=False, server_default=func.now()))
    last_login_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    # The unit (区域) the user belongs to: only an administrator whose scope covers it sees
    # or edits the user. NULL: the company as a whole (whole-tree scope only).
    area_id: int | None = Field(default=None, sa_column=_unit_column())


class Role(SQLModel, table=True):
    __tablename__ = "roles"
    __mapper_args__ = {"eager_defaults": True}  # server defaults come back with RETURNING

    id: int | None = Field(default=None, sa_column=_pk())
    name: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    kind: RoleKind = Field(sa_column=enum_column(RoleKind, nullable=False))
    parent_id: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("roles.id"), nullable=True))
    description: str = Field(default="", sa_column=Column(String(400), nullable=False, server_default=""))
    created_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=False, server_default=func.now()))
    # The unit the role belongs to (who may see and edit it), apart from the areas it grants.
    area_id: int | None = Field(default=None, sa_column=_unit_column())


class RolePermission(SQLModel, table=True):
    """A menu permission (菜单权限) held by a role, as a ``resource:action`` string."""

    __tablename__ = "role_permissions"
    __mapper_args__ = {"eager_defaults": True}  # server defaults come back with RETURNING

    role_id: int = Field(
        sa_column=Column(BigInteger, ForeignKey("roles.id", ondelete="CASCADE"), primary_key=True)
    )
    permission: str = Field(sa_column=Column(String(64), primary_key=True))


class RoleArea(SQLModel, table=True):
    """An area (and its subtree) in a role's data scope (行政权限)."""

    __tablename__ = "role_areas"
    __mapper_args__ = {"eager_defaults": True}  # server defaults come back with RETURNING

    role_id: int = Field(
        sa_column=Column(BigInteger, ForeignKey("roles.id", ondelete="CASCADE"), primary_key=True)
    )
    area_id: int = Field(sa_column=Column(BigInteger, ForeignKey("areas.id"), primary_key=True, index=True))


class StaffUserRole(SQLModel, table=True):
    __tablename__ = "staff_user_roles"
    __mapper_args__ = {"eager_defaults": True}  # server defaults come back with RETURNING

    user_id: int = Field(
        sa_column=Column(BigInteger, ForeignKey("staff_users.id", ondelete="CASCADE"), primary_key=True)
    )
    role_id: int = Field(sa_column=Column(BigInteger, ForeignKey("roles.id"), primary_key=True, index=True))


class LoginFailure(SQLModel, table=True):
    """Failed logins per username and source address, kept apart from users so unknown
    names count too. Per source, so a stranger's guesses lock only the stranger out."""

    __tablename__ = "login_failures"
    __mapper_args__ = {"eager_defaults": True}  # server defaults come back with RETURNING

    username: str = Field(sa_column=Column(String(64), primary_key=True))
    # The client address the attempts came from ("" when unknown).
    source: str = Field(default="", sa_column=Column(String(64), primary_key=True, server_default=""))
    failures: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    last_failed_at: datetime = Field(sa_column=timestamptz(nullable=False, index=True))
    locked_until: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))


class AuthThrottle(SQLModel, table=True):
    """Hits per throttle key and minute, shared by every API process: login attempts per
    source address, SMS codes per address and in all, codes and code attempts per phone
    (summed over a rolling day). Purged by ``purge_expired`` once older than a day."""

    __tablename__ = "auth_throttle"

    key: str = Field(sa_column=Column(String(100), primary_key=True))
    minute: datetime = Field(sa_column=timestamptz(primary_key=True, index=True))
    hits: int = Field(default=0, sa_column=Column(Integer, nullable=False))


class AuthSession(SQLModel, table=True):
    """One login: the refresh token's hash and the revocation that logout sets.

    Access tokens carry the session id, so revoking the session revokes them too.
    """

    __tablename__ = "auth_sessions"
    __mapper_args__ = {"eager_defaults": True}  # server defaults come back with RETURNING

    id: uuid.UUID = Field(default_factory=uuid.uuid4, sa_column=Column(UUID(as_uuid=True), primary_key=True))
    principal_kind: PrincipalKind = Field(sa_column=enum_column(PrincipalKind, nullable=False))
    principal_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    refresh_hash: str | None = Field(default=None, sa_column=Column(String(64), nullable=True, unique=True))
    # The refresh token this session's current one replaced: presenting it again means a
    # copy was stolen, and the whole session is revoked.
    previous_refresh_hash: str | None = Field(default=None, sa_column=Column(String(64), nullable=True, index=True))
    created_at: datetime = Field(sa_column=timestamptz(nullable=False))
    expires_at: datetime = Field(sa_column=timestamptz(nullable=False, index=True))
    revoked_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    ip: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    user_agent: str | None = Field(default=None, sa_column=Column(String(400), nullable=True))


class Resident(SQLModel, table=True):
    __tablename__ = "residents"
    __mapper_args__ = {"eager_defaults": True}  # server defaults come back with RETURNING

    id: int | None = Field(default=None, sa_column=_pk())
    phone: str = Field(sa_column=Column(String(20), nullable=False, unique=True))
    created_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=False, server_default=func.now()))
    last_login_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))


class OneTimeCode(SQLModel, table=True):
    """An SMS login code; only its hash is kept, with an attempt counter."""

    __tablename__ = "one_time_codes"
    __mapper_args__ = {"eager_defaults": True}  # server defaults come back with RETURNING

    id: int | None = Field(default=None, sa_column=_pk())
    phone: str = Field(sa_column=Column(String(20), nullable=False, index=True))
    code_hash: str = Field(sa_column=Column(String(64), nullable=False))
    created_at: datetime = Field(sa_column=timestamptz(nullable=False))
    expires_at: datetime = Field(sa_column=timestamptz(nullable=False, index=True))
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    consumed_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))


class SmsDay(SQLModel, table=True):
    """The SMS this installation claimed to send on one of the utility's days: the daily
    spend cap (``SHUIWU_SMS_DAILY_CAP``) counts here, one row a day, claimed before each
    send by one statement shared by every process (``claim_sms``), so no more than the
    cap can go out however many processes send at once."""

    __tablename__ = "sms_sends"

    day: date = Field(sa_column=Column(Date, primary_key=True))
    claimed: int = Field(sa_column=Column(Integer, nullable=False))


class ResidentHousehold(SQLModel, table=True):
    """An active binding: the resident sees the household in their app."""

    __tablename__ = "resident_households"
    __mapper_args__ = {"eager_defaults": True}  # server defaults come back with RETURNING

    resident_id: int = Field(
        sa_column=Column(BigInteger, ForeignKey("residents.id", ondelete="CASCADE"), primary_key=True)
    )
    household_id: int = Field(
        sa_column=Column(BigInteger, ForeignKey("households.id"), primary_key=True, index=True)
    )
    bound_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=False, server_default=func.now()))
    # The resident proved they hold the household's registered phone (their login phone is
    # it, or they confirmed a code sent to it): they may approve tenants' bindings.
    is_owner: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default="false"))


class BindingState(StrEnum):
    """A binding request's state, as the ``household.bound`` event carries it."""

    pending = "pending"
    active = "active"
    rejected = "rejected"
    unbound = "unbound"


class HouseholdBinding(SQLModel, table=True):
    """A resident's request to bind a household that is not proven theirs yet: pending
    until confirmed by the code sent to the household's registered phone, or approved by
    an owner or at the counter. Decided requests stay as the binding's history."""

    __tablename__ = "household_bindings"
    __mapper_args__ = {"eager_defaults": True}  # server defaults come back with RETURNING
    __table_args__ = (
        Index("uq_household_bindings_pending", "resident_id", "household_id", unique=True,
              postgresql_where=text("state = 'pending'")),
    )

    id: int | None = Field(default=None, sa_column=_pk())
    resident_id: int = Field(
        sa_column=Column(BigInteger, ForeignKey("residents.id", ondelete="CASCADE"), nullable=False)
    )
    household_id: int = Field(sa_column=Column(BigInteger, ForeignKey("households.id"), nullable=False, index=True))
    state: BindingState = Field(sa_column=enum_column(BindingState, nullable=False))
    # The confirmation code sent to the registered phone: only its keyed hash.
    code_hash: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    code_expires_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    code_attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    created_at: datetime = Field(sa_column=timestamptz(nullable=False))
    decided_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))
    # Who decided: "code", "owner:<resident id>" or "staff:<user id>".
    decided_by: str | None = Field(default=None, sa_column=Column(String(40), nullable=True))


class ApiClient(SQLModel, table=True):
    """A third party calling the API with client credentials."""

    __tablename__ = "api_clients"
    __mapper_args__ = {"eager_defaults": True}  # server defaults come back with RETURNING

    id: int | None = Field(default=None, sa_column=_pk())
    client_id: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    name: str = Field(sa_column=Column(String(100), nullable=False))
    secret_hash: str = Field(sa_column=Column(String(64), nullable=False))
    scopes: list[str] = Field(default_factory=list, sa_column=Column(ARRAY(Text), nullable=False))
    rate_per_minute: int = Field(default=600, sa_column=Column(Integer, nullable=False, server_default="600"))
    is_active: bool = Field(default=True, sa_column=Column(Boolean, nullable=False, server_default="true"))
    created_by: int | None = Field(default=None, sa_column=Column(BigInteger, ForeignKey("staff_users.id"), nullable=True))
    created_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=False, server_default=func.now()))
    last_used_at: datetime | None = Field(default=None, sa_column=timestamptz(nullable=True))


class ApiClientArea(SQLModel, table=True):
    __tablename__ = "api_client_areas"
    __mapper_args__ = {"eager_defaults": True}  # server defaults come back with RETURNING

    api_client_id: int = Field(
        sa_column=Column(BigInteger, ForeignKey("api_clients.id", ondelete="CASCADE"), primary_key=True)
    )
    area_id: int = Field(sa_column=Column(BigInteger, ForeignKey("areas.id"), primary_key=True))
