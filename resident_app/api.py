"""A thin typed client of the shuiwu GraphQL API for the resident app: one function per
thing the resident does, each one request.

Errors come back as :class:`ApiError` with the API's stable code kept and both of its
messages (the API writes them in Chinese and English), so a screen shows the message in
the user's language and branches on the code. What the API cannot say (the server is
unreachable, answered 5xx, the sign-in expired for good) has codes of its own here
(``OFFLINE``, ``SERVER_ERROR``, ``SESSION_EXPIRED``) whose text is in the app's catalogs.

The access token is sent as a bearer token; shortly before it expires, or when the API
answers UNAUTHENTICATED, the client rotates it once with ``refreshToken`` and repeats the
request, so a resident never sees a token expire while the refresh token lives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import httpx

from resident_app.i18n import Language, translate

# Codes the app makes itself (the API's codes are the ErrorCode enum of schema.graphql).
OFFLINE = "OFFLINE"
SERVER_ERROR = "SERVER_ERROR"
SESSION_EXPIRED = "SESSION_EXPIRED"
UNAUTHENTICATED = "UNAUTHENTICATED"

# Rotate a little before the access token's end: the request must arrive while it lives.
REFRESH_MARGIN = timedelta(seconds=30)


@dataclass(frozen=True, slots=True)
class ApiError(Exception):
    """A refusal or failure, with the API's code and its messages in both languages (the
    app's own codes have no API message: their text comes from the catalogs)."""

    code: str
    message: str = ""
    message_en: str = ""
    field: str | None = None
    status: int | None = None

    def text(self, language: Language) -> str:
        """What to tell the user, in their language."""
        if self.code == OFFLINE:
            return translate(language, "common.offline")
        if self.code == SERVER_ERROR:
            return translate(language, "common.server_error", status=self.status or "")
        if self.code == SESSION_EXPIRED:
            return translate(language, "common.session_expired")
        chosen = self.message_en if language == "en" else self.message
        return chosen or translate(language, "common.unexpected", code=self.code)


@dataclass(frozen=True, slots=True)
class Tokens:
    access_token: str
    access_expires_at: datetime
    refresh_token: str | None


@dataclass(frozen=True, slots=True)
class Binding:
    """A resident's binding request (pending, active, rejected, unbound)."""

    id: str
    state: Literal["pending", "active", "rejected", "unbound"]
    account_no: str
    code_sent_to: str | None
    created_at: datetime
    household_id: str | None


@dataclass(frozen=True, slots=True)
class HouseholdSummary:
    """A bound household as the household list shows it."""

    id: str
    account_no: str
    name: str
    address: str
    unit_name: str | None
    account_id: str | None
    billing_mode: str | None


@dataclass(frozen=True, slots=True)
class Viewer:
    name: str
    households: list[HouseholdSummary]
    binding_requests: list[Binding]


@dataclass(frozen=True, slots=True)
class MeterReading:
    meter_code: str
    read_at: datetime | None
    total_m3: Decimal | None
    valve_state: str | None


@dataclass(frozen=True, slots=True)
class Home:
    """Everything 首页 shows for one household, from one request."""

    household: HouseholdSummary
    billing_mode: str | None
    balance: Decimal | None
    alert_state: str | None
    month_usage_m3: Decimal | None
    month_charged: Decimal | None
    pending_writes: Decimal
    readings: list[MeterReading]
    unread_messages: int

    @property
    def amount_due(self) -> Decimal:
        """What the account owes: the balance below zero (a resident cannot read their
        bills yet: Household.bills needs bills:read)."""
        return -self.balance if self.balance is not None and self.balance < 0 else Decimal("0.00")

    @property
    def latest_reading(self) -> MeterReading | None:
        read = [reading for reading in self.readings if reading.read_at is not None]
        return max(read, key=lambda reading: reading.read_at or datetime.min.replace(tzinfo=UTC), default=None)

    @property
    def condition(self) -> Literal["normal", "low_balance", "arrears", "valve_closed"]:
        """The one state the home banner shows, from what the API decided: a closed valve
        first (the resident has no water), then the account's alert state (close: below
        the close threshold, i.e. in arrears)."""
        if any(reading.valve_state == "closed" for reading in self.readings):
            return "valve_closed"
        if self.alert_state == "close":
            return "arrears"
        if self.alert_state == "alert":
            return "low_balance"
        return "normal"


