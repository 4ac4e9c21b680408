"""Small pieces the screens share: the waiting row, the failure card with what to do
next, the empty state, and a titled card."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import flet as ft

from resident_app.api import ApiError

if TYPE_CHECKING:
    from resident_app.shell import ResidentApp

ERROR_COLOR = ft.Colors.RED_700
MUTED_COLOR = ft.Colors.GREY_700


def waiting(app: ResidentApp, key: str, label_key: str = "common.loading") -> ft.Control:
    """A spinner and what is being waited for."""
    return ft.Row([ft.ProgressRing(width=20, height=20, stroke_width=2), app.text(app.t(label_key), 15, color=MUTED_COLOR)],
                  key=key, alignment=ft.MainAxisAlignment.CENTER)


def failure(app: ResidentApp, error: ApiError, *, key: str, retry: Callable[[], None] | None) -> ft.Control:
    """The error in the resident's language (the message says what to do next), and a
    retry button when trying again can help."""
    rows: list[ft.Control] = [
        ft.Row([ft.Icon(ft.Icons.CLOUD_OFF if error.code == "OFFLINE" else ft.Icons.ERROR_OUTLINE, color=ERROR_COLOR),
                ft.Container(app.text(error.text(app.preferences.language), 15, color=ERROR_COLOR, key=f"{key}-message"),
                             expand=True)])]
    if retry is not None:
        rows.append(ft.OutlinedButton(app.t("common.retry"), icon=ft.Icons.REFRESH, key=f"{key}-retry",
                                      on_click=lambda _: retry()))
    return ft.Container(ft.Column(rows, spacing=8), key=key, padding=12, border_radius=12,
                        bgcolor=ft.Colors.RED_50)


def empty(app: ResidentApp, *, key: str, title_key: str, hint_key: str, action_key: str,
          action: Callable[[], None]) -> ft.Control:
    return ft.Column([
        ft.Icon(ft.Icons.HOME_WORK_OUTLINED, size=56, color=ft.Colors.BLUE_300),
        app.text(app.t(title_key), 18, weight=ft.FontWeight.BOLD),
        app.text(app.t(hint_key), 15, color=MUTED_COLOR),
        ft.FilledButton(app.t(action_key), key=f"{key}-action", on_click=lambda _: action()),
    ], key=key, horizontal_alignment=ft.CrossAxisAlignment.CENTER, spacing=12)


def card(content: list[ft.Control], *, key: str | None = None, bgcolor: str | None = None) -> ft.Control:
    return ft.Container(ft.Column(content, spacing=6), key=key, padding=16, border_radius=16,
                        bgcolor=bgcolor or ft.Colors.WHITE, border=ft.Border.all(1, ft.Colors.BLUE_GREY_100))


def message_line(app: ResidentApp, *, key: str) -> ft.Text:
    """A line under a form for the outcome of its last action (hidden while empty)."""
    line = app.text("", 14, key=key)
    line.visible = False
    return line


def say(line: ft.Text, value: str | None, *, error: bool = False) -> None:
    line.value = value or ""
    line.visible = bool(value)
    line.color = ERROR_COLOR if error else MUTED_COLOR


def redraw(control: ft.Control) -> bool:
    """Send ``control``'s changes; False when it is no longer on the page (its screen was
    replaced while a timer or a load still ran), so the caller stops."""
    try:
        control.update()
    except RuntimeError:
        return False
    return True
