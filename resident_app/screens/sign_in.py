"""登录: phone number and SMS code (requestLoginCode, residentLogin).

The resend button counts down the minute the API keeps between two codes; the API
decides everything else (the number's format, the code, the lockout), and its message is
shown under the form with what to do next.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import flet as ft

from resident_app.api import ApiError
from resident_app.screens.parts import MUTED_COLOR, message_line, redraw, say

if TYPE_CHECKING:
    from resident_app.shell import ResidentApp

# Refusals after which trying again now cannot help: the form stays, sign-in is off.
LOCKOUT_CODES = frozenset({"ACCOUNT_LOCKED", "CODE_DAILY_LIMIT", "RATE_LIMITED", "SMS_DAILY_CAP"})


class SignIn:
    def __init__(self, app: ResidentApp) -> None:
        self.app = app
        self.countdown: asyncio.Task[None] | None = None
        self.phone = ft.TextField(label=app.t("sign_in.phone"), hint_text=app.t("sign_in.phone_hint"), key="phone",
                                  keyboard_type=ft.KeyboardType.PHONE, max_length=11, text_size=app.size(18),
                                  prefix_icon=ft.Icons.PHONE_ANDROID, autofocus=True)
        self.code = ft.TextField(label=app.t("sign_in.code"), hint_text=app.t("sign_in.code_hint"), key="code",
                                 keyboard_type=ft.KeyboardType.NUMBER, max_length=6, text_size=app.size(18), expand=True,
                                 on_submit=self.sign_in)
        self.send = ft.OutlinedButton(app.t("sign_in.send_code"), key="send-code", on_click=self.send_code, height=48)
        self.submit = ft.FilledButton(app.t("sign_in.submit"), key="sign-in", on_click=self.sign_in, height=52,
                                      expand=True)
        self.busy = ft.ProgressRing(width=22, height=22, stroke_width=2, visible=False, key="sign-in-busy")
        self.outcome = message_line(app, key="sign-in-message")
        self.hint = message_line(app, key="sign-in-hint")

    def build(self) -> ft.Control:
        app = self.app
        header: list[ft.Control] = [
            ft.Row([ft.Icon(ft.Icons.WATER_DROP, size=48, color=ft.Colors.BLUE_600)]),
            app.text(app.t("app.title"), 26, weight=ft.FontWeight.BOLD),
            app.text(app.t("sign_in.title"), 18),
            app.text(app.t("sign_in.subtitle"), 14, color=MUTED_COLOR),
        ]
        if app.notice:
            header.append(app.text(app.notice, 15, color=ft.Colors.ORANGE_800, key="sign-in-notice"))
        if app.return_to is not None:
            header.append(app.text(app.t("sign_in.returning", screen=app.t(f"nav.{app.return_to}")
                                         if app.return_to in ("home", "me") else app.t("bind.title")), 14,
                                   color=MUTED_COLOR))
        return ft.Column([
            *header,
            ft.Container(height=8),
            self.phone,
            ft.Row([self.code, self.send], vertical_alignment=ft.CrossAxisAlignment.START),
            self.outcome,
            self.hint,
            ft.Row([self.submit, self.busy]),
        ], spacing=12, scroll=ft.ScrollMode.AUTO, key="sign-in-screen", horizontal_alignment=ft.CrossAxisAlignment.STRETCH)

    def _phone(self) -> str | None:
        phone = (self.phone.value or "").strip()
        self.phone.error = None if phone else self.app.t("sign_in.phone_invalid")
        return phone or None

    def _refused(self, error: ApiError) -> None:
        language = self.app.preferences.language
        if error.field == "phone":
            self.phone.error = error.text(language)
        elif error.field == "code":
            self.code.error = error.text(language)
        say(self.outcome, error.text(language), error=True)
        if error.code in LOCKOUT_CODES:
            say(self.hint, self.app.t("sign_in.locked_hint"))
            self.submit.disabled = True
        elif error.code == "INVALID_CODE":
            say(self.hint, self.app.t("sign_in.wrong_code_hint"))
        else:
            say(self.hint, None)

    async def send_code(self, event: ft.Event[ft.OutlinedButton]) -> None:
        phone = self._phone()
        if phone is None:
            self.app.page.update()
            return
        self.send.disabled = True
        self.send.content = self.app.t("sign_in.sending")
        say(self.outcome, None)
        self.app.page.update()
        try:
            expires_at = await self.app.api.request_login_code(phone)
        except ApiError as error:
            self._refused(error)
            self.send.disabled = False
            self.send.content = self.app.t("sign_in.send_code")
            self.app.page.update()
            return
        minutes = 5
        if expires_at is not None:
            minutes = max(1, round((expires_at - self.app.api.clock()).total_seconds() / 60))
        say(self.outcome, self.app.t("sign_in.code_sent", phone=phone, minutes=minutes))
        say(self.hint, None)
        self.app.page.update()
        self.countdown = self.app.start_timer(self._count_down())

    async def _count_down(self) -> None:
        """Show the seconds until a new code may be asked for, then offer to resend."""
        for left in range(self.app.resend_after_s, 0, -1):
            self.send.content = self.app.t("sign_in.resend_in", seconds=left)
            if not redraw(self.send):
                return
            await asyncio.sleep(1)
        self.send.content = self.app.t("sign_in.resend")
        self.send.disabled = False
        redraw(self.send)

    async def sign_in(self, event: ft.Event[Any]) -> None:
        phone = self._phone()
        code = (self.code.value or "").strip()
        self.code.error = None if code else self.app.t("sign_in.code_invalid")
        if phone is None or not code or self.submit.disabled:
            self.app.page.update()
            return
        self.submit.disabled = True
        self.submit.content = self.app.t("sign_in.signing_in")
        self.busy.visible = True
        say(self.outcome, None)
        self.app.page.update()
        try:
            await self.app.api.resident_login(phone, code)
            if self.countdown is not None:
                self.countdown.cancel()
            await self.app.signed_in()
        except ApiError as error:
            self.submit.disabled = False
            self.submit.content = self.app.t("sign_in.submit")
            self.busy.visible = False
            self._refused(error)
            self.app.page.update()


def build(app: ResidentApp) -> ft.Control:
    return SignIn(app).build()
