"""The embedded PostgreSQL under a command that is stopped (backend.db.start_embedded)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# A command's life in miniature: start the embedded server, say so, then work until stopped.
_COMMAND = """
import sys, time
from pathlib import Path
from backend.db import start_embedded
start_embedded(Path(sys.argv[1]))
print("started", flush=True)
time.sleep(60)
"""


def test_a_command_stopped_by_sigterm_exits_143_and_stops_its_embedded_server(tmp_path: Path) -> None:
    pgdata = tmp_path / "pgdata"
    command = subprocess.Popen([sys.executable, "-c", _COMMAND, str(pgdata)], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert command.stdout is not None and command.stdout.readline() == "started\n"
        assert (pgdata / "postmaster.pid").exists()

        command.send_signal(signal.SIGTERM)
        status = command.wait(timeout=30)
    finally:
        command.kill()

    # Interrupted work never reads as done (a `demo load` a script stopped), and the
    # server the command started went down with it.
    assert status == 128 + signal.SIGTERM, command.stderr.read() if command.stderr else ""
    deadline = time.monotonic() + 10
    while (pgdata / "postmaster.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not (pgdata / "postmaster.pid").exists()