SEND_CODE = "mutation SendCode($phone: String!) { requestLoginCode(phone: $phone) { expiresAt errors { field code message messageEn } } }"
TOKENS = "tokens { accessToken accessTokenExpiresAt refreshToken }"
RESIDENT_LOGIN = (
    "mutation ResidentLogin($phone: String!, $code: String!) { residentLogin(phone: $phone, code: $code) {"
    f" {TOKENS} errors {{ field code message messageEn }} }} }}"
)
REFRESH = (
    "mutation Refresh($token: String!) { refreshToken(refreshToken: $token) {"
    f" {TOKENS} errors {{ field code message messageEn }} }} }}"
)
LOGOUT = "mutation Logout { logout { ok } }"
BINDING = "id state accountNo codeSentTo createdAt household { id }"
HOUSEHOLD = "id accountNo name address unitName account { id mode }"
VIEWER = f"query Viewer {{ viewer {{ name households {{ {HOUSEHOLD} }} bindingRequests {{ {BINDING} }} }} }}"
BIND = (
    "mutation Bind($accountNo: String!, $name: String!) { bindHousehold(accountNo: $accountNo, name: $name) {"
    f" binding {{ {BINDING} }} errors {{ field code message messageEn }} }} }}"
)
CONFIRM_BINDING = (
    "mutation ConfirmBinding($id: ID!, $code: String!) { confirmHouseholdBinding(id: $id, code: $code) {"
    f" binding {{ {BINDING} }} errors {{ field code message messageEn }} }} }}"
)
# 首页 in one request. The API has no resident home query (the figures live on four root
# fields), so the document asks for all four at once; the account id comes from the
# household list the app already holds, and the prepaid month only for prepaid accounts.
# Open bills (amount due of a postpaid household) are missing: Household.bills and
# bills need bills:read, which residents do not hold.
HOME = f"""query ResidentHome($household: ID!, $account: ID!, $prepaid: Boolean!) {{
  household(id: $household) {{ {HOUSEHOLD}
    account {{ id mode balance alertState pendingWrites {{ amount }} }} }}
  realtimeReadings(filter: {{householdId: $household}}, first: 20) {{
    edges {{ node {{ meterCode readAt totalM3 valveState }} }} }}
  prepaidStatements(accountId: $account, months: 1) @include(if: $prepaid) {{ month usageM3 charged }}
  unreadMessageCount
}}"""


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _binding(raw: dict[str, Any]) -> Binding:
    household = raw.get("household")
    return Binding(id=raw["id"], state=raw["state"], account_no=raw["accountNo"], code_sent_to=raw.get("codeSentTo"),
                   created_at=_when(raw["createdAt"]), household_id=household["id"] if household else None)


def _household(raw: dict[str, Any]) -> HouseholdSummary:
    account = raw.get("account") or None
    return HouseholdSummary(id=raw["id"], account_no=raw["accountNo"], name=raw["name"], address=raw["address"],
                            unit_name=raw.get("unitName"), account_id=account["id"] if account else None,
                            billing_mode=account["mode"] if account else None)


def _user_errors(errors: list[dict[str, Any]]) -> None:
    """Raise the first of a payload's user errors (forms show one message per field)."""
    if errors:
        first = errors[0]
        raise ApiError(first["code"], first["message"], first["messageEn"], first.get("field"))


