"""首页: the chosen household's month, money, state and latest reading, from one request
(:meth:`ResidentApi.home`). Loading, failure (with retry), no household (bind one) and
the figures are the screen's four states."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

import flet as ft

from resident_app.api import ApiError, Home
from resident_app.screens.parts import MUTED_COLOR, card, empty, failure, redraw, waiting

if TYPE_CHECKING:
    from resident_app.shell import ResidentApp

CONDITION_STYLE: dict[str, tuple[ft.IconData, str, str]] = {
    "normal": (ft.Icons.CHECK_CIRCLE, ft.Colors.GREEN_700, ft.Colors.GREEN_50),
    "low_balance": (ft.Icons.WARNING_AMBER, ft.Colors.ORANGE_800, ft.Colors.ORANGE_50),
    "arrears": (ft.Icons.ERROR_OUTLINE, ft.Colors.RED_700, ft.Colors.RED_50),
    "valve_closed": (ft.Icons.WATER_DROP, ft.Colors.RED_700, ft.Colors.RED_50),
}


def money(amount: Decimal) -> str:
    return f"{amount:,.2f}"


def volume(amount: Decimal) -> str:
    return f"{amount.normalize():f}" if amount == amount.to_integral() else f"{amount:.2f}"


class HomeScreen:
    def __init__(self, app: ResidentApp) -> None:
        self.app = app
        self.body = ft.Column(spacing=12, key="home-screen", scroll=ft.ScrollMode.AUTO, expand=True)

    def build(self) -> ft.Control:
        household = self.app.household
        if household is None:
            self.body.controls = [self._header(None), empty(
                self.app, key="home-empty", title_key="home.no_household", hint_key="home.no_household_hint",
                action_key="home.bind_now", action=self._bind)]
            return self.body
        self.body.controls = [self._header(None), waiting(self.app, "home-loading")]
        self.app.run(self.load)
        return self.body

    def _bind(self) -> None:
        self.app.binding = None
        self.app.show("bind")

    def _header(self, home: Home | None) -> ft.Control:
        app = self.app
        household = app.household
        title: list[ft.Control] = [app.text(app.t("home.title"), 22, weight=ft.FontWeight.BOLD)]
        if household is not None:
            title.append(app.text(f"{household.account_no} · {household.unit_name or household.address}", 14,
                                  color=MUTED_COLOR, key="home-household"))
        row: list[ft.Control] = [ft.Column(title, spacing=2, expand=True)]
        if household is not None:
            row.append(ft.IconButton(ft.Icons.REFRESH, tooltip=app.t("home.refresh"), key="home-refresh",
                                     on_click=lambda _: self.reload()))
        return ft.Row(row)

    def reload(self) -> None:
        self.body.controls = [self._header(None), waiting(self.app, "home-loading")]
        if redraw(self.body):
            self.app.run(self.load)

    async def load(self) -> None:
        household = self.app.household
        if household is None:
            return
        try:
            home = await self.app.api.home(household)
        except ApiError as error:
            if self.app.expired(error):
                return
            self.body.controls = [self._header(None), failure(self.app, error, key="home-error", retry=self.reload)]
            redraw(self.body)
            return
        self.body.controls = [self._header(home), *self._figures(home)]
        redraw(self.body)

    def _figures(self, home: Home) -> list[ft.Control]:
        app = self.app
        shown: list[ft.Control] = []
        if app.notice:
            shown.append(app.text(app.notice, 15, color=ft.Colors.GREEN_800, key="home-notice"))
        condition = home.condition
        icon, color, background = CONDITION_STYLE[condition]
        shown.append(ft.Container(
            ft.Row([ft.Icon(icon, color=color), ft.Container(app.text(app.t(f"home.state.{condition}"), 16, color=color),
                                                              expand=True)]),
            key=f"home-state-{condition}", padding=12, border_radius=12, bgcolor=background))
        if home.billing_mode is None:
            shown.append(card([app.text(app.t("home.no_account"), 16)], key="home-no-account"))
        else:
            shown.append(self._money(home))
        shown.append(self._reading(home))
        if home.unread_messages:
            shown.append(app.text(app.t("home.unread", count=home.unread_messages), 15, color=ft.Colors.BLUE_700,
                                  key="home-unread"))
        return shown

    def _money(self, home: Home) -> ft.Control:
        app = self.app
        tiles: list[ft.Control] = []
        if home.balance is not None and home.amount_due:
            tiles.append(self._tile("home.amount_due", app.t("common.yuan", amount=money(home.amount_due)),
                                    "home-amount-due", big=True))
        elif home.balance is not None:
            tiles.append(self._tile("home.balance", app.t("common.yuan", amount=money(home.balance)), "home-balance",
                                    big=True))
        if home.month_usage_m3 is not None:
            tiles.append(self._tile("home.this_month", app.t("home.m3", volume=volume(home.month_usage_m3)),
                                    "home-month-usage"))
        if home.month_charged is not None:
            tiles.append(self._tile("home.this_month_fee", app.t("common.yuan", amount=money(home.month_charged)),
                                    "home-month-fee"))
        content: list[ft.Control] = [ft.ResponsiveRow(tiles, spacing=12, run_spacing=12)]
        if home.pending_writes:
            content.append(app.text(app.t("home.pending_writes", amount=money(home.pending_writes)), 14,
                                    color=ft.Colors.ORANGE_800, key="home-pending-writes"))
        return card(content, key="home-money", bgcolor=ft.Colors.BLUE_50)

    def _tile(self, label_key: str, value: str, key: str, *, big: bool = False) -> ft.Control:
        app = self.app
        return ft.Column([app.text(app.t(label_key), 14, color=MUTED_COLOR),
                          app.text(value, 28 if big else 20, weight=ft.FontWeight.BOLD, key=key)],
                         spacing=2, col={"xs": 12 if big else 6, "md": 6})

    def _reading(self, home: Home) -> ft.Control:
        app = self.app
        latest = home.latest_reading
        if latest is None or latest.read_at is None:
            return card([app.text(app.t("home.latest_reading"), 14, color=MUTED_COLOR),
                         app.text(app.t("home.no_reading"), 16, key="home-no-reading")], key="home-reading")
        read_at = latest.read_at.astimezone(self.app.zone).strftime("%Y-%m-%d %H:%M")
        total = app.t("home.m3", volume=f"{latest.total_m3:.2f}") if latest.total_m3 is not None else "—"
        return card([
            app.text(app.t("home.latest_reading"), 14, color=MUTED_COLOR),
            ft.Row([ft.Icon(ft.Icons.SPEED, color=ft.Colors.BLUE_600), app.text(total, 20, weight=ft.FontWeight.BOLD,
                                                                                key="home-latest-total")]),
            app.text(app.t("home.read_at", time=read_at), 14, color=MUTED_COLOR, key="home-read-at"),
        ], key="home-reading")


def build(app: ResidentApp) -> ft.Control:
    return HomeScreen(app).build()
