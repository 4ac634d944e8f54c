"""Progress bars (tqdm) that suit where the output goes.

A terminal gets tqdm's live bar. A log file or a pipe (`nohup`, `> log 2>&1`, CI) would get ten
redraws a second, each one more carriage-return "line" in the file (a 10-minute refinement leaves
thousands); there a bar redraws every 30 seconds, still showing how far a stage is and its rate.
Jupyter keeps tqdm's own widget. `TQDM_MININTERVAL` in the environment overrides both.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

LOG_INTERVAL_S = 30.0  # seconds between redraws when the output is not a terminal

# Ctrl-C raises KeyboardInterrupt wherever Python happens to be; inside a garbage collector's callback
# (a weakref's, during a training step) Python prints "Exception ignored in ..." and goes on: a
# refinement ran to its end after one. The handler below also remembers the Ctrl-C, and every loop
# that shows a progress bar raises it again at its next step.
_INTERRUPTED = threading.Event()


def _on_sigint(signum: int, frame: Any) -> None:
    _INTERRUPTED.set()
    raise KeyboardInterrupt


def _quiet_unraisable(unraisable: Any) -> None:
    """sys.unraisablehook: a remembered Ctrl-C swallowed in a callback is raised again at the next
    step, so Python's "Exception ignored in ... KeyboardInterrupt" traceback is noise; others pass on."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and _INTERRUPTED.is_set():
        return
    _ORIGINAL_HOOK(unraisable)


_ORIGINAL_HOOK = sys.unraisablehook


def remember_interrupts() -> None:
    """Install the handler (a stage does, at its start): only where Ctrl-C raises KeyboardInterrupt now,
    in the main thread (a process started in the background ignores SIGINT, and keeps ignoring it)."""
    _INTERRUPTED.clear()  # (a long-lived process calling this again starts afresh)
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
        sys.unraisablehook = _quiet_unraisable


class _Stoppable(tqdm):  # type: ignore[misc,valid-type]
    """tqdm that raises KeyboardInterrupt at its next step once a Ctrl-C was remembered: iterated, or
    moved on with update() (featurizing and decoding count their batches that way)."""

    def __iter__(self) -> Iterator[Any]:
        for item in super().__iter__():
            if _INTERRUPTED.is_set():
                raise KeyboardInterrupt
            yield item

    def update(self, n: float | None = 1) -> bool | None:
        if _INTERRUPTED.is_set():
            raise KeyboardInterrupt
        return super().update(n)


def progress_bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm:
    """tqdm(iterable, **kwargs), redrawn at most every LOG_INTERVAL_S when its stream is no terminal;
    iterating it raises KeyboardInterrupt after a Ctrl-C that Python swallowed (remember_interrupts)."""
    if "mininterval" not in kwargs and "TQDM_MININTERVAL" not in os.environ and _writes_to_a_log(kwargs.get("file")):
        kwargs["mininterval"] = LOG_INTERVAL_S
    return _Stoppable(iterable, **kwargs)


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
