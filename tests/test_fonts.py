"""Plot text in scripts the default font (DejaVu Sans) lacks: class names such as "点".

No CJK font is installed on the test machines, so the tests build a one-glyph font with fontTools
(a matplotlib dependency) and install it into matplotlib's font list for the test only."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from matplotlib import font_manager
from PIL import Image

from imgclass import fonts
from imgclass.evaluate import plot_confusion
from imgclass.fileio import save_figure

DIAN = "点"  # U+70B9: in no font matplotlib ships


def _one_glyph_font(path: Path, char: str, family: str) -> Path:
    """A TrueType font whose only glyph, for `char`, is a filled square (nothing like the empty box
    matplotlib draws for a character it has no glyph for)."""
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    pen = TTGlyphPen(None)
    pen.moveTo((100, 0))
    pen.lineTo((100, 800))
    pen.lineTo((900, 800))
    pen.lineTo((900, 0))
    pen.closePath()
    name = f"uni{ord(char):04X}"
    fb = FontBuilder(1000, isTTF=True)
    fb.setupGlyphOrder([".notdef", name])
    fb.setupCharacterMap({ord(char): name})
    fb.setupGlyf({".notdef": TTGlyphPen(None).glyph(), name: pen.glyph()})
    fb.setupHorizontalMetrics({".notdef": (1000, 0), name: (1000, 100)})
    fb.setupHorizontalHeader(ascent=800, descent=-200)
    fb.setupNameTable({"familyName": family, "styleName": "Regular"})
    fb.setupOS2(sTypoAscender=800, sTypoDescender=-200, usWinAscent=800, usWinDescent=200)
    fb.setupPost()
    fb.save(str(path))
    return path


@pytest.fixture
def fresh_fonts(monkeypatch: pytest.MonkeyPatch):
    """matplotlib's font list and fonts' caches as they were, after the test as before it."""
    monkeypatch.setattr(font_manager.fontManager, "ttflist", list(font_manager.fontManager.ttflist))
    monkeypatch.setattr(fonts, "_told", set())
    fonts._font_for.cache_clear()
    yield font_manager.fontManager
    fonts._font_for.cache_clear()


def _filled_share(png: Path) -> float:
    """The share of dark pixels in the box around them: 1 for a solid square."""
    dark = np.asarray(Image.open(png).convert("L")) < 128
    rows, cols = np.flatnonzero(dark.any(axis=1)), np.flatnonzero(dark.any(axis=0))
    return float(dark.sum() / ((rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)))


def _text_figure(text: str):
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(2, 2))
    fig.text(0.5, 0.5, text, fontsize=60, ha="center", va="center")
    return fig


def test_a_character_no_font_has_is_said_once_in_words_not_warned_per_glyph(
        tmp_path: Path, fresh_fonts, capsys: pytest.CaptureFixture) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_confusion(np.array([[3, 1], [0, 4]]), ["dotted", DIAN], tmp_path / "confusion.png")
        plot_confusion(np.array([[3, 1], [0, 4]]), ["dotted", DIAN], tmp_path / "again.png")
    assert not [w for w in caught if "missing from font" in str(w.message)]
    err = capsys.readouterr().err
    assert err.count("note: no installed font has 点 (U+70B9)") == 1 and "fonts-noto-cjk" in err
    assert (tmp_path / "confusion.png").is_file()
    # A later plot with characters not named yet names those only, the first few of many, without the advice.
    many = "".join(chr(0x4E00 + i) for i in range(20))  # 一 and the 19 ideographs after it
    fonts.fit_fonts(_text_figure(f"{DIAN} {many}"))  # not a plot's labels, which shorten long names
    err = capsys.readouterr().err.strip()
    assert err.startswith("note: no installed font has 一 (U+4E00) 丁 (U+4E01)") and "点" not in err, err
    assert err.endswith("(U+4E0B) and 8 more either") and "fonts-noto-cjk" not in err, err


def test_an_installed_font_that_has_the_character_draws_it(tmp_path: Path, fresh_fonts,
                                                           capsys: pytest.CaptureFixture) -> None:
    boxed = _filled_share(save_figure(_text_figure(DIAN), tmp_path / "box.png"))
    fresh_fonts.addfont(str(_one_glyph_font(tmp_path / "test_sans.ttf", DIAN, "Imgclass Test Sans")))
    fonts._font_for.cache_clear()
    fig = _text_figure(f"a {DIAN}")
    assert fonts.fit_fonts(fig) == []
    assert "Imgclass Test Sans" in fig.texts[0].get_fontfamily()
    filled = _filled_share(save_figure(_text_figure(DIAN), tmp_path / "filled.png"))
    # The test font's glyph is a solid square; DejaVu's stand-in for a CJK character it lacks is a
    # frame with "CJK IDEOGRAPHS" written in it.
    assert filled > 0.95 and boxed < 0.8
    plain = _text_figure("dotted")
    fonts.fit_fonts(plain)
    assert "Imgclass Test Sans" not in plain.texts[0].get_fontfamily()  # ASCII text keeps its font alone


def test_missing_characters_skips_spaces_and_combining_marks() -> None:
    dejavu = font_manager.findfont("DejaVu Sans")
    assert fonts.missing_characters(f"Rayé e\u0301 {DIAN}{DIAN}", dejavu) == [DIAN]
