"""Every ```graphql block of README.md and docs/*.md runs on the documented demo.

The pages name one demo (:data:`DEMO_COMMAND`); this module loads exactly that demo
once, then runs each page's blocks in page order, as the page's login, on a fresh copy of
it (so a page's mutations are seen by its later blocks, and by no other page). Each
block is one operation without variables; its ``#`` comments are its output: every
``"key":value`` pair they quote must occur somewhere in the response (abbreviated
outputs with ``…`` still get every shown figure checked), and a payload's ``errors``
must be empty unless the comments quote the ``"code"`` it returns.

docs/screens/*.md pages have their own worlds and tests (tests/doc_examples.py).
Set ``SHUIWU_DOC_EXAMPLES_OUT`` to a directory to get each block's response written
there as ``<page>-<n>.json`` when updating a page.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from graphql import OperationDefinitionNode, parse

from backend.db import create_engine, session_factory
from backend.demo import ADMIN, CASHIER, MANAGER, REPAIR, load_demo
from tests.conftest import clone_database, drop_database
from tests.doc_examples import ROOT, blocks
from tests.graphql.client import graphql_client

# The demo every page's examples were taken on, as the pages print it.
DEMO_COMMAND = "shuiwu demo load --households 300 --as-of 2026-11-26T10:30:00+08:00"
_OPTIONS = dict(zip(DEMO_COMMAND.split()[3::2], DEMO_COMMAND.split()[4::2], strict=True))
HOUSEHOLDS, AS_OF = int(_OPTIONS["--households"]), datetime.fromisoformat(_OPTIONS["--as-of"])
SEED = 7  # demo load's default

PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
LOGINS = {login.username: login.password for login in (ADMIN, MANAGER, CASHIER, REPAIR)}
# A page that runs its examples as another demo login says so in these words.
_RUN_AS = re.compile(r"examples (?:on this page )?run as `(\w+)`")
_COMMENT = re.compile(r"#(.*)$", re.MULTILINE)
_PAIR = re.compile(r'"(\w+)"\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?![\d.])|true|false|null)')


def quoted_pairs(block: str) -> list[tuple[str, Any]]:
    """The ``"key":value`` pairs the block's ``#`` comments quote, in order."""
    comments = " ".join(_COMMENT.findall(block))
    return [(key, json.loads(value)) for key, value in _PAIR.findall(comments)]


def flatten(value: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, scalar) pair at any depth of a JSON value."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if isinstance(inner, dict | list):
                yield from flatten(inner)
            else:
                yield key, inner
    elif isinstance(value, list):
        for inner in value:
            yield from flatten(inner)


def payload_errors(data: Any) -> list[dict[str, Any]]:
    """The ``errors`` of every mutation payload (and of any object) in the response."""
    found: list[dict[str, Any]] = []
    if isinstance(data, dict):
        for key, inner in data.items():
            if key == "errors" and isinstance(inner, list):
                found.extend(inner)
            else:
                found.extend(payload_errors(inner))
    elif isinstance(data, list):
        for inner in data:
            found.extend(payload_errors(inner))
    return found


def _write_response(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")


def page_login(page: str) -> str:
    match = _RUN_AS.search((ROOT / page).read_text(encoding="utf-8"))
    return match.group(1) if match else ADMIN.username


def test_quoted_pairs_read_strings_numbers_and_flags_across_comment_lines() -> None:
    block = ('{ a }  # 说明, "not": a pair\n# {"kind":"silent", "value": "1.50",\n'
             '#  "count": 24, "z":-1.25, "ok":false} …\n')

    assert quoted_pairs(block) == [("kind", "silent"), ("value", "1.50"), ("count", 24), ("z", -1.25), ("ok", False)]


@pytest.fixture(scope="module")
def demo_database(server_url: str, template_url: str) -> Iterator[str]:
    url = clone_database(server_url, template_url, "docs_demo")
    yield url
    drop_database(server_url, url)


@pytest.fixture(scope="module")
async def demo_url(demo_database: str) -> str:
    """A database holding exactly the documented demo, closed after the load so that it
    can be the template of each page's database."""
    engine = create_engine(demo_database, pool_size=1, max_overflow=0)
    try:
        async with session_factory(engine)() as session, session.begin():
            await load_demo(session, households=HOUSEHOLDS, seed=SEED, readings=True, now=AS_OF, tz="Asia/Shanghai")
    finally:
        await engine.dispose()
    return demo_database


@pytest.fixture
def page_url(server_url: str, demo_url: str) -> Iterator[str]:
    """A fresh copy of the demo for one page."""
    url = clone_database(server_url, demo_url, "docs_page")
    yield url
    drop_database(server_url, url)


def test_pages_name_the_demo_their_examples_ran_on() -> None:
    for page in PAGES:
        if blocks(page, "graphql"):
            assert DEMO_COMMAND in (ROOT / page).read_text(encoding="utf-8"), page


@pytest.mark.parametrize("page", [page for page in PAGES if blocks(page, "graphql")])
async def test_every_graphql_block_of_the_page_answers_what_it_shows(
    page: str, page_url: str
) -> None:
    login = page_login(page)
    out = os.environ.get("SHUIWU_DOC_EXAMPLES_OUT")
    problems: list[str] = []  # every block's, so one run shows all that a page needs
    async with graphql_client(page_url) as client:
        client.token = await client.login(login, LOGINS[login])
        for number, block in enumerate(blocks(page, "graphql"), 1):
            where = f"{page}, graphql block {number}"
            operations = [d for d in parse(block).definitions if isinstance(d, OperationDefinitionNode)]
            if len(operations) != 1 or operations[0].variable_definitions:
                problems.append(f"{where}: one operation per block, variables inlined:\n{block}")
                continue

            result = await client.execute(block)
            if out:
                _write_response(Path(out) / f"{page.replace('/', '_')}-{number}.json", result)
            if "errors" in result:
                problems.append(f"{where}: {result['errors']}\n{block}")
                continue
            shown = quoted_pairs(block)
            returned = {error.get("code") for error in payload_errors(result["data"])}
            unshown = returned - {value for key, value in shown if key == "code"}
            pairs = list(flatten(result["data"]))
            missing = [(key, value) for key, value in shown if (key, value) not in pairs]
            if unshown or missing:
                problems.append(f"{where}: errors {sorted(map(str, unshown))} not shown, "
                                f"shown but not in the response {missing}\n{block}\n"
                                f"{json.dumps(result['data'], ensure_ascii=False)[:2000]}")
    assert not problems, "\n\n".join(problems)
