"""Amounts in words as a Chinese receipt writes them (人民币大写): 壹佰贰拾叁元肆角伍分.

The conventions banks and the tax bureau follow (中国人民银行《支付结算办法》 and its
正确填写票据和结算凭证的基本规定):

- digits 零壹贰叁肆伍陆柒捌玖, units 拾佰仟 within a group of four, 万 and 亿 between groups;
- an amount with no 角 and no 分 ends in 整 (壹拾元整); one with 角 but no 分 ends in
  整 too (壹元伍角整); one with 分 has no 整;
- a run of zeros inside the yuan part is read as one 零 (壹仟零伍元), a zero group between
  nonzero groups as one 零 (壹亿零伍万 … is 壹亿零伍万元整, not 壹亿零零伍万);
- 元 followed by a zero 角 and a nonzero 分 takes a 零 (壹元零伍分); an amount below
  one yuan starts at its first nonzero unit (伍分, 叁角伍分), never with 零元;
- 壹拾 is written out (壹拾元整, not 拾元整): a receipt must not be alterable;
- zero is 零元整.
"""

from __future__ import annotations

DIGITS = "零壹贰叁肆伍陆柒捌玖"
_IN_GROUP = ("", "拾", "佰", "仟")
_GROUPS = ("", "万", "亿", "万亿")
# 9999 万亿 yuan: far beyond any water bill, and what four groups can name.
MAX_FEN = 10**18 - 1


def _group(value: int) -> str:
    """One group of four digits (1 … 9999), zeros inside read as one 零, none trailing."""
    words: list[str] = []
    zero = False
    for place in range(3, -1, -1):
        digit = value // 10**place % 10
        if digit == 0:
            zero = bool(words)
            continue
        if zero:
            words.append("零")
            zero = False
        words.append(DIGITS[digit] + _IN_GROUP[place])
    return "".join(words)


def yuan_in_words(yuan: int) -> str:
    """Whole yuan in words without 元 (0 → ""; 10 → 壹拾; 100005 → 壹拾万零伍)."""
    groups: list[int] = []
    while yuan:
        groups.append(yuan % 10_000)
        yuan //= 10_000
    words: list[str] = []
    pending_zero = False
    for index in range(len(groups) - 1, -1, -1):
        group = groups[index]
        if group == 0:
            pending_zero = bool(words)
            continue
        # A zero before this group: a whole group was zero, or this one has fewer than four digits.
        if words and (pending_zero or group < 1000):
            words.append("零")
        pending_zero = False
        words.append(_group(group) + _GROUPS[index])
    return "".join(words)


def amount_in_words(fen: int) -> str:
    """``fen`` as 人民币大写 without the 人民币 prefix: 12345 → 壹佰贰拾叁元肆角伍分,
    1000 → 壹拾元整, 5 → 伍分, 0 → 零元整. Negative amounts are written after 负."""
    if isinstance(fen, bool) or not isinstance(fen, int):
        raise TypeError("an amount in words is of integer fen")
    if abs(fen) > MAX_FEN:
        raise ValueError("amount too large to write in words")
    if fen < 0:
        return "负" + amount_in_words(-fen)
    if fen == 0:
        return "零元整"
    yuan, jiao, cents = fen // 100, fen // 10 % 10, fen % 10
    words = yuan_in_words(yuan)
    if words:
        words += "元"
    if jiao:
        words += DIGITS[jiao] + "角"
    elif cents and words:
        words += "零"
    if cents:
        words += DIGITS[cents] + "分"
    else:
        words += "整"
    return words
