"""The demo's online payments: test merchants with keys of their own (never real money).

``shuiwu demo run`` calls :func:`demo_environment` (the payments declaration's
``demo_environment``) before it starts anything: unless ``SHUIWU_PAYMENTS_CONFIG`` names
a merchants file already, the test merchants of :mod:`backend.payments.online.testkeys`
are written under ``DATA_DIR/payments/`` (keys kept across restarts, the file rewritten
with the API's URL as the public base URL) and the variable points at them, so the API,
the job worker and the local Alipay and WeChat gateways it serves all know the same
merchants and keys.
"""

from __future__ import annotations

import os

from backend.payments.online.testkeys import write_test_merchants
from backend.settings import Settings

CONFIG_VARIABLE = "SHUIWU_PAYMENTS_CONFIG"


def demo_environment(settings: Settings, api_url: str) -> dict[str, str]:
    """``{SHUIWU_PAYMENTS_CONFIG: <the test merchants file>}``, or nothing when it is set."""
    if os.environ.get(CONFIG_VARIABLE):
        return {}
    made = write_test_merchants(settings.data_dir / "payments", public_base_url=api_url)
    return {CONFIG_VARIABLE: str(made.merchants_file)}
