"""Auth rules: logins, tokens, staff users, roles, residents and API clients.

Plain async functions over a session (the caller commits). What varies — the signing
key, lifetimes, lockout policy, the clock — is passed in as :class:`AuthPolicy` and
``now``; nothing here reads settings or knows about HTTP.

Decisions (README "Auth"):
- Access tokens are JWTs (HS256) that name their login session; every request checks the
  session, so logout (revoking the session) revokes its access tokens at once.
- Refresh tokens are opaque, stored hashed, and rotate on every use.
- A user may grant only what they hold: a role's permissions must be a subset of the
  granter's, its areas must lie within the granter's scope, and a child role never holds
  more than its parent or ranks above it. The same holds for assigning roles and for API
  client scopes. Users and roles the actor could not have granted are not theirs to edit.
- Staff users and roles belong to a unit (``area_id``, backend.auth.scope): lists show,
  and edits reach, only those whose unit lies in the actor's scope (NOT_FOUND otherwise).
  The unit is chosen at creation within the actor's scope, by default the actor's own
  top area.
- The role hierarchy is changed from above: a parent role must lie in the actor's scope,
  and no one edits or deletes a role they hold or one above it (so a district
  administrator cannot detach, widen or re-parent their own role).
- Staff users with history are deactivated, not deleted.

The package is the domain's one service surface: other domains, the schema, the HTTP
routes, the jobs and the tests import ``backend.auth.service`` (this ``__init__``
re-exports every public name), never a module below it, so the split is invisible to
them. Inside, one module per thing a reader looks for: :mod:`.policy` (what callers pass
in: the policy and the SMS sender; what a login returns), :mod:`.throttles` (the counters
behind every limit and lockout), :mod:`.sessions` (principals, access tokens, refresh and
logout), :mod:`.login` (staff password login and its lockout), :mod:`.grants` (what an
actor may grant, and the unit a user or role belongs to), :mod:`.roles`,
:mod:`.staff_users`, :mod:`.residents` (SMS code login), :mod:`.bindings` (household
bindings), :mod:`.api_clients` and :mod:`.purge` (the hourly clean-up).
"""

from __future__ import annotations

from backend.auth.service.api_clients import (
    IssuedClient,
    api_clients_statement,
    client_visible,
    create_api_client,
    issue_client_token,
    rotate_api_client_secret,
    set_api_client_active,
)
from backend.auth.service.bindings import (
    BindingCode,
    BindingOutcome,
    bind_household,
    claim_bind_attempt,
    claim_binding_code_attempt,
    confirm_household_binding,
    decide_household_binding,
    mask_phone,
    pending_bindings_statement,
    send_binding_code,
    unbind_household,
    withdraw_binding_code,
)
from backend.auth.service.login import (
    claim_login_attempt,
    claim_password_check,
    login_staff,
    unlock_staff_user,
)
from backend.auth.service.policy import (
    AuthPolicy,
    SmsSender,
    TokenPair,
)
from backend.auth.service.purge import (
    purge_decided_bindings,
    purge_expired,
)
from backend.auth.service.residents import (
    CODE_MAX_ATTEMPTS,
    CODE_RESEND_S,
    MOBILE,
    claim_code_attempt,
    claim_code_send,
    login_resident,
    release_code_claim,
    request_login_code,
)
from backend.auth.service.roles import (
    RoleChanges,
    create_role,
    delete_role,
    role_area_ids,
    role_permissions,
    roles_by_ids,
    roles_statement,
    update_role,
)
from backend.auth.service.sessions import (
    authenticate,
    authenticate_on_connection,
    load_principal,
    logout,
    minimal_paths,
    refresh_tokens,
)
from backend.auth.service.staff_users import (
    EMAIL,
    PHONE,
    USERNAME,
    StaffUserChanges,
    change_own_password,
    create_staff_user,
    delete_staff_user,
    set_staff_password,
    staff_users_statement,
    update_staff_user,
    user_role_ids,
)
from backend.auth.service.throttles import (
    claim_sms,
    count_daily_hit,
    count_hit,
)

__all__ = [
    "CODE_MAX_ATTEMPTS",
    "CODE_RESEND_S",
    "EMAIL",
    "MOBILE",
    "PHONE",
    "USERNAME",
    "AuthPolicy",
    "BindingCode",
    "BindingOutcome",
    "IssuedClient",
    "RoleChanges",
    "SmsSender",
    "StaffUserChanges",
    "TokenPair",
    "api_clients_statement",
    "authenticate",
    "authenticate_on_connection",
    "bind_household",
    "change_own_password",
    "claim_bind_attempt",
    "claim_binding_code_attempt",
    "claim_code_attempt",
    "claim_code_send",
    "claim_login_attempt",
    "claim_password_check",
    "claim_sms",
    "client_visible",
    "confirm_household_binding",
    "count_daily_hit",
    "count_hit",
    "create_api_client",
    "create_role",
    "create_staff_user",
    "decide_household_binding",
    "delete_role",
    "delete_staff_user",
    "issue_client_token",
    "load_principal",
    "login_resident",
    "login_staff",
    "logout",
    "mask_phone",
    "minimal_paths",
    "pending_bindings_statement",
    "purge_decided_bindings",
    "purge_expired",
    "refresh_tokens",
    "release_code_claim",
    "request_login_code",
    "role_area_ids",
    "role_permissions",
    "roles_by_ids",
    "roles_statement",
    "rotate_api_client_secret",
    "send_binding_code",
    "set_api_client_active",
    "set_staff_password",
    "staff_users_statement",
    "unbind_household",
    "unlock_staff_user",
    "update_role",
    "update_staff_user",
    "user_role_ids",
    "withdraw_binding_code",
]
