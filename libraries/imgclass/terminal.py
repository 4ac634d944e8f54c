"""Names in terminal tables: how many columns they take, so that rows line up.

len() counts characters, a terminal columns: "点" takes two, the accent of a decomposed "é" (as
macOS file systems store folder names) none. A table padded by len() shifts every row that holds
such a class name."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence


def display_width(text: str) -> int:
    """Columns `text` takes in a terminal: wide (East Asian) characters 2, combining marks and
    zero-width characters 0, others 1."""
    cols = 0
    for ch in text:
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
            continue
        cols += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return cols


def ljust(text: str, width: int) -> str:
    """`text` padded with spaces to `width` terminal columns (as f"{text:<{width}}" does for ASCII)."""
    return text + " " * max(0, width - display_width(text))


def first_few(items: Sequence[str], most: int = 3) -> str:
    """The first `most` of `items`, comma-separated, and how many more there are: for messages that
    name what they are about without printing a thousand paths."""
    more = len(items) - most
    return ", ".join(items[:most]) + (f" and {more} more" if more > 0 else "")


def column_width(names: Sequence[str], at_least: int = 0) -> int:
    """The columns the widest of `names` takes, and at least `at_least`."""
    return max([at_least, *(display_width(n) for n in names)])


NAME_COLUMNS = 40  # most columns a name takes in a table column: rows then fit an 80-column terminal


def shorten(text: str, width: int, head_share: float = 0.5) -> str:
    """`text` in at most `width` terminal columns: its beginning and end around a "…" when longer,
    the beginning taking `head_share` of the columns left."""
    if display_width(text) <= width:
        return text
    keep = width - 1
    head, tail = "", ""
    for ch in text:
        if display_width(head + ch) > round(keep * head_share):
            break
        head += ch
    for ch in reversed(text):
        if display_width(tail + ch) > keep - display_width(head):
            break
        tail = ch + tail
    return head + "…" + tail


def name_column(names: Sequence[str], at_least: int = 0, at_most: int = NAME_COLUMNS) -> tuple[dict[str, str], int]:
    """How each of `names` is shown in a table column, and the column's width: names longer than
    `at_most` columns shortened (shorten: the beginning and end kept, else more of the beginning or
    of the end where the names differ there), or all whole if they would still read alike."""
    for share in (0.5, 0.8, 0.2):
        shown = {n: shorten(n, at_most, share) for n in names}
        if len(set(shown.values())) == len(set(names)):
            return shown, column_width(list(shown.values()), at_least)
    return {n: n for n in names}, column_width(list(names), at_least)


def score_text(value: float) -> str:
    """A score as the pages and plots show it: 3 decimals, but small SVM decision values (a strongly
    regularised SVM's lie within +-0.001) with 3 significant digits, so they neither read 0.000 nor
    -0.000. Here and not in imgclass.evaluate, which selects matplotlib's Agg backend when imported:
    plots made in a notebook (active learning's candidates) would then no longer show."""
    if value == 0:
        return "0"
    return f"{value:.3f}" if abs(value) >= 0.01 else f"{value:.3g}"


def percent_text(value: float | None) -> str:
    """A share in percent with 2 decimals ("-" when undefined), but never "100.00%" short of 1: one
    mistake among 20,000 test images would round to a perfect score."""
    return "-" if value is None else f"{min(100 * value, 99.99) if value < 1 else 100.0:.2f}%"


def auc_text(value: float | None) -> str:
    """An AUC with 4 decimals ("-" when undefined), but never "1.0000" for a curve that is not perfect
    (the ROC legend says "> 0.999" for it; one image ranked wrong among thousands rounds to 1.0000)."""
    return "-" if value is None else f"{min(value, 0.9999) if value < 1 else 1.0:.4f}"
