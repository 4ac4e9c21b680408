"""The resident app in-process, without Flutter (NOTES.md, "Flet 1.0.5 in the browser"):
a real flet ``Session`` on a connection that msgpack-encodes every message as the
socket transport does (a control that cannot be sent fails here too), the page sized
like a phone, and helpers that find controls by key, type into fields and dispatch the
events a browser would send."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import flet as ft
import msgpack
from flet.controls.base_control import BaseControl
from flet.messaging.connection import Connection
from flet.messaging.protocol import (
    Message,
    MessageAction,
    RegisterClientResponseBody,
    configure_encode_object_for_msgpack,
)
from flet.messaging.session import Session
from flet.pubsub.pubsub_hub import PubSubHub

from resident_app.main import start
from resident_app.shell import ResidentApp

PHONE_SIZE = (390, 844)


class EncodingConnection(Connection):
    """Encodes what the session sends exactly like the socket server, and counts it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.executor = ThreadPoolExecutor(max_workers=1)
        self.pubsubhub = PubSubHub(loop=loop, executor=self.executor)
        self.sent = 0

    def send_message(self, message: Message) -> None:
        msgpack.packb([message.action, message.body], default=configure_encode_object_for_msgpack(BaseControl))
        self.sent += 1


class AppSession:
    """One resident's app session; keeps the session alive (the page holds a weakref)."""

    def __init__(self, api_url: str, *, width: int = PHONE_SIZE[0], height: int = PHONE_SIZE[1]) -> None:
        self.connection = EncodingConnection(asyncio.get_running_loop())
        self.session = Session(self.connection)
        self.session.apply_page_patch({"width": width, "height": height, "platform": "android", "route": "/"})
        self.connection.send_message(Message(MessageAction.REGISTER_CLIENT, RegisterClientResponseBody(
            session_id=self.session.id, page_patch=self.session.get_page_patch(), error="")))
        self.session.start_updates_scheduler()
        self.app: ResidentApp = start(self.session.page, api_url)

    @property
    def page(self) -> ft.Page:
        return self.session.page

    def controls(self) -> Iterator[Any]:
        """Every control on the page now, depth first (the navigation bar included)."""
        roots: list[Any] = [*self.page.controls]
        if self.page.navigation_bar is not None:
            roots.append(self.page.navigation_bar)
        stack = roots[::-1]
        while stack:
            control = stack.pop()
            yield control
            children: list[Any] = []
            for name in ("content", "controls", "destinations", "segments"):
                value = getattr(control, name, None)
                if isinstance(value, BaseControl):
                    children.append(value)
                elif isinstance(value, list):
                    children.extend(item for item in value if isinstance(item, BaseControl))
            stack.extend(children[::-1])

    def find(self, key: str) -> Any | None:
        return next((control for control in self.controls() if control.key == key), None)

    def get(self, key: str) -> Any:
        control = self.find(key)
        assert control is not None, f"no control {key!r} on {self.app.route}: {sorted(self.control_keys())}"
        return control

    def control_keys(self) -> set[str]:
        return {str(control.key) for control in self.controls() if control.key is not None}

    def text(self, key: str) -> str:
        control = self.get(key)
        return str(control.value)

    def texts(self) -> list[str]:
        return [str(control.value) for control in self.controls() if isinstance(control, ft.Text) and control.value]

    async def wait_for(self, key: str, *, timeout_s: float = 5.0) -> Any:
        """The control ``key`` once it is on the page (a load finished)."""
        deadline = time.monotonic() + timeout_s
        while (control := self.find(key)) is None:
            shown = f"{sorted(self.control_keys())} {self.texts()}"
            assert time.monotonic() < deadline, f"no {key!r} within {timeout_s}s on {self.app.route}: {shown}"
            await asyncio.sleep(0.02)
        await self.assert_sent()
        return control

    async def assert_sent(self) -> None:
        """Everything changed on the page was sent to the client: a screen that changes a
        control but never updates it shows the change here and nowhere in a browser. (A
        control records its changed properties in ``_dirty`` until a patch carries them.)"""
        await asyncio.sleep(0.02)  # the session's update scheduler sends what was updated
        unsent = [(type(control).__name__, control.key, sorted(control._dirty))
                  for control in [self.page, *self.controls()] if control._dirty]
        assert not unsent, f"changed but never sent to the client: {unsent}"

    async def dispatch(self, control: Any, event: str, data: Any) -> None:
        await self.session.dispatch_event(control._i, event, data)
        await self.assert_sent()

    async def fill(self, key: str, value: str) -> None:
        """Type ``value`` as the client does: the property patch, then the change event."""
        field = self.get(key)
        self.session.apply_patch(field._i, {"value": value})
        await self.dispatch(field, "change", value)

    async def click(self, key: str) -> None:
        control = self.get(key)
        assert not control.disabled, f"{key!r} is disabled"
        await self.dispatch(control, "click", None)

    async def select(self, key: str, value: str) -> None:
        """Choose ``value`` on a segmented button."""
        control = self.get(key)
        self.session.apply_patch(control._i, {"selected": [value]})
        await self.dispatch(control, "change", [value])

    async def navigate(self, index: int) -> None:
        bar = self.get("navigation")
        self.session.apply_patch(bar._i, {"selected_index": index})
        await self.dispatch(bar, "change", None)

    async def close(self) -> None:
        await self.app.close()
        self.session.close()
        await asyncio.sleep(0)
        self.connection.executor.shutdown(wait=False)
