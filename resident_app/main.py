"""The resident app's entry: ``shuiwu resident-app`` opens it in a desktop window, or with
``--web`` serves it to browsers (offline: the Flutter renderer and the CJK font come from
this machine, never a CDN). The app talks to the API at ``--api`` only over GraphQL.

Every session (window or browser tab) gets its own :class:`ResidentApp` and API client.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import flet as ft

from resident_app.api import ResidentApi
from resident_app.shell import FONT_ASSET, FONT_FAMILY, ResidentApp

ASSETS_DIR = Path(__file__).with_name("assets")
DEFAULT_API_URL = "http://127.0.0.1:8000"


def start(page: ft.Page, api_url: str) -> ResidentApp:
    """Set ``page`` up (font, theme, title) and show sign-in; the returned app is the
    session's state (tests keep it)."""
    page.title = "智慧水务"
    page.fonts = {FONT_FAMILY: FONT_ASSET}
    page.theme = ft.Theme(font_family=FONT_FAMILY, color_scheme_seed=ft.Colors.BLUE)
    page.theme_mode = ft.ThemeMode.LIGHT
    page.bgcolor = ft.Colors.BLUE_GREY_50
    page.padding = 0
    app = ResidentApp(page, ResidentApi(api_url))
    page.on_close = lambda _: page.run_task(app.close)
    app.show("sign-in")
    return app


def main_for(api_url: str) -> Any:
    def main(page: ft.Page) -> None:
        start(page, api_url)

    return main


def run(*, api_url: str, web: bool, host: str | None, port: int) -> None:
    """Open the app (a window), or serve it on ``host:port`` (``web``)."""
    # flet resolves the assets directory against the working directory.
    ft.run(main_for(api_url), name="", assets_dir=str(ASSETS_DIR.resolve()),
           view=ft.AppView.WEB_BROWSER if web else ft.AppView.FLET_APP, host=host, port=port, no_cdn=True)


def asgi_app(api_url: str) -> Any:
    """The web app as an ASGI app, to mount beside /graphql (``make demo``)."""
    return ft.run(main_for(api_url), assets_dir=str(ASSETS_DIR.resolve()), no_cdn=True, export_asgi_app=True)


def launch(*, web: bool, host: str, port: int, api_url: str | None) -> None:
    """``shuiwu resident-app``: the API at ``api_url`` (default SHUIWU_RESIDENT_API_URL, else
    the local API), a window, or with ``web`` a browser server on ``host:port``."""
    api_url = api_url or os.environ.get("SHUIWU_RESIDENT_API_URL") or DEFAULT_API_URL
    if web:
        print(f"resident app on http://{host}:{port}/ (API {api_url})", flush=True)
    run(api_url=api_url, web=web, host=host if web else None, port=port if web else 0)

