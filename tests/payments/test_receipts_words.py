"""Amounts in words (人民币大写) as banks write them."""

from __future__ import annotations

import pytest

from backend.payments.receipts.words import amount_in_words


@pytest.mark.parametrize(("fen", "words"), [
    (0, "零元整"),
    (1, "壹分"),
    (5, "伍分"),
    (10, "壹角整"),
    (35, "叁角伍分"),
    (100, "壹元整"),
    (105, "壹元零伍分"),
    (150, "壹元伍角整"),
    (1000, "壹拾元整"),
    (1010, "壹拾元壹角整"),
    (12345, "壹佰贰拾叁元肆角伍分"),
    (100005, "壹仟元零伍分"),
    (123450, "壹仟贰佰叁拾肆元伍角整"),
    (100100, "壹仟零壹元整"),
    (4000500, "肆万零伍元整"),
    (10000007, "壹拾万元零柒分"),
    (10500000, "壹拾万伍仟元整"),
    (100010000, "壹佰万零壹佰元整"),
    (1000050000, "壹仟万零伍佰元整"),
    (10000000000, "壹亿元整"),
    (10000100000, "壹亿零壹仟元整"),
    (12030040050, "壹亿贰仟零叁拾万零肆佰元伍角整"),
    (-12345, "负壹佰贰拾叁元肆角伍分"),
])
def test_amounts_in_words(fen: int, words: str) -> None:
    assert amount_in_words(fen) == words


def test_only_integer_fen_is_written() -> None:
    with pytest.raises(TypeError):
        amount_in_words(1.5)  # type: ignore[arg-type]
