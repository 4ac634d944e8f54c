"""What every stage script shares: `--set NAME=VALUE`, `--params FILE`, `--help`, clear errors.

Every stage script has the same frame: build its parser with `stage_parser`, call `parse_stage`
to get the validated parameters, call the library and print what it wrote and where, all inside
`run_stage`, which turns
the errors a user can cause (bad parameter, missing input, bad data) into one readable line and a
non-zero exit instead of a traceback.
"""

from __future__ import annotations

import argparse
import errno
import inspect
import os
import shutil
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from imgclass.cpus import OutOfMemoryAdvice
from imgclass.params import ParameterError, Params, load_params, parse_overrides
from imgclass.progress import remember_interrupts


def stage_parser(description: str, reads: str, writes: str) -> argparse.ArgumentParser:
    epilog = textwrap.dedent(
        f"""\
        reads:  {reads}
        writes: {writes}

        Parameters come from PARAMETERS.py; --set NAME=VALUE overrides one for this run (VALUE is a
        Python literal, else a string; a text parameter takes a number as typed), e.g. --set datasetName=myPhotos --set rf_inputResolution=224.
        IMGCLASS_DATA_DIR, when set, overrides DATA_DIR of the parameters files; --set DATA_DIR=... overrides both."""
    )
    parser = argparse.ArgumentParser(
        description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                        help="override a parameter of PARAMETERS.py for this run (repeatable)")
    parser.add_argument("--params", default=None, metavar="FILE",
                        help="a parameters file of your own, read on top of PARAMETERS.py (it needs only what it changes)")
    return parser


_parsed: Params | None = None  # the stage's parameters, for run_stage to record the run with
_started: float | None = None  # when run_stage started the stage
_tracked = False  # track_now recorded the stage already, or do_not_track left it out


def _printable_output() -> None:
    """A class or file name the console's encoding cannot show (Chinese names on a Windows cp1252
    console, output redirected to a file) is printed with escapes instead of raising
    UnicodeEncodeError in the middle of a stage, possibly before it has written its results."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):  # not when a caller has replaced the stream
            stream.reconfigure(errors="backslashreplace")


def parse_stage(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Params]:
    global _parsed
    _printable_output()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `--set svm_CVals=[1, 10]` unquoted: the shell splits it at the space, and argparse's
        # "unrecognized arguments: 10]" would not say why.
        cut = next((o for o in args.overrides if o.count("[") > o.count("]") or o.count("(") > o.count(")")), None)
        if cut is not None:
            whole = " ".join([cut, *extra])
            parser.error(f"--set {cut} is cut short by the shell at a space (then: {' '.join(extra)}): quote the "
                         f"value, --set '{whole}', or write it without spaces")
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        params = load_params(args.params, parse_overrides(args.overrides))
    except ParameterError as e:
        parser.error(str(e))  # exits 2 with usage, like any other bad argument
    _parsed = params
    return args, params


# Errors a user can cause, reported as one line; anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ParameterError, FileNotFoundError, ValueError, PermissionError,
                                               OutOfMemoryAdvice)


# A full disk, a quota or a read-only folder: the user's to fix, not a bug; as OSError (or wrapped by
# a library, torch.save's RuntimeError) they would otherwise end the stage in a long traceback.
_STORAGE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                   errno.EROFS: "read-only file system"}


def _in_the_way(e: OSError) -> str | None:
    """One line for a write stopped by a folder where a file goes (split.json made a folder by hand)
    or a file where a folder goes (results/<name>/svm a file), naming it; None for another cause.
    os.replace(temp, target) names the target second, and the temp name would only mislead."""
    named = e.filename2 if e.filename2 is not None else e.filename
    if named is None:
        return None
    target = Path(os.fsdecode(named))
    rerun = "then rerun this stage (no half-written file was left in place of a good one)"
    if e.errno == errno.EISDIR and target.is_dir():
        return f"{target} is a folder, where this stage expects a file: move or rename it, {rerun}"
    # ENOTDIR, or EEXIST from mkdir: the first part of the path that is there is not a folder. Not
    # "to write": a path read is refused the same way (0_downloadData.py --urls list.tsv/urls.tsv).
    for part in (target, *target.parents):
        if os.path.lexists(part):
            if part.is_dir():
                return None
            return (f"{part} is a file, where this stage needs a folder (in the path {target}): move or rename it, "
                    f"or correct the path if you gave it, {rerun}")
    return None


def storage_error(e: BaseException) -> str | None:
    """One line for a write that failed for lack of space or a read-only file system, or because a
    folder or file was in the way (the error itself or the one it was raised while handling), else None."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if (isinstance(cause, OSError) and cause.errno in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST)
                and (message := _in_the_way(cause)) is not None):
            return message
        if isinstance(cause, OSError) and cause.errno in _STORAGE_ERRNOS:
            what = _STORAGE_ERRNOS[cause.errno]
            where = f" writing {cause.filename}" if cause.filename else ""
            free = ""
            if cause.errno != errno.EROFS and _parsed is not None:
                try:
                    free = f" ({shutil.disk_usage(_parsed.data_dir).free / 1e6:.0f} MB free under {_parsed.data_dir})"
                except OSError:
                    pass
            fix = ("make the folder writable, or point IMGCLASS_DATA_DIR (--set DATA_DIR=...) at a writable one"
                   if cause.errno == errno.EROFS else "free some space")
            return (f"{what}{where}{free}: {fix}, then rerun this stage (no half-written file was left in "
                    f"place of a good one)")
        cause = cause.__cause__ or cause.__context__
    return None


