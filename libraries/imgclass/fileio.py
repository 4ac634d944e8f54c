"""Atomic file writes: every output goes to a temp file in the same folder, then is renamed.

A crash or a bad input half-way through a stage therefore never leaves a truncated file where a
good one used to be: readers see the old file or the new one, nothing in between. A file damaged
some other way (edited, copied half-way) is a DamagedFileError naming it when read back.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux): setting it to
    read it back would briefly give files made by other threads meanwhile the wrong mode."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class FolderNotWritableError(PermissionError):
    """atomic_path's PermissionError: str() names the file and its folder, while errno and strerror stay
    the system's ("Permission denied"), for callers that put them in a message of their own (the
    read-only data set note, dedupImages.py). The file may lie outside DATA_DIR (scoreImages.py --out),
    so DATA_DIR is offered only for a stage's own files."""

    def __str__(self) -> str:
        path = Path(self.filename)
        return (f"cannot write {path}: the folder {path.parent} is not writable by this user; make it writable, or "
                "write elsewhere (a stage's own files: point IMGCLASS_DATA_DIR or --set DATA_DIR=... at a writable folder)")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it over `path`, on error delete it.

    The file gets the mode `open()` would give it (0666 less the umask), not mkstemp's private 0600:
    a web server, a container running as another user or a colleague must be able to read results."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except PermissionError as e:
        # The error would name the hidden temp file (".split.json.x1y2.tmp"), not the folder to fix.
        raise FolderNotWritableError(e.errno, e.strerror, path) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Like open(path, mode) for writing, but the file appears only when the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


PROBE_GRACE_SECONDS = 0.5  # how long hold_lock tries again before it takes a held lock for another holder
_held_locks: dict[Path, IO[str]] = {}  # open for the life of the process: closing a file drops its lock


def hold_lock(path: str | Path) -> str | None:
    """Take an exclusive advisory lock on `path` for the rest of this process and write the process
    id into it; the system releases it when the process ends, however (kill -9 too). Returns None
    once held, or the holder's process id ("" if unknown) while another process holds it. Where the
    system has no advisory locks (Windows), returns None without locking."""
    try:
        import fcntl
    except ImportError:
        return None
    path = Path(path).resolve()
    if path in _held_locks:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+", encoding="utf-8")
    # lock_holder's probe (stage 3 asking whether a refinement runs) holds the lock shared for an
    # instant: met then, it is no holder, and refusing would name the last holder's (dead) process.
    deadline = time.monotonic() + PROBE_GRACE_SECONDS
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                f.seek(0)
                holder = f.read().strip()
                f.close()
                return holder
            time.sleep(0.01)
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    _held_locks[path] = f
    return None


def lock_holder(path: str | Path) -> str | None:
    """The process id ("" if unknown) of another process that holds the lock of hold_lock(`path`) now,
    None when none does (or the system has no advisory locks). Takes nothing: a probe."""
    try:
        import fcntl
    except ImportError:
        return None
    path = Path(path).resolve()
    if path in _held_locks or not path.is_file():
        return None
    try:
        f = open(path, encoding="utf-8")
    except OSError:  # deleted meanwhile, or unreadable: no holder to name
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return f.read().strip()
    return None  # closing the file dropped the probe's own lock


def file_stamp(path: str | Path) -> tuple[int, int, int]:
    """(size, mtime in ns, inode) of a file: what the caches (features, stage 1's hashes) take as
    "unchanged since it was read". The inode tells apart two files of one size and time that swapped
    paths (unpacked from one archive, then moved between class folders), which size and time alone
    took for unchanged, keeping each one's old features or hash. Raises OSError for a missing file."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino


def write_json(path: str | Path, obj: Any) -> Path:
    """`obj` as indented JSON, written atomically; class and file names as they read ("Rayé", not
    "Ray\\u00e9"), unless one cannot be UTF-8 (a name decoded with surrogate escapes): then escaped."""
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        data = (json.dumps(obj, indent=2) + "\n").encode("ascii")
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def undecodable_line(e: UnicodeDecodeError) -> int:
    """The line (from 1) of the byte `e` could not decode, for "file, line N: not UTF-8 text". Counted
    in e.object, the bytes the codec saw (utf-8-sig leaves the byte-order mark out, so the file's own
    bytes cut at e.start miss up to 3 of them), at the line ends an editor shows: \r\n, \n or a lone \r
    (Excel for Mac's tab-delimited text)."""
    return len(re.findall(rb"\r\n|\r|\n", e.object[:e.start])) + 1


def tsv_field(value: object) -> str:
    """`value` as str() on one line, each run of white space one space: a tab or newline inside a
    field would break the TSV's one record per line."""
    return " ".join(str(value).split())


def write_tsv(path: str | Path, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    """A header line of `columns`, then one tab-separated line per row (each field as str()), written
    atomically as UTF-8."""
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(columns) + "\n")
        for row in rows:
            f.write("\t".join(map(str, row)) + "\n")
    return Path(path)


class DamagedFileError(ValueError):
    """A file a stage reads is not what the pipeline writes (truncated, edited, or another file)."""


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DamagedFileError(f"{path}: not valid JSON ({e}); rerun the stage that writes it") from None


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def save_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    # np.savez appends ".npz" to names without it, so hand it an open file instead of a path.
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)
    return Path(path)


