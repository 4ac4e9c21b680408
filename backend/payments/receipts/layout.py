"""Receipt layouts (票据格式): the paper, its margins, whether it is a pre-printed form, the
header and footer, and where each field goes (自定义字段、格式及样式).

A layout is stored as one validated JSON document (``receipt_layouts.spec``);
:func:`parse_layout` is the one way in, so a stored layout always renders.

**Coordinates.** Every offset is in millimetres from the paper's top-left corner: ``x``
to the right, ``y`` *down to the text's baseline*. That is what a ruler on a pre-printed
form measures (the line the figures sit on), and what a PDF's text matrix records, so
the tests find each value where the layout put it.

**Pre-printed forms** (``preprinted``): the form already carries the title, the labels
and the lines, so only the values are printed at their offsets: no labels, header,
footer or rules. On blank paper a field prints ``label：value`` at its offset (its label,
or the catalogue's), the header centred above and the footer below, with rules under
each row when ``ruled``.

**Numbered forms** (``numbered``): each print takes a form number from the printing
cashier's stock (:mod:`backend.payments.receipts.forms`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from backend.payments.receipts.errors import ReceiptLayoutInvalid

# The fields a layout may place, with the label a blank-paper receipt prints by default.
CATALOGUE: dict[str, str] = {
    "serial_no": "流水号",
    "account_no": "户号",
    "household_name": "户名",
    "address": "地址",
    "amount": "金额(小写)",
    "amount_upper": "金额(大写)",
    "channel": "缴费方式",
    "purpose": "收费项目",
    "paid_at": "收费时间",
    "operator": "收款员",
    "balance_after": "余额",
    "reference": "参考号",
    "form_no": "票号",
    # 补打 / 退费 / 已冲正: printed even when a layout has no place for it (top-right corner).
    "mark": "",
}
CUSTOM_PREFIX = "custom:"
# Named paper sizes (width, height) in mm; 241×93 is the common continuous pre-printed receipt.
PAPER_SIZES: dict[str, tuple[float, float]] = {
    "A4": (210.0, 297.0),
    "A5": (148.0, 210.0),
    "A5-landscape": (210.0, 148.0),
    "241x93": (241.0, 93.0),
    "241x140": (241.0, 140.0),
}
PAPER_MM = (50.0, 600.0)  # smallest and largest width or height
FONT_SIZE_PT = (6.0, 36.0)
MARGIN_MM = (0.0, 50.0)
TEXT_LIMIT = 200  # header, footer, a label or a custom field's text
MAX_FIELDS = 60


@dataclass(frozen=True, slots=True)
class FieldPlacement:
    """One field: what (``key``), where (``x``, ``y`` in mm to the baseline), how big
    (``font_size`` in pt), bold or not, its label on blank paper (None: the catalogue's;
    "": none) and, for ``custom:<name>``, its fixed ``text``."""

    key: str
    x: float
    y: float
    font_size: float = 10.0
    label: str | None = None
    bold: bool = False
    text: str = ""

    @property
    def shown_label(self) -> str:
        if self.label is not None:
            return self.label
        return CATALOGUE.get(self.key, "")


@dataclass(frozen=True, slots=True)
class Margins:
    top: float = 8.0
    right: float = 8.0
    bottom: float = 8.0
    left: float = 8.0


@dataclass(frozen=True, slots=True)
class LayoutSpec:
    width: float
    height: float
    paper: str | None = None  # the named size it came from, if any
    margins: Margins = field(default_factory=Margins)
    preprinted: bool = False
    numbered: bool = False
    ruled: bool = True
    header: str = ""
    footer: str = ""
    header_size: float = 16.0
    fields: tuple[FieldPlacement, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The stored document (:func:`parse_layout` reads it back unchanged)."""
        document = asdict(self)
        document["fields"] = [asdict(placement) for placement in self.fields]
        return document

    def has(self, key: str) -> bool:
        return any(placement.key == key for placement in self.fields)


def _refuse(where: str, message: str, message_en: str) -> ReceiptLayoutInvalid:
    return ReceiptLayoutInvalid(f"票据格式无效: {message}", f"Invalid receipt layout: {message_en}", field=where)


def _number(raw: Mapping[str, Any], key: str, where: str, *, default: float | None, low: float, high: float) -> float:
    value = raw.get(key, default)
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse(where, f"{where} 须为数值", f"{where} must be a number")
    if not low <= float(value) <= high:
        raise _refuse(where, f"{where} 须在 {low:g} 至 {high:g} 之间", f"{where} must be between {low:g} and {high:g}")
    return round(float(value), 2)


def _text(raw: Mapping[str, Any], key: str, where: str, *, default: str | None = "") -> str | None:
    value = raw.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _refuse(where, f"{where} 须为文字", f"{where} must be text")
    if len(value) > TEXT_LIMIT:
        raise _refuse(where, f"{where} 不能超过 {TEXT_LIMIT} 个字符", f"{where} is at most {TEXT_LIMIT} characters")
    return value


