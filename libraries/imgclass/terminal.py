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
