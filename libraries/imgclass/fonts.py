"""Fonts for plot text that matplotlib's default font cannot draw: class names in Chinese, Japanese,
Korean, Arabic ... (DejaVu Sans, the default, has none of these).

matplotlib draws a character its font lacks as a placeholder box (its "Last Resort" font's, which
names only the script) and warns once per glyph per plot, so a confusion matrix of classes "点"
and "线" shows two identical boxes. `fit_fonts` gives each text of a
figure, before it is saved, the installed fonts that have its characters as fallbacks (matplotlib
then takes each character from the first font of the list that has it), and where no installed
font has them says so once, naming the characters and what to install.
"""

from __future__ import annotations

import sys
import unicodedata
import warnings
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# matplotlib's warning for each character a font lacks, repeated per plot; fit_fonts says it once.
MISSING_GLYPH_WARNING = r"Glyph \d+ .* missing from font"
_told: set[str] = set()  # characters already reported as drawable by no installed font


@lru_cache(maxsize=None)
def _charmap(path: str) -> frozenset[int]:
    """The code points a font file has glyphs for (empty for a file FreeType cannot read)."""
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return frozenset()


def _drawable(ch: str) -> bool:
    """Whether a character is one a font must have a glyph for (not a space, control or combining mark)."""
    return not ch.isspace() and unicodedata.category(ch)[0] not in ("C", "M")


@lru_cache(maxsize=None)
def _font_for(ch: str) -> str | None:
    """The family name of an installed font that has `ch`: sans-serif ones first, as the default is.
    Not matplotlib's own "Last Resort" font: it has every character, each as a box naming its script."""
    from matplotlib import font_manager

    entries = sorted((e for e in font_manager.fontManager.ttflist if not e.name.lower().startswith("last resort")),
                     key=lambda e: ("sans" not in e.name.lower(), e.name, e.fname))
    return next((e.name for e in entries if ord(ch) in _charmap(e.fname)), None)


def lay_out(fig: Figure) -> None:
    """Place every artist of `fig` (so that sizes can be measured) without drawing it, and without
    matplotlib's per-glyph warnings: fit_fonts, when the figure is saved, says it once in words."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=MISSING_GLYPH_WARNING, category=UserWarning)
        fig.draw_without_rendering()


def missing_characters(text: str, font_path: str) -> list[str]:
    """The characters of `text` that the font file at `font_path` has no glyph for, each once."""
    have = _charmap(font_path)
    return sorted({ch for ch in text if _drawable(ch) and ord(ch) not in have})


def fit_fonts(fig: Figure) -> list[str]:
    """Give every text of `fig` fallback fonts for the characters its own font lacks; returns (and
    reports on stderr, once per process) the characters that no installed font has."""
    from matplotlib import font_manager
    from matplotlib.text import Text

    lay_out(fig)  # tick labels get their text only when the figure is drawn
    nowhere: set[str] = set()
    for text in fig.findobj(Text):
        s = text.get_text()
        if not s or s.isascii():
            continue
        prop = text.get_fontproperties()
        missing = missing_characters(s, font_manager.findfont(prop, fallback_to_default=True))
        if not missing:
            continue
        extra = []
        for ch in missing:
            name = _font_for(ch)
            if name is None:
                nowhere.add(ch)
            elif name not in extra:
                extra.append(name)
        if extra:
            text.set_fontfamily([*prop.get_family(), *extra])
    new = sorted(nowhere - _told)
    if new:
        # Class names in a script no font has can lack hundreds of characters: name the first few.
        shown = " ".join(f"{c} (U+{ord(c):04X})" for c in new[:12]) + (f" and {len(new) - 12} more" if len(new) > 12 else "")
        if _told:  # a later plot: the advice is above already
            print(f"note: no installed font has {shown} either", file=sys.stderr, flush=True)
        else:
            print(f"note: no installed font has {shown}, so plots show each as a placeholder box; install a font "
                  "that has them (e.g. Noto Sans CJK: apt install fonts-noto-cjk; then delete matplotlib's font "
                  "cache, ~/.cache/matplotlib)", file=sys.stderr, flush=True)
        _told.update(new)
    return sorted(nowhere)