def _flag(raw: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise _refuse(where, f"{where} 须为 true 或 false", f"{where} must be true or false")
    return value


def parse_layout(raw: Mapping[str, Any]) -> LayoutSpec:
    """A layout from its JSON document, or RECEIPT_LAYOUT_INVALID naming the first part at
    fault: an unknown field key, an offset outside the paper, a size out of range."""
    if not isinstance(raw, Mapping):
        raise _refuse("layout", "格式须为 JSON 对象", "a layout is a JSON object")
    paper = raw.get("paper")
    if paper is not None:
        if paper not in PAPER_SIZES:
            raise _refuse("paper", f"未知纸张 {paper!r} (可选: {', '.join(PAPER_SIZES)})",
                          f"unknown paper {paper!r} (one of {', '.join(PAPER_SIZES)})")
        width, height = PAPER_SIZES[paper]
    else:
        width = _number(raw, "width", "width", default=None, low=PAPER_MM[0], high=PAPER_MM[1])
        height = _number(raw, "height", "height", default=None, low=PAPER_MM[0], high=PAPER_MM[1])
    raw_margins = raw.get("margins") or {}
    if not isinstance(raw_margins, Mapping):
        raise _refuse("margins", "页边距须为对象", "margins are an object")
    margins = Margins(**{side: _number(raw_margins, side, f"margins.{side}", default=8.0, low=MARGIN_MM[0],
                                       high=MARGIN_MM[1]) for side in ("top", "right", "bottom", "left")})
    if margins.left + margins.right >= width or margins.top + margins.bottom >= height:
        raise _refuse("margins", "页边距超出纸张", "the margins leave no paper")
    raw_fields = raw.get("fields", [])
    if not isinstance(raw_fields, list) or len(raw_fields) > MAX_FIELDS:
        raise _refuse("fields", f"字段须为列表, 最多 {MAX_FIELDS} 个", f"fields are a list of at most {MAX_FIELDS}")
    fields = tuple(_placement(item, f"fields[{index}]", width, height) for index, item in enumerate(raw_fields))
    return LayoutSpec(
        width=width, height=height, paper=paper, margins=margins,
        preprinted=_flag(raw, "preprinted", "preprinted", False), numbered=_flag(raw, "numbered", "numbered", False),
        ruled=_flag(raw, "ruled", "ruled", True), header=_text(raw, "header", "header") or "",
        footer=_text(raw, "footer", "footer") or "",
        header_size=_number(raw, "header_size", "header_size", default=16.0, low=FONT_SIZE_PT[0], high=FONT_SIZE_PT[1]),
        fields=fields,
    )


def _placement(raw: Any, where: str, width: float, height: float) -> FieldPlacement:
    if not isinstance(raw, Mapping):
        raise _refuse(where, f"{where} 须为对象", f"{where} is an object")
    key = raw.get("key")
    if not isinstance(key, str) or not (key in CATALOGUE or (key.startswith(CUSTOM_PREFIX) and 0 < len(key) - len(
            CUSTOM_PREFIX) <= 40)):
        raise _refuse(f"{where}.key", f"未知字段 {key!r}", f"unknown field {key!r}")
    text = _text(raw, "text", f"{where}.text") or ""
    if text and not key.startswith(CUSTOM_PREFIX):
        raise _refuse(f"{where}.text", "只有自定义字段 (custom:名称) 有固定文字", "only a custom:<name> field has a fixed text")
    return FieldPlacement(
        key=key,
        # Inside the paper: a baseline at y = 0 would print above the top edge.
        x=_number(raw, "x", f"{where}.x", default=None, low=0.0, high=width),
        y=_number(raw, "y", f"{where}.y", default=None, low=1.0, high=height),
        font_size=_number(raw, "font_size", f"{where}.font_size", default=10.0, low=FONT_SIZE_PT[0],
                          high=FONT_SIZE_PT[1]),
        label=_text(raw, "label", f"{where}.label", default=None),
        bold=_flag(raw, "bold", f"{where}.bold", False),
        text=text,
    )


def _row(y: float, *items: tuple[str, float]) -> list[dict[str, Any]]:
    return [{"key": key, "x": x, "y": y} for key, x in items]


# The layout the migration installs as the default: blank 241×93 continuous paper, labels
# and a ruled table, every catalogue field once. A cashier with a printer and plain paper
# prints on it from day one; a utility with pre-printed forms saves its own.
DEFAULT_LAYOUT_NAME = "标准收据 (241×93 白纸)"
DEFAULT_LAYOUT: dict[str, Any] = {
    "paper": "241x93",
    "margins": {"top": 6, "right": 8, "bottom": 6, "left": 8},
    "preprinted": False,
    "numbered": False,
    "ruled": True,
    "header": "自来水费收费收据",
    "header_size": 16,
    "footer": "本收据为缴费凭证, 请妥善保管。  收款单位 (盖章)",
    "fields": [
        *_row(22, ("serial_no", 10), ("paid_at", 95)),
        {"key": "mark", "x": 195, "y": 15, "font_size": 14, "bold": True},
        *_row(31, ("account_no", 10), ("household_name", 95), ("form_no", 170)),
        *_row(40, ("address", 10)),
        *_row(49, ("channel", 10), ("purpose", 95), ("reference", 170)),
        {"key": "amount_upper", "x": 10, "y": 58, "font_size": 11, "bold": True},
        {"key": "amount", "x": 170, "y": 58, "font_size": 11, "bold": True},
        *_row(67, ("balance_after", 10), ("operator", 95)),
    ],
}
