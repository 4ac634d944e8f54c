"""Progress bars (tqdm) that suit where the output goes.

A terminal gets tqdm's live bar. A log file or a pipe (`nohup`, `> log 2>&1`, CI) would get ten
redraws a second, each one more carriage-return "line" in the file (a 10-minute refinement leaves
thousands); there a bar redraws every 30 seconds, still showing how far a stage is and its rate.
Jupyter keeps tqdm's own widget. `TQDM_MININTERVAL` in the environment overrides both.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

LOG_INTERVAL_S = 30.0  # seconds between redraws when the output is not a terminal


def progress_bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm:
    """tqdm(iterable, **kwargs), redrawn at most every LOG_INTERVAL_S when its stream is no terminal."""
    if "mininterval" not in kwargs and "TQDM_MININTERVAL" not in os.environ and _writes_to_a_log(kwargs.get("file")):
        kwargs["mininterval"] = LOG_INTERVAL_S
    return tqdm(iterable, **kwargs)


# tqdm.auto chose its Jupyter widget (it does so in a running kernel only; a test or script that
# merely imported ipykernel still gets text bars).
_WIDGET = any(c.__module__ == "tqdm.notebook" for c in tqdm.__mro__)


def _writes_to_a_log(stream: Any) -> bool:
    if _WIDGET:  # a notebook: a widget, not text
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return True
