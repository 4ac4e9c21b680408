"""我的: the bound households (switch, bind another, pending requests), language, text
size and sign out. The household list is reloaded when the screen opens."""

from __future__ import annotations

from typing import TYPE_CHECKING

import flet as ft

from resident_app.api import ApiError, Binding, HouseholdSummary
from resident_app.i18n import LANGUAGE_NAMES, LANGUAGES
from resident_app.screens.parts import MUTED_COLOR, card, failure, redraw, waiting

if TYPE_CHECKING:
    from resident_app.shell import ResidentApp


class Me:
    def __init__(self, app: ResidentApp) -> None:
        self.app = app
        self.households = ft.Column(spacing=8, key="me-households")
        self.sign_out_busy = ft.ProgressRing(width=20, height=20, stroke_width=2, visible=False)

    def build(self) -> ft.Control:
        app = self.app
        self.households.controls = [waiting(app, "me-loading")]
        app.run(self.load)
        name = app.viewer.name if app.viewer else ""
        return ft.Column([
            app.text(app.t("me.title"), 22, weight=ft.FontWeight.BOLD),
            app.text(app.t("me.signed_in_as", name=name), 15, color=MUTED_COLOR, key="me-name"),
            app.text(app.t("me.households"), 17, weight=ft.FontWeight.BOLD),
            self.households,
            ft.OutlinedButton(app.t("me.add_household"), icon=ft.Icons.ADD_HOME_OUTLINED, key="me-add",
                              on_click=self._bind_new),
            ft.Divider(),
            self._settings(),
            ft.Divider(),
            ft.Row([ft.TextButton(app.t("me.sign_out"), icon=ft.Icons.LOGOUT, key="me-sign-out", on_click=self._sign_out),
                    self.sign_out_busy]),
        ], spacing=10, scroll=ft.ScrollMode.AUTO, key="me-screen", expand=True)

    def reload(self) -> None:
        self.households.controls = [waiting(self.app, "me-loading")]
        if redraw(self.households):
            self.app.run(self.load)

    async def load(self) -> None:
        try:
            viewer = await self.app.api.viewer()
        except ApiError as error:
            if self.app.expired(error):
                return
            self.households.controls = [failure(self.app, error, key="me-error", retry=self.reload)]
            redraw(self.households)
            return
        self.app.remember_viewer(viewer)
        rows: list[ft.Control] = [self._household(item) for item in viewer.households]
        rows += [self._request(item) for item in viewer.binding_requests if item.state == "pending"]
        if not rows:
            rows = [self.app.text(self.app.t("me.no_households"), 15, color=MUTED_COLOR, key="me-empty")]
        self.households.controls = rows
        redraw(self.households)

    def _household(self, household: HouseholdSummary) -> ft.Control:
        app = self.app
        current = household.id == app.household_id
        trailing: ft.Control = (
            ft.Container(app.text(app.t("me.current"), 13, color=ft.Colors.WHITE), bgcolor=ft.Colors.BLUE_600,
                         padding=ft.Padding.symmetric(horizontal=8, vertical=2), border_radius=8)
            if current else
            ft.OutlinedButton(app.t("me.switch"), icon=ft.Icons.SWAP_HORIZ, key=f"me-switch-{household.account_no}",
                              on_click=lambda _: self._switch(household)))
        return card([ft.Row([
            ft.Column([app.text(f"{household.account_no} · {household.name}", 16, weight=ft.FontWeight.BOLD),
                       app.text(household.unit_name or household.address, 14, color=MUTED_COLOR)], spacing=2,
                      expand=True),
            trailing])], key=f"me-household-{household.account_no}")

    def _request(self, binding: Binding) -> ft.Control:
        app = self.app
        return card([ft.Row([
            ft.Column([app.text(binding.account_no, 16, weight=ft.FontWeight.BOLD),
                       app.text(app.t("me.pending"), 14, color=ft.Colors.ORANGE_800)], spacing=2, expand=True),
            ft.IconButton(ft.Icons.CHEVRON_RIGHT, key=f"me-request-{binding.account_no}",
                          on_click=lambda _: self._finish(binding))])], key=f"me-pending-{binding.account_no}")

    def _settings(self) -> ft.Control:
        app = self.app
        language = ft.SegmentedButton(
            key="me-language", selected=[app.preferences.language], allow_empty_selection=False,
            segments=[ft.Segment(value=code, label=LANGUAGE_NAMES[code]) for code in LANGUAGES],
            on_change=self._language)
        size = ft.SegmentedButton(
            key="me-text-size", selected=[app.preferences.text_size], allow_empty_selection=False,
            segments=[ft.Segment(value=code, label=app.t(f"me.text_size.{code}")) for code in ("normal", "large", "larger")],
            on_change=self._text_size)
        return ft.Column([
            ft.Row([ft.Icon(ft.Icons.TRANSLATE), app.text(app.t("me.language"), 16)]), language,
            ft.Row([ft.Icon(ft.Icons.TEXT_FIELDS), app.text(app.t("me.text_size"), 16)]), size,
        ], spacing=8)

    def _switch(self, household: HouseholdSummary) -> None:
        self.app.household_id = household.id
        self.app.show("home")

    def _finish(self, binding: Binding) -> None:
        self.app.binding = binding
        self.app.show("bind")

    def _bind_new(self, event: ft.Event[ft.OutlinedButton]) -> None:
        self.app.binding = None
        self.app.show("bind")

    def _language(self, event: ft.Event[ft.SegmentedButton]) -> None:
        chosen = list(event.control.selected or [])
        if chosen and chosen[0] in LANGUAGES:
            self.app.preferences.language = chosen[0]
        self.app.show("me")

    def _text_size(self, event: ft.Event[ft.SegmentedButton]) -> None:
        chosen = list(event.control.selected or [])
        if chosen:
            self.app.preferences.text_size = chosen[0]
        self.app.show("me")

    async def _sign_out(self, event: ft.Event[ft.TextButton]) -> None:
        self.sign_out_busy.visible = True
        self.app.page.update()
        try:
            await self.app.sign_out()
        except ApiError as error:
            self.sign_out_busy.visible = False
            self.households.controls.insert(0, failure(self.app, error, key="me-sign-out-error", retry=None))
            self.app.page.update()


def build(app: ResidentApp) -> ft.Control:
    return Me(app).build()
