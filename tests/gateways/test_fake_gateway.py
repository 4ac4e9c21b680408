"""``shuiwu fake-gateway KIND --port N``: the test kind served by the real command in a
process of its own, driven through its control API and called through the gateway."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from backend import cli
from backend.domain import declared_gateways
from backend.domains import installed
from backend.gateways.client import GatewayClient, open_gateway
from backend.gateways.errors import GatewayTimeout
from backend.gateways.http import local_fakes
from tests.fixtures.live import eventually
from tests.sample_domain.echo import send_echo
from tests.sample_domain.settings import EchoSettings

ROOT = Path(__file__).resolve().parents[2]
# The real CLI, with the test domain installed as the suite installs it.
PROGRAM = """
import sys
from backend.domains import install
from tests.sample_domain.domain import DOMAIN
install(DOMAIN)
from backend.cli import app
app(sys.argv[1:], prog_name="shuiwu")
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    """``shuiwu fake-gateway echo --port N`` in a subprocess, once for the module."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", PROGRAM, "fake-gateway", "echo", "--port", str(port)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # printed once it listens
        assert line.startswith(f"fake gateway echo: http://127.0.0.1:{port} "), (line, process.stderr and process.stderr.read())
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
async def control(served: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served) as http:
        (await http.post("/_control/reset")).raise_for_status()
        yield http


@pytest.fixture
def client(served: str) -> Iterator[GatewayClient]:
    # The exchanges are test_client.py's subject: this module needs no database.
    declaration = dataclasses.replace(declared_gateways(installed())["echo"], keeps_exchanges=False)
    client = open_gateway(declaration, settings=EchoSettings(url=served, timeout_s=0.5))
    yield client
    client.close()


async def test_the_command_serves_the_echo_kind_and_records_what_it_received(
    client: GatewayClient, control: httpx.AsyncClient,
) -> None:
    answer = await send_echo(client, "你好", nonce="n-process")
    seen = (await control.get("/_control/requests")).json()["requests"]

    assert answer == {"ok": True, "echo": "你好", "nonce": "n-process"}
    assert [(request["method"], request["path"], request["status"]) for request in seen] == [("POST", "/echo", 200)]
    assert '"nonce": "n-process"' in seen[0]["body"]


async def test_a_delay_scripted_through_the_control_api_is_a_timeout_within_the_timeout(
    client: GatewayClient, control: httpx.AsyncClient,
) -> None:
    scripted = await control.post("/_control/next", json={"action": "delay", "seconds": 1})
    began = time.monotonic()
    with pytest.raises(GatewayTimeout):
        await send_echo(client, "slow")

    assert scripted.status_code == 200
    assert time.monotonic() - began < 0.5 + 0.4


async def test_the_control_api_describes_the_kind_and_refuses_what_it_cannot_follow(control: httpx.AsyncClient) -> None:
    described = (await control.get("/_control/")).json()
    unknown = await control.post("/_control/next", json={"action": "explode"})
    too_long = await control.post("/_control/next", json={"action": "delay", "seconds": 301})
    not_json = await control.post("/_control/next", content=b"[")

    assert described["kind"] == "echo"
    assert described["routes"] == ["POST /echo"]
    assert set(described["actions"]) == {"delay", "error", "refuse", "bad_signature"}
    assert (unknown.status_code, too_long.status_code, not_json.status_code) == (400, 400, 400)
    assert "unknown action 'explode'" in unknown.json()["error"]


async def test_a_script_applies_to_the_requests_it_names_then_the_fake_answers_as_usual(
    client: GatewayClient, control: httpx.AsyncClient,
) -> None:
    await control.post("/_control/next", json={"action": "error", "status": 503, "times": 2, "path": "/elsewhere"})
    await control.post("/_control/next", json={"action": "refuse", "times": 1})
    statuses = []
    for _ in range(2):
        try:
            await send_echo(client, "x")
            statuses.append("ok")
        except Exception as error:
            statuses.append(type(error).__name__)
    reset = await control.post("/_control/reset")
    after = (await control.get("/_control/requests")).json()["requests"]

    assert statuses == ["GatewayRejected", "ok"]
    assert reset.status_code == 200
    assert after == []


def test_an_undeclared_kind_is_refused_with_the_declared_ones() -> None:
    result = CliRunner().invoke(cli.app, ["fake-gateway", "nope"])

    assert result.exit_code == 2
    assert "no fake gateway 'nope'; the installed domains declare: " in result.output
    assert "echo" in result.output.split("declare: ", 1)[1]


async def test_the_demo_serves_the_fakes_of_the_gateways_pointed_at_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    echo = declared_gateways(installed())["echo"]
    port = free_port()
    monkeypatch.setenv("SHUIWU_ECHO_URL", f"http://127.0.0.1:{port}")
    [(kind, server)] = local_fakes([echo])
    serving = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started)
        async with httpx.AsyncClient() as http:
            described = (await http.get(f"http://127.0.0.1:{port}/_control/")).json()
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 5)
    monkeypatch.setenv("SHUIWU_ECHO_URL", "https://echo.example.com")

    assert (kind, described["kind"]) == ("echo", "echo")
    assert local_fakes([echo]) == []  # a remote elsewhere is left alone


def test_the_demos_fakes_listen_on_ports_of_their_own_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # JPush's fake once defaulted to Alipay's port: `demo run` served Alipay there, and the
    # pushes of the demo went to it (404).
    gateways = declared_gateways(installed()).values()
    for gateway in gateways:
        monkeypatch.delenv(f"{gateway.settings.model_config.get('env_prefix', '')}URL", raising=False)
    ports = {kind: server.config.port for kind, server in local_fakes(gateways)}

    assert {"alipay", "wechat", "jpush"} <= ports.keys()
    assert len(set(ports.values())) == len(ports), ports