def load_npz(path: str | Path, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of a .npz file; given `keys`, only those of them it has (the others are not read)."""
    # allow_pickle=False: these files may come from elsewhere, and must never run code.
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files if keys is None or k in keys}
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DamagedFileError(f"{path}: not a .npz file written by this pipeline ({e}); "
                               f"rerun the stage that writes it") from None


def require_file(path: str | Path, made_by: str) -> Path:
    """A clear error when a stage's input is missing, naming the stage that makes it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run {made_by} first")
    return path


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write `fig` as a PNG atomically (a half-written plot never replaces a good one) and close it.
    pyplot is imported here and not above: importing it selects no backend, so a notebook that
    calls this keeps its inline display."""
    import matplotlib.pyplot as plt

    from imgclass.fonts import MISSING_GLYPH_WARNING, fit_fonts

    fit_fonts(fig)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=MISSING_GLYPH_WARNING, category=UserWarning)
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def same_name_groups(names: Iterable[str], folder: str | Path) -> list[list[str]]:
    """Groups of two or more of `names` (in their first order) that the file system holding `folder`
    takes for one name: "Dotted" and "dotted" on macOS and Windows, whose file systems keep the case
    they are given but ignore it when looking a name up. Found by asking the file system itself (an
    empty file per name in a temporary folder inside `folder`), not by guessing its folding rules
    (which differ: APFS also ignores composed/decomposed accents, NTFS does not). Empty on Linux's
    usual case-sensitive file systems. `names` must be valid file names there."""
    unique = list(dict.fromkeys(names))
    if len(unique) < 2:
        return []
    groups: dict[int, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix=".imgclass-names-", dir=folder) as probe:
        for i, name in enumerate(unique):
            path = os.path.join(probe, name)
            # Each file holds the index of the name that made it: a name that finds a file there
            # already reads which earlier name it is one with (inode numbers would say so too, but
            # FAT drives and some network shares give every file the same one).
            try:
                with open(path, "x", encoding="ascii") as f:
                    f.write(str(i))
                first = i
            except FileExistsError:
                with open(path, encoding="ascii") as f:
                    first = int(f.read())
            groups.setdefault(first, []).append(name)
    return [g for g in groups.values() if len(g) > 1]


# Characters Windows refuses in file names (':' would also make "C:x" a drive path there), so a
# folder named with one on Linux would not copy to Windows, and a stage run there would fail at mkdir.
WINDOWS_FORBIDDEN_CHARS = ("/", "\\", ":", "\0", "*", "?", '"', "<", ">", "|")
# As Python 3.13's ntpath.isreserved has them: the console's CONIN$/CONOUT$ and the superscript digits
# (COM¹) name devices too.
WINDOWS_RESERVED_NAMES = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$",
                          *(f"{dev}{n}" for dev in ("COM", "LPT") for n in "123456789\u00b9\u00b2\u00b3")}


def portable_name_problem(name: str) -> str | None:
    """None when `name` can be a folder name on Linux, macOS and Windows alike, else what is wrong
    ("contains ':'"), to be prefixed with what the name is (a label, the data set's name)."""
    for ch in WINDOWS_FORBIDDEN_CHARS:
        if ch in name:
            return f"contains {ch!r}"
    if any(ord(c) < 32 for c in name):
        return "contains a control character"
    if name != name.rstrip(". "):
        return "ends with a dot or a space, which Windows drops from folder names"
    if name.split(".")[0].rstrip(" ").upper() in WINDOWS_RESERVED_NAMES:  # "CON .jpg" is CON as well
        return "is a name Windows reserves for a device"
    return None