@dataclass
class ResidentApi:
    """One signed-in (or signing-in) resident's connection to the API."""

    base_url: str
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    timeout_s: float = 10.0
    tokens: Tokens | None = None
    _http: httpx.AsyncClient | None = field(default=None, repr=False)
    _refreshing: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def signed_in(self) -> bool:
        return self.tokens is not None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout_s)
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _post(self, document: str, variables: dict[str, Any], *, token: str | None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            response = await self._client().post("/graphql", json={"query": document, "variables": variables}, headers=headers)
        except httpx.TransportError as error:
            raise ApiError(OFFLINE, message_en=str(error)) from error
        if response.status_code >= 500:
            raise ApiError(SERVER_ERROR, status=response.status_code)
        try:
            body: dict[str, Any] = response.json()
        except ValueError as error:
            raise ApiError(SERVER_ERROR, status=response.status_code) from error
        return body

    async def execute(self, document: str, variables: dict[str, Any] | None = None, *, signed: bool = True) -> dict[str, Any]:
        """Run ``document`` and return its ``data``; a top-level error raises ApiError.
        Signed requests rotate the tokens when needed (see the module's docstring)."""
        variables = variables or {}
        if not signed:
            return self._data(await self._post(document, variables, token=None))
        if self.tokens is None:
            raise ApiError(SESSION_EXPIRED)
        if self.tokens.access_expires_at - REFRESH_MARGIN <= self.clock():
            await self._refresh(self.tokens)
        assert self.tokens is not None
        used = self.tokens
        body = await self._post(document, variables, token=used.access_token)
        if self._unauthenticated(body):
            await self._refresh(used)
            assert self.tokens is not None
            body = await self._post(document, variables, token=self.tokens.access_token)
            if self._unauthenticated(body):
                self.tokens = None
                raise ApiError(SESSION_EXPIRED)
        return self._data(body)

    @staticmethod
    def _unauthenticated(body: dict[str, Any]) -> bool:
        return any((error.get("extensions") or {}).get("code") == UNAUTHENTICATED for error in body.get("errors") or [])

    @staticmethod
    def _data(body: dict[str, Any]) -> dict[str, Any]:
        errors = body.get("errors") or []
        if errors:
            first = errors[0]
            extensions = first.get("extensions") or {}
            raise ApiError(extensions.get("code", "BAD_USER_INPUT"), first.get("message", ""),
                           extensions.get("messageEn", first.get("message", "")), extensions.get("field"))
        data: dict[str, Any] = body["data"]
        return data

    async def _refresh(self, used: Tokens) -> None:
        """Rotate the refresh token once, however many requests found the access token
        old at the same time (the lock, and ``used``: a caller that waited finds the
        tokens already rotated). No refresh token, or a refused one: SESSION_EXPIRED."""
        async with self._refreshing:
            if self.tokens is not used:
                return
            if used.refresh_token is None:
                self.tokens = None
                raise ApiError(SESSION_EXPIRED)
            body = await self._post(REFRESH, {"token": used.refresh_token}, token=None)
            payload = (body.get("data") or {}).get("refreshToken") or {}
            if body.get("errors") or payload.get("errors") or not payload.get("tokens"):
                self.tokens = None
                raise ApiError(SESSION_EXPIRED)
            self.tokens = self._tokens(payload["tokens"])

    @staticmethod
    def _tokens(raw: dict[str, Any]) -> Tokens:
        return Tokens(raw["accessToken"], _when(raw["accessTokenExpiresAt"]), raw.get("refreshToken"))

    # ------------------------------------------------------------------ what a resident does

    async def request_login_code(self, phone: str) -> datetime | None:
        """Text a login code to ``phone``; when it expires."""
        payload = (await self.execute(SEND_CODE, {"phone": phone}, signed=False))["requestLoginCode"]
        _user_errors(payload["errors"])
        return _when(payload["expiresAt"]) if payload.get("expiresAt") else None

    async def resident_login(self, phone: str, code: str) -> None:
        """Sign in with the code (a new phone registers); the tokens are kept here."""
        payload = (await self.execute(RESIDENT_LOGIN, {"phone": phone, "code": code}, signed=False))["residentLogin"]
        _user_errors(payload["errors"])
        self.tokens = self._tokens(payload["tokens"])

    async def viewer(self) -> Viewer:
        """Who is signed in, their households and their pending binding requests."""
        raw = (await self.execute(VIEWER))["viewer"]
        return Viewer(name=raw["name"], households=[_household(item) for item in raw["households"]],
                      binding_requests=[_binding(item) for item in raw["bindingRequests"]])

    async def bind_household(self, account_no: str, name: str) -> Binding:
        """Step one of binding: the account number and the registered name."""
        payload = (await self.execute(BIND, {"accountNo": account_no, "name": name}))["bindHousehold"]
        _user_errors(payload["errors"])
        return _binding(payload["binding"])

    async def confirm_binding(self, binding_id: str, code: str) -> Binding:
        """Step two: the code sent to the household's registered phone."""
        payload = (await self.execute(CONFIRM_BINDING, {"id": binding_id, "code": code}))["confirmHouseholdBinding"]
        _user_errors(payload["errors"])
        return _binding(payload["binding"])

    async def home(self, household: HouseholdSummary) -> Home:
        """首页 of ``household``, in one request."""
        prepaid = bool(household.billing_mode and household.billing_mode.startswith("prepaid"))
        # Without an account the prepaid part is skipped; the variable still needs an ID.
        data = await self.execute(HOME, {"household": household.id, "account": household.account_id or household.id,
                                         "prepaid": prepaid})
        raw = data["household"]
        account = raw.get("account")
        month = (data.get("prepaidStatements") or [None])[0]
        return Home(
            household=_household(raw),
            billing_mode=account["mode"] if account else None,
            balance=Decimal(account["balance"]) if account else None,
            alert_state=account["alertState"] if account else None,
            month_usage_m3=Decimal(month["usageM3"]) if month else None,
            month_charged=Decimal(month["charged"]) if month else None,
            pending_writes=sum((Decimal(write["amount"]) for write in (account or {}).get("pendingWrites", [])), Decimal("0.00")),
            readings=[MeterReading(node["meterCode"], _when(node["readAt"]) if node.get("readAt") else None,
                                   Decimal(node["totalM3"]) if node.get("totalM3") is not None else None, node.get("valveState"))
                      for node in (edge["node"] for edge in data["realtimeReadings"]["edges"])],
            unread_messages=data["unreadMessageCount"],
        )

    async def logout(self) -> None:
        """End this sign-in on the server (its tokens stop working) and forget them; an
        unreachable server still forgets them here."""
        try:
            if self.tokens is not None:
                await self.execute(LOGOUT)
        except ApiError as error:
            if error.code not in (OFFLINE, SERVER_ERROR, SESSION_EXPIRED):
                raise
        finally:
            self.tokens = None
