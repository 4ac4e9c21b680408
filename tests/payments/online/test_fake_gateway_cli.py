"""``shuiwu fake-gateway alipay|wechat --port 0`` through the real command: each starts
(both at once, in subprocesses), prints its URL once it listens, knows the test merchants
of ``SHUIWU_PAYMENTS_CONFIG`` and answers its control API."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.payments.online.conftest import MerchantsFile

ROOT = Path(__file__).resolve().parents[3]


def test_the_local_alipay_and_wechat_start_print_their_url_and_answer_control(test_merchants: MerchantsFile) -> None:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "SHUIWU_PAYMENTS_CONFIG": str(test_merchants.path)}
    for name in [name for name in environment if name.startswith(("SHUIWU_ALIPAY_", "SHUIWU_WECHAT_"))]:
        del environment[name]
    processes = {kind: subprocess.Popen([sys.executable, "-m", "backend.cli", "fake-gateway", kind, "--port", "0"],
                                        cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
                 for kind in ("alipay", "wechat")}
    try:
        for kind, process in processes.items():
            assert process.stdout is not None
            line = process.stdout.readline()  # printed once it listens
            found = re.fullmatch(rf"fake gateway {kind}: (http://127\.0\.0\.1:(\d+)) \(control: \1/_control/\)\n", line)
            assert found is not None and int(found.group(2)) > 0, (line, process.stderr and process.stderr.read())
            url = found.group(1)

            described = httpx.get(f"{url}/_control/", timeout=10)
            orders = httpx.get(f"{url}/_control/orders", timeout=10)

            assert described.status_code == 200 and described.json(), described.text
            assert orders.status_code == 200 and orders.json() == {"orders": []}
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGINT)
        for process in processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