def run_stage(main: Callable[[], int | None], user_errors: tuple[type[BaseException], ...] = (),
              on_interrupt: str = "files already written are complete; rerun the stage to finish") -> None:
    """Run a stage's main(); user errors become `error: ...` on stderr and exit status 1.
    `on_interrupt`: what is said after Ctrl-C, for a stage whose rerun needs more than the same
    command, or which writes no files.

    A stage that succeeds is then recorded in the run history (imgclass.tracking), after its
    outputs are written, so a tracking problem can only ever be a warning."""
    from imgclass.backbones import WeightsUnavailableError

    global _started
    started = _started = time.time()
    remember_interrupts()  # a Ctrl-C Python swallows still stops the stage at its next progress step
    try:
        code = main()
    except (*USER_ERRORS, WeightsUnavailableError, *user_errors) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"interrupted: {on_interrupt}", file=sys.stderr)
        sys.exit(130)
    except (OSError, RuntimeError) as e:
        if (message := storage_error(e)) is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
    if not code and _parsed is not None and not _tracked:
        from imgclass.tracking import track_stage

        try:
            track_stage(_parsed, inspect.getfile(main), started, sys.argv[1:])
        except KeyboardInterrupt:  # the stage's work is done and written: say so, not a traceback
            print("interrupted while recording the stage in the run history: its outputs are written and "
                  "complete; the run history may lack this stage (compareRuns.py)", file=sys.stderr)
            sys.exit(130)
    sys.exit(code or 0)


def do_not_track() -> None:
    """Leave the running script out of the run history: it did no work on the parameters' data set
    (stage 6 serving a bundle that may come from another data set, classifier or machine)."""
    global _tracked
    _tracked = True


def track_now(script: str) -> None:
    """Record the running stage in the run history now, for a stage that hands its process over to
    another program (stage 6 execs the web service), so that run_stage never records it after main()
    (or, where main() does return, as on Windows, which has no exec: not a second time)."""
    global _tracked
    if _tracked:  # recorded already, or left out on purpose (do_not_track)
        return
    _tracked = True
    if _parsed is not None and _started is not None:
        from imgclass.tracking import track_stage

        track_stage(_parsed, script, _started, sys.argv[1:])
