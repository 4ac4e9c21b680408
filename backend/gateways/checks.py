"""A gateway's line of ``shuiwu check``: ``gateway.<kind>``."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from backend.domain import Check, CheckResult, Domain, Gateway, load
from backend.gateways.client import GatewayClient, service_name
from backend.runtime import Runtime

# A check waits this long at most for the endpoint, whatever the gateway's timeout.
REACH_TIMEOUT_S = 3.0


async def endpoint_reachable(client: GatewayClient) -> CheckResult:
    """The gateway's URL is set and something accepts a TCP connection there."""
    settings = client.settings
    variable = f"{settings.model_config.get('env_prefix', '')}URL"
    if not settings.url:
        return CheckResult(False, f"{variable} is not set")
    parts = urlsplit(settings.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return CheckResult(False, f"{variable} is not an http(s) URL: {settings.url}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, port),
                                           min(REACH_TIMEOUT_S, settings.timeout_s))
    except (OSError, TimeoutError) as error:
        return CheckResult(False, f"cannot reach {parts.hostname}:{port} ({type(error).__name__})")
    writer.close()
    await writer.wait_closed()
    return CheckResult(True, f"{parts.scheme}://{parts.hostname}:{port} answers"
                             f" ({settings.pool_size} threads, timeout {settings.timeout_s:g}s)")


def gateway_check(gateway: Gateway) -> Check:
    """The check of ``gateway``: its own (``Gateway.check``) or :func:`endpoint_reachable`."""

    async def run(runtime: Runtime) -> CheckResult:
        if gateway.check is not None:
            result: CheckResult = await load(gateway.check)(runtime)
            return result
        return await endpoint_reachable(runtime.service(service_name(gateway.kind)))

    return Check(f"gateway.{gateway.kind}", run, f"{gateway.title}: configured and reachable")


def gateway_checks(domain: Domain) -> tuple[Check, ...]:
    return tuple(gateway_check(gateway) for gateway in domain.gateways)
