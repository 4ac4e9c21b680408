"""绑定户号 in the API's two steps: the account number and the registered name
(bindHousehold), then the code the API texted to the household's registered phone
(confirmHouseholdBinding). A binding the API leaves pending without a code (a tenant,
no registered phone) waits for the owner or the counter: the screen says so.

``app.binding`` is the pending binding being finished, if any (from sign-in or 我的)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import flet as ft

from resident_app.api import ApiError, Binding
from resident_app.screens.parts import MUTED_COLOR, card, message_line, say

if TYPE_CHECKING:
    from resident_app.shell import ResidentApp


class Bind:
    def __init__(self, app: ResidentApp) -> None:
        self.app = app
        self.account_no = ft.TextField(label=app.t("bind.account_no"), key="account-no", text_size=app.size(18),
                                       prefix_icon=ft.Icons.NUMBERS)
        self.name = ft.TextField(label=app.t("bind.name"), key="holder-name", text_size=app.size(18),
                                 prefix_icon=ft.Icons.PERSON_OUTLINE, on_submit=self.submit_account)
        self.code = ft.TextField(label=app.t("bind.code"), key="binding-code", text_size=app.size(18),
                                 keyboard_type=ft.KeyboardType.NUMBER, max_length=6, on_submit=self.confirm)
        self.busy = ft.ProgressRing(width=22, height=22, stroke_width=2, visible=False, key="bind-busy")
        self.outcome = message_line(app, key="bind-message")
        self.body = ft.Column(spacing=12, key="bind-screen", scroll=ft.ScrollMode.AUTO,
                              horizontal_alignment=ft.CrossAxisAlignment.STRETCH)

    def build(self) -> ft.Control:
        binding = self.app.binding
        if binding is not None and binding.state == "pending":
            self._step_two(binding)
        else:
            self._step_one()
        return self.body

    def _title(self, key: str) -> list[ft.Control]:
        return [self.app.text(self.app.t(key), 22, weight=ft.FontWeight.BOLD)]

    def _later(self) -> list[ft.Control]:
        """A way out to the app when some household is already bound."""
        if not self.app.households:
            return []
        return [ft.TextButton(self.app.t("bind.skip"), key="bind-later", on_click=lambda _: self.app.show("home"))]

    def _step_one(self) -> None:
        app = self.app
        self.button = ft.FilledButton(app.t("bind.submit"), key="bind-submit", on_click=self.submit_account, height=52,
                                      expand=True)
        self.body.controls = [
            *self._title("bind.title"),
            app.text(app.t("bind.subtitle"), 15, color=MUTED_COLOR),
            self.account_no, self.name, self.outcome,
            ft.Row([self.button, self.busy]),
            *self._later(),
        ]

    def _step_two(self, binding: Binding) -> None:
        app = self.app
        if not binding.code_sent_to:
            self._pending(binding)
            return
        self.button = ft.FilledButton(app.t("bind.confirm"), key="bind-confirm", on_click=self.confirm, height=52,
                                      expand=True)
        self.body.controls = [
            *self._title("bind.code_title"),
            app.text(app.t("bind.code_sent_to", phone=binding.code_sent_to), 15, color=MUTED_COLOR, key="bind-code-sent"),
            app.text(f"{app.t('bind.account_no')}: {binding.account_no}", 15),
            self.code, self.outcome,
            ft.Row([self.button, self.busy]),
            *self._later(),
        ]

    def _pending(self, binding: Binding) -> None:
        app = self.app
        created = binding.created_at.astimezone(self.app.zone).strftime("%Y-%m-%d %H:%M")
        self.body.controls = [
            *self._title("bind.pending_title"),
            card([ft.Row([ft.Icon(ft.Icons.HOURGLASS_TOP, color=ft.Colors.ORANGE_700),
                          ft.Container(app.text(app.t("bind.pending_body", account_no=binding.account_no, created=created),
                                                15), expand=True)]),
                  app.text(app.t("bind.code_sent_nowhere"), 14, color=MUTED_COLOR)], key="bind-pending"),
            ft.OutlinedButton(app.t("bind.another"), key="bind-another", on_click=self._another),
            *self._later(),
        ]

    def _another(self, event: ft.Event[ft.OutlinedButton]) -> None:
        self.app.binding = None
        self._step_one()
        self.body.update()

    def _working(self, label_key: str | None) -> None:
        self.busy.visible = label_key is not None
        self.button.disabled = label_key is not None
        self.button.content = self.app.t(label_key) if label_key else self.app.t(
            "bind.submit" if self.app.binding is None else "bind.confirm")
        say(self.outcome, None)
        self.app.page.update()

    def _refused(self, error: ApiError, fields: dict[str, ft.TextField]) -> None:
        if self.app.expired(error):
            return
        text = error.text(self.app.preferences.language)
        if error.field in fields:
            fields[error.field].error = text
        say(self.outcome, text, error=True)
        self.app.page.update()

    async def submit_account(self, event: ft.Event[Any]) -> None:
        account_no = (self.account_no.value or "").strip()
        name = (self.name.value or "").strip()
        self.account_no.error = None if account_no else self.app.t("bind.account_no_invalid")
        self.name.error = None if name else self.app.t("bind.name_invalid")
        if not account_no or not name:
            self.app.page.update()
            return
        self._working("bind.binding")
        try:
            binding = await self.app.api.bind_household(account_no, name)
        except ApiError as error:
            self._working(None)
            self._refused(error, {"accountNo": self.account_no, "name": self.name})
            return
        await self._settled(binding)

    async def confirm(self, event: ft.Event[Any]) -> None:
        binding = self.app.binding
        code = (self.code.value or "").strip()
        self.code.error = None if code else self.app.t("sign_in.code_invalid")
        if binding is None or not code:
            self.app.page.update()
            return
        self._working("bind.confirming")
        try:
            confirmed = await self.app.api.confirm_binding(binding.id, code)
        except ApiError as error:
            self._working(None)
            self._refused(error, {"code": self.code})
            return
        await self._settled(confirmed)

    async def _settled(self, binding: Binding) -> None:
        """Where the API left the binding: active goes to its Home, pending asks for the
        code (or waits), rejected says so."""
        app = self.app
        self.busy.visible = False
        app.binding = binding if binding.state == "pending" else None
        if binding.state == "active":
            try:
                app.remember_viewer(await app.api.viewer())
            except ApiError as error:
                self._refused(error, {})
                return
            app.household_id = binding.household_id or app.household_id
            app.show("home", notice=app.t("bind.done", account_no=binding.account_no))
            return
        if binding.state == "pending":
            self._step_two(binding)
        else:
            self._step_one()
            say(self.outcome, app.t("bind.rejected", account_no=binding.account_no), error=True)
        self.body.update()


def build(app: ResidentApp) -> ft.Control:
    return Bind(app).build()
