"""Auth's declaration: staff users, roles, data scope, residents and API clients."""

from __future__ import annotations

from backend.auth.menus import LogModule, Menu, Operation
from backend.auth.menus import permission as _p
from backend.auth.sms.settings import SmsSettings
from backend.domain import Check, Domain, Gateway, Job, PersonalData

_STAFF = "a staff member's own record (用户管理), not a resident's"

DOMAIN = Domain(
    name="auth",
    title="用户与权限",
    models=("backend.auth.models",),
    schema="backend.auth.schema",
    routes="backend.auth.http:routes",
    menus=(
        Menu("system", "系统管理", "System", (
            _p("users:read", "查看用户", "View users"),
            _p("users:manage", "维护用户", "Maintain users"),
            _p("roles:read", "查看角色", "View roles"),
            _p("roles:manage", "维护角色与权限", "Maintain roles and permissions"),
            _p("areas:read", "查看区域", "View areas"),
            _p("clients:manage", "维护第三方接口", "Maintain API clients"),
        )),
    ),
    demo_grants={"cashier": frozenset({"areas:read"}), "repair": frozenset({"areas:read"})},
    # The brochure's 操作日志 tells 用户登录 from 用户管理 from 角色管理.
    log_modules=(
        LogModule("login", "用户登录", "Sign-in"),
        LogModule("users", "用户管理", "Users"),
        LogModule("roles", "角色管理", "Roles"),
        LogModule("clients", "第三方接口", "API clients"),
        LogModule("resident", "住户服务", "Resident services"),
        LogModule("privacy", "个人信息保护", "Personal data (PIPL)"),
    ),
    operations=(
        Operation("login", "登录", "Sign in", "login"),
        Operation("refreshToken", "刷新令牌", "Refresh token", "login"),
        Operation("logout", "退出登录", "Sign out", "login"),
        Operation("issueClientToken", "获取访问令牌", "Issue client token", "login"),
        Operation("changeMyPassword", "修改密码", "Change own password", "users"),
        Operation("createStaffUser", "新增用户", "Create user", "users"),
        Operation("updateStaffUser", "修改用户", "Update user", "users"),
        Operation("assignRoles", "分配角色", "Assign roles", "users"),
        Operation("setStaffUserPassword", "重置密码", "Reset password", "users"),
        Operation("unlockStaffUser", "解除锁定", "Unlock user", "users"),
        Operation("deleteStaffUser", "删除用户", "Delete user", "users"),
        Operation("createRole", "新增角色", "Create role", "roles"),
        Operation("updateRole", "修改角色", "Update role", "roles"),
        Operation("assignPermissions", "分配权限", "Assign permissions", "roles"),
        Operation("deleteRole", "删除角色", "Delete role", "roles"),
        Operation("createApiClient", "新增第三方", "Create API client", "clients"),
        Operation("rotateApiClientSecret", "重置密钥", "Rotate client secret", "clients"),
        Operation("setApiClientActive", "启用/停用第三方", "Enable or disable API client", "clients"),
        Operation("requestLoginCode", "发送验证码", "Send login code", "resident"),
        Operation("residentLogin", "住户登录", "Resident sign-in", "resident"),
        Operation("bindHousehold", "申请绑定住户", "Request household binding", "resident"),
        Operation("confirmHouseholdBinding", "确认绑定", "Confirm binding", "resident"),
        Operation("decideHouseholdBinding", "审核绑定", "Decide binding", "resident"),
        Operation("decideHouseholdBindingAtCounter", "柜台核验绑定", "Decide binding at the counter", "resident"),
        Operation("unbindHousehold", "解除绑定", "Unbind household", "resident"),
        # shuiwu privacy export|erase (backend.privacy, a host): auth holds the residents.
        Operation("exportPersonalData", "导出个人信息", "Export personal data", "privacy"),
        Operation("erasePersonalData", "注销个人信息", "Erase personal data", "privacy"),
    ),
    jobs=(
        Job("purge_expired_auth", "backend.auth.jobs:purge_expired_auth", cron="7 * * * *",
            description="Delete expired login sessions and one-time codes"),
    ),
    events=("backend.auth.events",),
    personal_data=PersonalData(
        export="backend.auth.privacy:export",
        erase="backend.auth.privacy:erase",
        held={
            "residents.phone": "exported; erased: a placeholder (已注销<pseudonym>#<id>), so the number is free again",
            "resident_households.is_owner": "exported with the binding; erased: the binding ends (unbound)",
            "household_bindings.decided_by": "exported (code, owner:<id> or staff:<id>); pending requests are refused",
            "auth_sessions.ip": "exported; erased: cleared, and the session revoked",
            "auth_sessions.user_agent": "exported; erased: cleared, and the session revoked",
            "one_time_codes.phone": "exported (never the code's hash); erased: deleted; "
                                    "purged SHUIWU_RETENTION_LOGIN_CODES_DAYS after use or expiry",
            "auth_throttle.key": "counters of codes sent to the phone and of code attempts: exported; erased: deleted",
            "login_failures.username": "a resident's failed binding attempts (~bind:<id>): exported; erased: "
                                       "deleted. The other rows are staff usernames (kept a day)",
        },
        excluded={
            "staff_users.username": _STAFF,
            "staff_users.full_name": _STAFF,
            "staff_users.email": _STAFF,
            "staff_users.phone": _STAFF,
            "api_clients.name": "a third-party system's name",
            "api_clients.created_by": "the staff user who added the client",
            "roles.name": "a role's name",
        },
    ),
    checks=(Check("auth.administrator", "backend.auth.checks:has_administrator",
                  "An active staff user can maintain roles"),),
    # Residents' login and binding codes (docs/sms.md). No exchanges are kept: a request
    # holds the code itself.
    gateways=(Gateway("sms", "短信", SmsSettings, fake="backend.auth.sms.fake:fake_app",
                      check="backend.auth.checks:sms_reachable",
                      description="Aliyun or Tencent Cloud SMS (SHUIWU_SMS_SENDER), or the log"),),
)
