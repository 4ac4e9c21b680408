"""The page reader every screen page's test relies on."""

from pathlib import Path

from tests.doc_examples import examples


def test_each_query_pairs_with_the_output_block_after_it(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# 页\n\n```graphql\n{ a }\n```\n\n说明\n\n```json\n{\"a\": 1}\n```\n\n"
                    "```graphql\n{ b }\n```\n\n```sh\nls\n```\n", encoding="utf-8")

    found = examples(page)

    assert [(e.query.strip(), e.output) for e in found] == [("{ a }", {"a": 1})]
