"""The resident app's frame: who is signed in, the chosen household, language and text
size, which screen shows, and the navigation between the screens that exist.

One :class:`ResidentApp` per Flet session (a phone, a desktop window or a browser tab),
so nothing here is shared between residents.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo

import flet as ft

from resident_app.api import SESSION_EXPIRED, ApiError, Binding, HouseholdSummary, ResidentApi, Viewer
from resident_app.i18n import Language, translate

Route = Literal["sign-in", "bind", "home", "me"]
# The screens in the navigation bar, in order (a screen not built is not listed).
NAVIGATION: tuple[tuple[Route, str, ft.IconData], ...] = (
    ("home", "nav.home", ft.Icons.HOME_OUTLINED),
    ("me", "nav.me", ft.Icons.PERSON_OUTLINE),
)
TEXT_SCALES: dict[str, float] = {"normal": 1.0, "large": 1.15, "larger": 1.3}
# Past this width the navigation moves to a rail on the left and the content keeps a
# phone-like column in the middle.
DESK_WIDTH = 840
CONTENT_MAX_WIDTH = 560
FONT_FAMILY = "cjk"
FONT_ASSET = "/fonts/NotoSansSC-GB2312.woff2"
# Times are shown in the utility's zone (the API's SHUIWU_TIMEZONE default), not the device's.
ZONE = ZoneInfo("Asia/Shanghai")


@dataclass
class Preferences:
    language: Language = "zh"
    text_size: str = "normal"


class ResidentApp:
    """The state of one resident's session and the screen switcher."""

    def __init__(self, page: ft.Page, api: ResidentApi, *, resend_after_s: int = 60) -> None:
        self.page = page
        self.api = api
        self.preferences = Preferences()
        self.resend_after_s = resend_after_s
        self.zone = ZONE
        self.viewer: Viewer | None = None
        self.household_id: str | None = None
        self.route: Route = "sign-in"
        # Where an expired sign-in came from, to return there after signing in again.
        self.return_to: Route | None = None
        self.notice: str | None = None
        self.binding: Binding | None = None
        self.root = ft.Container(expand=True, alignment=ft.Alignment.TOP_CENTER)
        # Timers a screen started (the resend countdown), stopped when the session ends.
        self.timers: set[asyncio.Task[None]] = set()
        page.on_resize = self._on_resize

    # ------------------------------------------------------------------ strings and sizes

    def t(self, key: str, **values: object) -> str:
        return translate(self.preferences.language, key, **values)

    def size(self, base: float) -> float:
        """A text size scaled by the resident's chosen text size (我的 → 字体大小)."""
        return round(base * TEXT_SCALES[self.preferences.text_size], 1)

    def text(self, value: str, base: float = 16, *, weight: ft.FontWeight | None = None, color: str | None = None,
             key: str | None = None) -> ft.Text:
        return ft.Text(value, size=self.size(base), weight=weight, color=color, key=key)

    @property
    def desk(self) -> bool:
        return (self.page.width or 0) >= DESK_WIDTH

    # ------------------------------------------------------------------ households

    @property
    def households(self) -> list[HouseholdSummary]:
        return self.viewer.households if self.viewer else []

    @property
    def household(self) -> HouseholdSummary | None:
        return next((item for item in self.households if item.id == self.household_id), None)

    def remember_viewer(self, viewer: Viewer) -> None:
        """Keep the viewer; the chosen household stays chosen while it is still bound."""
        self.viewer = viewer
        if self.household is None:
            self.household_id = viewer.households[0].id if viewer.households else None

    # ------------------------------------------------------------------ navigation

    def show(self, route: Route, *, notice: str | None = None) -> None:
        """Build ``route``'s screen and put it up (with the navigation when signed in)."""
        from resident_app.screens import bind, home, me, sign_in

        self.route = route
        self.notice = notice
        builders: dict[Route, Callable[[ResidentApp], ft.Control]] = {
            "sign-in": sign_in.build, "bind": bind.build, "home": home.build, "me": me.build}
        screen = builders[route](self)
        column = ft.Container(content=screen, width=min(self.page.width or CONTENT_MAX_WIDTH, CONTENT_MAX_WIDTH),
                              padding=ft.Padding.symmetric(horizontal=16, vertical=12), expand=True)
        self.root.content = column
        self._navigation()
        self.page.update()

    def _navigation(self) -> None:
        signed_in_screens = [item[0] for item in NAVIGATION]
        if self.route not in signed_in_screens:
            self.page.navigation_bar = None
            self.page.controls[:] = [ft.SafeArea(content=self.root, expand=True)]
            return
        selected = signed_in_screens.index(self.route)
        if self.desk:
            self.page.navigation_bar = None
            rail = ft.NavigationRail(
                selected_index=selected, key="navigation", label_type=ft.NavigationRailLabelType.ALL,
                destinations=[ft.NavigationRailDestination(icon=icon, label=self.t(label)) for _, label, icon in NAVIGATION],
                on_change=self._navigate)
            self.page.controls[:] = [ft.SafeArea(content=ft.Row([rail, ft.VerticalDivider(width=1), self.root], expand=True),
                                                 expand=True)]
        else:
            self.page.navigation_bar = ft.NavigationBar(
                selected_index=selected, key="navigation",
                destinations=[ft.NavigationBarDestination(icon=icon, label=self.t(label)) for _, label, icon in NAVIGATION],
                on_change=self._navigate)
            self.page.controls[:] = [ft.SafeArea(content=self.root, expand=True)]

    def _navigate(self, event: ft.Event[ft.NavigationBar] | ft.Event[ft.NavigationRail]) -> None:
        index = int(event.control.selected_index or 0)
        self.show(NAVIGATION[index][0])

    def _on_resize(self, event: ft.PageResizeEvent) -> None:
        self.show(self.route, notice=self.notice)

    # ------------------------------------------------------------------ sessions

    def run(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` in the session's loop (a screen's load or action)."""
        self.page.run_task(work)

    def start_timer(self, work: Coroutine[None, None, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self.timers.add(task)
        task.add_done_callback(self.timers.discard)
        return task

    async def close(self) -> None:
        """The session ended (tab or window closed): stop timers, close the connection."""
        for task in list(self.timers):
            task.cancel()
        await self.api.close()

    def expired(self, error: ApiError) -> bool:
        """When ``error`` means the sign-in is over, go back to sign-in remembering the
        screen; True when it did (the caller stops)."""
        if error.code != SESSION_EXPIRED:
            return False
        self.return_to = self.route if self.route != "sign-in" else None
        self.viewer = None
        self.show("sign-in", notice=error.text(self.preferences.language))
        return True

    async def signed_in(self) -> None:
        """After the code was accepted: load the households, then go where the resident
        was (an expired sign-in), to Home, or to binding when nothing is bound yet."""
        viewer = await self.api.viewer()
        self.remember_viewer(viewer)
        target: Route
        if self.return_to is not None:
            target, self.return_to = self.return_to, None
        elif viewer.households:
            target = "home"
        else:
            self.binding = next((item for item in viewer.binding_requests if item.state == "pending"), None)
            target = "bind"
        self.show(target)

    async def sign_out(self) -> None:
        await self.api.logout()
        self.viewer = None
        self.household_id = None
        self.binding = None
        self.show("sign-in")
