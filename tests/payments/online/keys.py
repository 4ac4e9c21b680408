"""The test merchants' keys, generated once per run: :func:`seeded` copies them into a
directory before ``write_test_merchants`` writes its merchants file there (it keeps keys
it finds), so each module's merchants file costs a copy, not four RSA key generations
(~0.4 s). Every merchants file of the run thus names the same keys; each fake gateway
still reads its own file."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from backend.payments.online.testkeys import MERCHANTS_FILE, write_test_merchants

_source: list[Path] = []


def seeded(directory: Path) -> Path:
    """``directory`` (created if missing) holding the run's test merchant keys."""
    if not _source:
        source = Path(tempfile.mkdtemp(prefix="shuiwu-test-keys-"))
        atexit.register(shutil.rmtree, source, True)
        write_test_merchants(source, public_base_url="http://127.0.0.1:9")
        _source.append(source)
    directory.mkdir(parents=True, exist_ok=True)
    for kept in _source[0].iterdir():
        target = directory / kept.name
        if kept.name != MERCHANTS_FILE and not target.exists():
            shutil.copy2(kept, target)
    return directory
