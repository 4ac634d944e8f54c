"""Download a URL list (`label<TAB>url` a line) into `out_dir/<label>/`, safely and resumably.

URL lists from the web are full of dead links, HTML error pages served with status 200, huge files
and slow hosts. This module never lets one of them abort the run: each URL either ends up as a
verified image on disk or as a line in `download_failures.tsv` with the reason.

File names are derived from the URL (first 16 hex digits of its SHA-1) plus the extension of the
format actually decoded, so a re-run maps every URL to the same file: URLs already on disk are
skipped, URLs that failed before are tried again, and a URL whose label changed in the list since
has its file moved to the new class folder. Files are written atomically, so an interrupted run
never leaves a truncated image behind.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import io
import logging
import os
import re
import socket
import sys
import threading
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from imgclass import __version__
from imgclass.annotations import FIXES_FILE, read_fixes, write_fixes
from imgclass.data import (DEDICATED_TEST_FILE, DUPLICATES_FOLDER, DUPLICATES_LIST, INVISIBLE_CHARS, NOT_CLASS_PREFIXES,
                           TEST_FOLDER_NAMES, TRAIN_FOLDER_NAMES, list_class_dirs, walk_image_files)
from imgclass.fileio import atomic_open, portable_name_problem, same_name_groups, tsv_field, undecodable_line, write_bytes
from imgclass.images import ImageDecodeError, load_rgb, openers
from imgclass.progress import progress_bar
from imgclass.terminal import first_few

log = logging.getLogger(__name__)

FAILURES_FILE = "download_failures.tsv"
# url<TAB>label of every image stage 0 has put on disk, kept across runs: what it fetched and under
# which label, so that a rerun can tell a label changed in the list (move the file) from a file
# moved or deleted by hand (leave it), and name files whose URL has left the list.
MANIFEST_FILE = "download_manifest.tsv"
_LINE_BREAKERS = re.compile(r"[\t\r\n]")
MIN_SIDE = 8  # downloads with a shorter side are placeholders (1x1 tracking pixels), refused
USER_AGENT = f"imgclass-downloader/{__version__} (+image classification dataset builder)"
ALLOWED_SCHEMES = ("http", "https")

# PIL format name -> file extension. Only formats the rest of the pipeline picks up by extension
# (imgclass.images.IMAGE_EXTENSIONS) are kept; MPO is what PIL calls multi-picture phone JPEGs.
FORMAT_EXTENSIONS = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "BMP": ".bmp",
    "WEBP": ".webp",
    "TIFF": ".tif",
    "AVIF": ".avif",
    "HEIF": ".heic",
}
_KNOWN_EXTENSIONS = tuple(sorted(set(FORMAT_EXTENSIONS.values())))

_CHUNK = 64 * 1024
_MAX_RETRY_AFTER_S = 2.0  # honour a server's Retry-After only when it is short; never stall the run
_BACKOFF_S = 0.2  # sleep _BACKOFF_S * attempt between attempts
# `timeout` bounds each socket operation, so a host that drips a byte every few seconds would never
# time out. Each attempt therefore also gets a total budget of _TOTAL_TIMEOUT_FACTOR * timeout.
_TOTAL_TIMEOUT_FACTOR = 10.0
# Characters left as they are when a URL is percent-encoded: the URL syntax's delimiters, and '%' so
# that escapes already there (%20, %2F) are not encoded a second time.
_URL_SAFE = "%/:?#[]@!$&'()*+,;=~"


_MAX_LABEL_BYTES = 200
# Files the stages keep beside the class folders: a class folder of the same name cannot be made.
_PROJECT_FILES = {n.lower() for n in (MANIFEST_FILE, FAILURES_FILE, FIXES_FILE, DEDICATED_TEST_FILE, DUPLICATES_LIST)}


class UrlListError(ValueError):
    """The URL list is malformed; the message names the file and the line number."""


@dataclass
class DownloadReport:
    """What one `download_images` run did.

    `per_class`: images of each label of the list that are on disk after the run (downloaded now or
    in an earlier run); labels whose every URL failed appear with 0, so empty classes stand out.
    `failures`: (url, reason) in the order of the list.
    `moved`: (url, old label, new label) of files found under another label than the list's now,
    moved to the new label's folder (counted in `skipped_existing`): the list's label changed
    since the run that fetched them.
    `left_by_hand`: (url, folder's label, list's label) of files found in another class folder
    although the list's label has not changed: moved by hand to fix a label, so left there.
    `unsure`: the same, for files the manifest has no label for (fetched before it existed) or in a
    folder linked into the data set: a list changed since and a file moved by hand look alike, so
    the file is left where it is.
    `deleted`: URLs fetched before whose file is gone (deleted by hand): not fetched again.
    `unlisted`: files of URLs fetched before that are no longer in the list (e.g. dropped as
    ambiguous by scrapeImages.py): left in place.
    """

    ok: int = 0  # newly downloaded in this run
    skipped_existing: int = 0  # already on disk from an earlier run, not fetched again
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    per_class: dict[str, int] = field(default_factory=dict)
    moved: list[tuple[str, str, str]] = field(default_factory=list)
    set_aside: int = 0  # not fetched: dedupImages.py moved their images to _duplicates/
    left_by_hand: list[tuple[str, str, str]] = field(default_factory=list)
    unsure: list[tuple[str, str, str]] = field(default_factory=list)  # (url, folder's label, list's label)
    failed_labels: set[str] = field(default_factory=set)  # labels with a URL that failed in this run
    deleted: list[str] = field(default_factory=list)
    unlisted: list[Path] = field(default_factory=list)
    fixes_moved: int = 0  # label fixes (annotations_fixes.tsv) that followed a moved file to its new path
    repeated: int = 0  # lines of the list that repeat a URL under the same label: fetched once
    gone: int = 0  # not requested: HTTP 404 or 410 in an earlier run (counted in `failed`; retry_gone asks again)

    def summary(self) -> str:
        aside = f", {self.set_aside} set aside as duplicates (in {DUPLICATES_FOLDER}/, not fetched again)" \
            if self.set_aside else ""
        return f"{self.ok} downloaded, {self.skipped_existing} already present, {self.failed} failed{aside}"

    def notes(self, out: Path) -> list[str]:
        """What a person should know after the run into `out`, beyond the summary: images moved,
        left where a person put them, deleted or no longer listed, and where the failures are."""
        lines = []
        if self.repeated:
            lines.append(f"note: {self.repeated} line(s) of the list repeat a URL under the same label: "
                         f"each URL is fetched once and counted once")
        for (old, new), n in Counter((old, new) for _, old, new in self.moved).items():
            lines.append(f"moved {n} image{'' if n == 1 else 's'} from {old}/ to {new}/ (label changed in the URL list)")
        if self.fixes_moved:
            lines.append(f"note: {self.fixes_moved} of the moved images had a fix in {FIXES_FILE} (EXCLUDE, or a "
                         f"label): {'it follows its image' if self.fixes_moved == 1 else 'they follow their images'} "
                         f"to the new path, since a fix made by hand outranks the list")
        for (folder, listed), n in Counter((f, lab) for _, f, lab in self.left_by_hand + self.unsure).items():
            lines.append(
                f"note: {n} image{'' if n == 1 else 's'} listed as {listed!r} {'is' if n == 1 else 'are'} in {folder}/: "
                f"left there (moved by hand to fix a label, or the list changed since they were fetched"
                f"{' before stage 0 kept ' + MANIFEST_FILE if self.unsure else ''}); "
                f"if the list is right, move {'it' if n == 1 else 'them'} to {listed}/ yourself")
        if self.deleted:
            lines.append(f"note: {len(self.deleted)} image(s) deleted since an earlier run fetched them: not fetched "
                         f"again (delete their lines in {out / MANIFEST_FILE} to fetch them again): {first_few(self.deleted)}")
        if self.unlisted:
            lines.append(f"note: {len(self.unlisted)} image(s) fetched for URLs no longer in the list (e.g. dropped as "
                         f"ambiguous by scrapeImages.py) are still in the data set, e.g. "
                         f"{self.unlisted[0].relative_to(out).as_posix()}: left in place; if this list is a further "
                         f"batch, nothing needs doing; if it was trimmed on purpose, delete them, or mark them "
                         f"EXCLUDE in {FIXES_FILE}")
        if self.failed:
            lines.append(f"failed: {failure_kinds(self.failures)}; each URL, its label and the reason: {out / FAILURES_FILE}")
        if self.gone:
            lines.append(f"note: {self.gone} of them not requested again: the server said they are gone (HTTP 404 "
                         f"or 410) in an earlier run (--retry-failed asks again)")
        return lines


class _Failure(Exception):
    """One attempt failed; `retryable` says whether another attempt can help."""

    def __init__(self, reason: str, retryable: bool = False, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


class _Cancelled(Exception):
    """The run is being interrupted; abandon this download quietly."""


# ---------------------------------------------------------------------------------------------
# URL list


def check_label(label: str) -> str | None:
    """None when `label` is usable as a class folder name inside out_dir, else the reason."""
    if not label:
        return "empty label"
    if label == ".":
        return "label '.' is the output folder itself"
    if ".." in label:
        return f"label {label!r} contains '..'"
    if label.startswith(NOT_CLASS_PREFIXES):
        # Stage 1 skips such folders (hidden ones, dedupImages.py's _duplicates/): the class would vanish.
        return (f"label {label!r} starts with {label[0]!r}, and folders starting with '_' or '.' "
                "are not classes (stage 1 skips them)")
    # ':' matters on Linux too: "C:x" would escape out_dir on Windows.
    if problem := portable_name_problem(label):
        return f"label {label!r} {problem}"
    if hidden := sorted({c for c in label if c in INVISIBLE_CHARS}):
        names = ", ".join(f"U+{ord(c):04X} {unicodedata.name(c, 'format character')}" for c in hidden)
        return f"label {label!r} contains an invisible character ({names})"
    if len(label.encode("utf-8")) > _MAX_LABEL_BYTES:  # file systems hold 255 bytes a name
        return (f"label {label[:20]!r}... is {len(label.encode('utf-8'))} bytes long as UTF-8 (a folder name holds "
                f"at most 255; labels here at most {_MAX_LABEL_BYTES})")
    if label.lower() in _PROJECT_FILES:
        return f"label {label!r} is the name of a file the pipeline keeps in the data set folder"
    if label.lower() in (*TRAIN_FOLDER_NAMES, *TEST_FOLDER_NAMES):  # a "train" folder beside a "test" one
        return f"label {label!r} names a side of a split made in advance (stage 1 would read the data set so)"
    return None


def tsv_lines(path: str | Path, error: Callable[[str], Exception] = UrlListError) -> Iterator[tuple[int, str]]:
    """(line number, line) of a tab-separated text file, blank and '#' lines skipped.

    The one reader of URL lists (download's and the scraper's), so both take the same files: a
    byte-order mark (Excel, Notepad) is dropped, and text that is not UTF-8 raises `error` with the
    file and line rather than a UnicodeDecodeError.
    """
    path = Path(path)
    if path.is_dir():
        raise error(f"{path} is a folder: give the URL list, a text file of label<TAB>url lines")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: no such file (the URL list, a text file of label<TAB>url lines)") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"{path}, line {undecodable_line(e)}: not valid UTF-8 text; save the list as UTF-8") from e
    # \r\n, \n or a lone \r (old Mac files) end a line, as in the user's editor; not splitlines(),
    # which also breaks at form feeds and other separators and would put line numbers off.
    for line_no, line in enumerate(re.split(r"\r\n|\r|\n", text), start=1):
        line = line.removeprefix("\ufeff")  # the mark of a second list joined on with cat
        if line.strip() and not line.lstrip().startswith("#"):
            yield line_no, line


def read_url_list(path: str | Path) -> list[tuple[str, str]]:
    """Read a `label<TAB>url` list into [(label, url), ...] in file order.

    Blank lines and lines starting with '#' are skipped, a first line `label<TAB>url` (any case)
    is taken as a header, columns after the URL (source, licence, ...) are ignored. Duplicates are
    kept here; `download_images` fetches each URL once. Raises UrlListError naming the file and
    line for a line that is not `label<TAB>url` or whose label is not a safe folder name.
    """
    entries: list[tuple[str, str]] = []
    problems: list[str] = []  # every bad line, not one per rerun
    for n, (line_no, line) in enumerate(tsv_lines(path)):
        # Excel writes a field holding a quote or a comma in double quotes.
        fields = [_unquote(f.strip()) for f in line.split("\t")]
        if len(fields) < 2:
            problems.append(f"line {line_no}: expected 'label<TAB>url', found no tab in {line.strip()!r}")
            continue
        label, url = fields[0], fields[1]
        if (label.lower(), url.lower()) == ("label", "url") or (n == 0 and _column_name(label) and _column_name(url)):
            # A header: "label<TAB>url" (again where two lists were joined with cat), or a first line
            # of two column names ("category<TAB>image_url"), which would otherwise become a class.
            continue
        if not url:
            problems.append(f"line {line_no}: expected 'label<TAB>url', the URL is empty")
            continue
        problem = check_label(label)
        if problem:
            swapped = "://" in label and "://" not in url
            problems.append(f"line {line_no}: {problem}; it must be a plain folder name"
                            + ("; the columns look swapped: the label comes first, then the URL" if swapped else ""))
            continue
        entries.append((label, url))
    if problems:
        shown = problems[:_SHOW_PROBLEMS] + ([f"... and {len(problems) - _SHOW_PROBLEMS} more"]
                                            if len(problems) > _SHOW_PROBLEMS else [])
        raise UrlListError(f"{path}, " + shown[0] if len(problems) == 1 else
                           f"{path}: {len(problems)} lines to mend:\n  " + "\n  ".join(shown))
    if not entries:  # an empty file, or a header alone: most likely the wrong file
        raise UrlListError(f"{path}: no 'label<TAB>url' line in it")
    return entries


_SHOW_PROBLEMS = 10  # bad lines of a URL list named in one error


def _column_name(field: str) -> bool:
    """Whether a field reads as a column's name: a word or two, no address (no '/', '.' or ':')."""
    return bool(re.fullmatch(r"[A-Za-z][A-Za-z0-9_ -]{0,30}", field))


def _unquote(field: str) -> str:
    """A field without the double quotes Excel puts around some ('""' inside is one quote)."""
    if len(field) >= 2 and field[0] == field[-1] == '"':
        return field[1:-1].replace('""', '"').strip()
    return field


def _normalise_entries(url_list: str | Path | Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    if isinstance(url_list, (str, Path)):
        return read_url_list(url_list)
    entries = []
    for i, item in enumerate(url_list):
        try:
            label, url = item
        except (TypeError, ValueError):
            raise UrlListError(f"<url list>, entry {i}: expected a (label, url) pair, got {item!r}")
        label, url = str(label).strip(), str(url).strip()
        problem = check_label(label)
        if problem:
            raise UrlListError(f"<url list>, entry {i}: {problem}; it must be a plain folder name")
        entries.append((label, url))
    return entries


def _dedupe(entries: Iterable[tuple[str, str]]) -> tuple[list[tuple[str, str]], dict[str, list[str]], int]:
    """Each URL once (its first line), {url: its labels} of URLs listed under two or more labels (the
    image can only be one class, and which one the list does not say (line order decided it once);
    such a URL is a failure of the run, as scrapeImages.py drops it), and how many lines repeat a
    URL under a label it has already. A URL is the same URL however it is spelt where HTTP sends the
    same request ("a b.jpg" and "a%20b.jpg"); the first spelling stands for it."""
    labels: dict[str, list[str]] = {}
    first: dict[str, str] = {}
    unique = []
    lines: Counter[str] = Counter()
    for label, url in entries:
        key = _request_url(url)
        lines[key] += 1
        if key not in labels:
            labels[key], first[key] = [label], url
            unique.append((label, url))
        elif label not in labels[key]:
            labels[key].append(label)
    ambiguous = {first[key]: found for key, found in labels.items() if len(found) > 1}
    # (An ambiguous URL is not fetched at all: its repeats are part of that failure.)
    repeated = sum(n - 1 for key, n in lines.items() if first[key] not in ambiguous)
    return unique, ambiguous, repeated


def _request_url(url: str) -> str:
    """The URL as the request sends it (_encode_url), or as written where it cannot be encoded (its
    download then fails with the reason)."""
    try:
        return _encode_url(url)
    except ValueError:  # UnicodeError: a host name IDNA refuses
        return url


# ---------------------------------------------------------------------------------------------
# Fetching


def file_stem(url: str) -> str:
    """Stable file name (without extension) for `url`: a re-run maps the URL to the same file."""
    return hashlib.sha1(url.encode("utf-8")).hexdigest()[:16]


def _spellings(urls: Iterable[str]) -> dict[str, list[str]]:
    """{the request a URL sends (_request_url): the URLs of `urls` that send it}."""
    found: dict[str, list[str]] = {}
    for url in urls:
        found.setdefault(_request_url(url), []).append(url)
    return found


def _spelt(url: str, spellings: dict[str, list[str]]) -> list[str]:
    """`url` and each other spelling of it that an earlier run fetched (`spellings`, of the manifest):
    a list that spelt the URL otherwise in the next run ("a b.jpg", then "a%20b.jpg") is the same photo."""
    return list(dict.fromkeys((url, *spellings.get(_request_url(url), ()))))


def _stems(url: str, spellings: dict[str, list[str]]) -> list[str]:
    """The names a file of `url` may have: the file_stem of each of its spellings (_spelt); with its
    own alone, the same photo was stored a second time beside the first."""
    return list(dict.fromkeys(file_stem(u) for u in _spelt(url, spellings)))


def _existing_files(out_dir: Path) -> dict[str, list[Path]]:
    """{file stem: files named so} in every class folder of out_dir, at any depth (a user may sort a
    class into sub-folders), listed once per run. Every folder, not only the URL's label's: a URL
    relabelled in the list since the last run has its file under the old label, and fetching it
    again would put the same image in two classes."""
    found: dict[str, list[Path]] = {}
    for label in list_class_dirs(out_dir):
        for p in walk_image_files(out_dir / label):
            if p.suffix in _KNOWN_EXTENSIONS:
                found.setdefault(p.stem, []).append(p)
    return found


def _label_of(path: Path, out_dir: Path) -> str:
    """The class folder a file found by _existing_files is in."""
    return path.relative_to(out_dir).parts[0]


def _carry_fixes(out_dir: Path, renamed: list[tuple[str, str, str]], fixes: dict[str, str] | None) -> int:
    """Rewrite annotations_fixes.tsv so that the fix of each file stage 0 moved, (old path, new path,
    new label), follows it: an EXCLUDE made in the notebook would otherwise point at a path that is
    gone and the image come back into training. A relabel to the class the file now lies in is
    dropped (the folder says it now). `fixes`: the file as read before the first move (None: nothing
    moved). Returns how many fixes followed their files."""
    fixes = dict(fixes or {})
    carried = 0
    for old, new, label in renamed:
        if old in fixes:
            fix = fixes.pop(old)
            if fix != label:
                fixes[new] = fix
            carried += 1
    if carried:
        write_fixes(out_dir, fixes)
    return carried


def read_manifest(out_dir: str | Path) -> dict[str, str]:
    """{url: label} of the images earlier runs put on disk ({} before the first run)."""
    path = Path(out_dir) / MANIFEST_FILE
    if not path.is_file():
        return {}
    out = {}
    # tsv_lines, not splitlines(): a URL may hold a form feed or U+2028, which _write_manifest keeps and
    # splitlines() broke the line at (a bogus entry was written back at each rerun); text a user's
    # editor saved in another encoding names the file, not only the codec's complaint.
    for _, line in tsv_lines(path, error=ValueError):
        fields = line.split("\t")  # url, label (and, since a later version, the file)
        if len(fields) >= 2:
            out[fields[0]] = fields[1]
    return out


def _write_manifest(out_dir: Path, manifest: dict[str, str]) -> None:
    """url, label and the file (its path in the data set, "" when gone) of each image fetched: the
    file names are hashes of the URLs, so this is how a file leads back to its source (and licence)."""
    on_disk = {stem: files[0].relative_to(out_dir).as_posix() for stem, files in _existing_files(out_dir).items()}
    spellings = _spellings(manifest)

    def file_of(url: str) -> str:
        return next((on_disk[stem] for stem in _stems(url, spellings) if stem in on_disk), "")

    with atomic_open(out_dir / MANIFEST_FILE, "w", encoding="utf-8", newline="\n") as f:
        f.write("# url<TAB>label<TAB>file of each image 0_downloadData.py fetched (delete a line to fetch its URL again)\n")
        for url, label in manifest.items():  # the URL as listed (a key): only what would break the line goes
            f.write(_LINE_BREAKERS.sub(" ", url) + "\t" + label + "\t" + file_of(url) + "\n")


def _encode_url(url: str) -> str:
    """`url` as HTTP can send it: a URL copied from a browser's address bar may hold spaces and
    non-ASCII letters, which http.client refuses. The path, query and fragment are percent-encoded
    (as UTF-8; existing %XX escapes kept) and a non-ASCII host name IDNA-encoded (UnicodeError, a
    ValueError, when it cannot be). Other URLs are returned unchanged."""
    if url.isascii() and not any(c <= " " or c == "\x7f" for c in url):
        return url
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if not netloc.isascii():
        userinfo, at, hostport = netloc.rpartition("@")
        host, colon, port = hostport.partition(":")  # an IPv6 literal [..] is ASCII, never here
        netloc = f"{userinfo}{at}{host.encode('idna').decode('ascii')}{colon}{port}"
    path, query, fragment = (urllib.parse.quote(part, safe=_URL_SAFE) for part in parts[2:])
    return urllib.parse.urlunsplit((parts.scheme, netloc, path, query, fragment))


class _HttpOnlyRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s): the stock handler would also follow one to ftp://."""

    def http_error_302(self, req, fp, code, msg, headers):  # type: ignore[no-untyped-def, override]
        # Checked here, before the stock handler, which refuses file:, data: ... itself, as an
        # HTTPError of the redirect's code that read as "a redirect loop", and follows ftp:.
        location = headers.get("location") or headers.get("uri")
        if location:
            scheme = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, location)).scheme.lower()
            if scheme not in ALLOWED_SCHEMES:
                fp.close()
                raise _Failure(f"redirect to unsupported scheme ({scheme})")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


class _Watchdog:
    """Ends one attempt at its deadline, or at once when the run is stopped, by shutting down its
    sockets from another thread. The socket timeout bounds each recv only: a host that sends its
    status line and headers a byte every few seconds held a worker (and the first Ctrl-C) forever,
    since the body's deadline check starts only once the headers are in."""

    _POLL_S = 0.1

    def __init__(self, deadline: float, stop: threading.Event):
        self.deadline = deadline
        self.stop = stop
        self.fired: str | None = None  # "timeout" or "stopped" once it has shut the sockets down
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="imgclass-download-watchdog", daemon=True)
        self._thread.start()

    def add(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(sock)
            fired = self.fired
        if fired:  # fired while this connection was being made
            self._shut(sock)
        return sock

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes a recv blocked in the worker thread
        except OSError:
            pass  # already closed

    def _run(self) -> None:
        while not self._done.wait(self._POLL_S):
            if self.stop.is_set() or time.monotonic() > self.deadline:
                with self._lock:
                    self.fired = "stopped" if self.stop.is_set() else "timeout"
                    sockets = list(self._sockets)
                for sock in sockets:
                    self._shut(sock)
                return

    def finish(self) -> None:
        self._done.set()
        self._thread.join()


def _connect_watched(watchdog: _Watchdog, address: tuple[str, int], timeout: Any = socket._GLOBAL_DEFAULT_TIMEOUT,
                     source_address: tuple[str, int] | None = None) -> socket.socket:
    """socket.create_connection, each socket handed to `watchdog` before it connects: a host that
    never answers the connection (a firewall dropping it, a full backlog) held a stopped run for the
    rest of dl_timeoutSec, since create_connection shows its socket only once connected. (A name
    lookup cannot be cut short: there is no socket yet.)"""
    host, port = address
    error: OSError | None = None
    for family, kind, proto, _, where in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        if watchdog.fired:
            break
        sock = socket.socket(family, kind, proto)
        try:
            watchdog.add(sock)
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            if watchdog.fired:  # fired before the connect began: its shutdown woke nothing
                raise OSError("stopped")
            sock.connect(where)
            return sock
        except OSError as e:
            error = e
            sock.close()
    raise error or OSError(f"no address found for {host}")


def _watched(connection_class: type[http.client.HTTPConnection], watchdog: _Watchdog) -> Callable[..., Any]:
    """A connection factory for urllib's do_open whose sockets `watchdog` can shut down."""

    def make(*args: Any, **kwargs: Any) -> http.client.HTTPConnection:
        conn = connection_class(*args, **kwargs)
        conn._create_connection = lambda *a, **k: _connect_watched(watchdog, *a, **k)  # type: ignore[attr-defined]
        connect = conn.connect

        def connect_watched() -> None:
            connect()
            watchdog.add(conn.sock)  # HTTPS: the TLS socket that replaced the plain one
        conn.connect = connect_watched  # type: ignore[method-assign]
        return conn
    return make


class _WatchedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, watchdog: _Watchdog):
        super().__init__()
        self.watchdog = watchdog

    def http_open(self, req):  # type: ignore[no-untyped-def, override]
        return self.do_open(_watched(http.client.HTTPConnection, self.watchdog), req)


def _build_opener(watchdog: _Watchdog) -> urllib.request.OpenerDirector:
    # Built by hand rather than with build_opener(), which also installs ftp:, file: and data:
    # handlers: a URL list must never make us read local files or talk FTP.
    opener = urllib.request.OpenerDirector()
    handlers: list[Any] = [
        urllib.request.ProxyHandler(),  # honours http(s)_proxy / no_proxy like any other client
        urllib.request.UnknownHandler(),
        _WatchedHTTPHandler(watchdog),
        urllib.request.HTTPDefaultErrorHandler(),
        _HttpOnlyRedirectHandler(),
        urllib.request.HTTPErrorProcessor(),
    ]
    if hasattr(urllib.request, "HTTPSHandler"):  # absent when Python was built without ssl
        class _WatchedHTTPSHandler(urllib.request.HTTPSHandler):
            def https_open(self, req):  # type: ignore[no-untyped-def, override]
                return self.do_open(_watched(http.client.HTTPSConnection, watchdog), req,
                                    context=self._context)  # type: ignore[attr-defined]
        handlers.append(_WatchedHTTPSHandler())
    for handler in handlers:
        opener.add_handler(handler)
    return opener


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date; a past date is 0), or None
    when there is none or it cannot be read. Also the search providers' (imgclass.scrape)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _fetch_once(url: str, timeout: float, max_bytes: int, stop: threading.Event) -> bytes:
    """One attempt: the body, or _Failure (_Cancelled when the run is stopped). The attempt, from
    connecting to the last byte, ends after _TOTAL_TIMEOUT_FACTOR * timeout."""
    watchdog = _Watchdog(time.monotonic() + timeout * _TOTAL_TIMEOUT_FACTOR, stop)
    try:
        # One opener an attempt (OpenerDirector is not documented as thread-safe; it is cheap).
        body = _read_response(_build_opener(watchdog), url, timeout, max_bytes, stop, watchdog.deadline)
    except BaseException:
        if watchdog.fired is None:
            raise
        # The sockets were shut down: whatever the read made of that is not the reason.
    else:
        if watchdog.fired is None:
            return body
        # Fired as the read ended: a body without Content-Length cut short would read as complete.
    finally:
        watchdog.finish()
    if watchdog.fired == "stopped":
        raise _Cancelled()
    raise _Failure("timeout (download too slow)", retryable=True)


def _decoded(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """The body without its Content-Encoding: none was asked for, yet some servers gzip every reply
    (an image then read as "not an image"). At most max_bytes unpacked (a small bomb unpacks to GBs)."""
    encoding = (encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise _Failure(f"sent with Content-Encoding {encoding}, which this download cannot undo")
    # wbits 47: gzip or zlib headers, told apart by the data; raw deflate (a common server mistake) is 15 less.
    for wbits in (47, -15):
        unpack = zlib.decompressobj(wbits)
        try:
            # zlib takes a C ssize_t here: dl_maxBytes = 10**19 ("no limit") raised OverflowError, which
            # ended the whole run in a traceback.
            out = unpack.decompress(body, min(max_bytes + 1, sys.maxsize))
        except zlib.error:
            continue
        if len(out) > max_bytes:
            raise _Failure(f"too large (over the limit of {max_bytes} bytes unpacked: dl_maxBytes)")
        if not unpack.eof:
            # A stream cut short raises nothing: its first part came back as the image, named a
            # damaged image and not retried, while the compressed data was what was damaged.
            raise _Failure(f"damaged {encoding} data (Content-Encoding): the compressed data ends early",
                           retryable=True)
        return out
    raise _Failure(f"damaged {encoding} data (Content-Encoding)", retryable=True)


def _read_response(
    opener: urllib.request.OpenerDirector,
    url: str,
    timeout: float,
    max_bytes: int,
    stop: threading.Event,
    deadline: float,
) -> bytes:
    """The body of one request, or _Failure. The body is read in chunks so an oversized file is
    abandoned after max_bytes instead of being held in memory."""
    headers = {"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.8"}
    try:
        request = urllib.request.Request(_encode_url(url), headers=headers)
        with opener.open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            chunked = "chunked" in (response.headers.get("Transfer-Encoding") or "").lower()
            declared = int(length) if length and length.strip().isdigit() and not chunked else None
            if declared is not None and declared > max_bytes:
                raise _Failure(f"too large ({declared} bytes, over the limit of {max_bytes}: dl_maxBytes)")
            chunks: list[bytes] = []
            size = 0
            while True:
                if stop.is_set():
                    raise _Cancelled()
                # read1, not read: read(n) blocks until n bytes arrive, so a slow host could
                # dodge the deadline check below; read1 returns whatever one recv delivers.
                chunk = response.read1(_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise _Failure(f"too large (over the limit of {max_bytes} bytes: dl_maxBytes)")
                if time.monotonic() > deadline:
                    raise _Failure("timeout (download too slow)", retryable=True)
                chunks.append(chunk)
            # read1 returns b"" when the server closes the connection early, without the
            # IncompleteRead that read() raises: only the declared length shows the body is short.
            if declared is not None and size < declared:
                raise _Failure(f"truncated body: {size} of {declared} bytes", retryable=True)
            return _decoded(b"".join(chunks), response.headers.get("Content-Encoding"), max_bytes)
    except (_Failure, _Cancelled):
        raise
    except urllib.error.HTTPError as e:
        retry_after = parse_retry_after(e.headers.get("Retry-After") if e.headers else None)
        e.close()
        retryable = e.code >= 500 or e.code == 429
        # urllib gives up on a redirect that loops, or after 10, as an HTTPError of the redirect's code;
        # also on one that says not where to (no Location).
        loop = "" if not 300 <= e.code < 400 else ": a redirect loop, or more than 10 redirects" \
            if e.headers and e.headers.get("Location") else ": a redirect without a Location to follow"
        raise _Failure(f"HTTP {e.code}{loop}", retryable=retryable, retry_after=retry_after) from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            raise _Failure(f"timeout (no reply within {timeout:g} s: dl_timeoutSec)", retryable=True) from e
        raise _Failure(f"network error: {e.reason}", retryable=True) from e
    except TimeoutError as e:  # socket.timeout is TimeoutError since Python 3.10
        raise _Failure(f"timeout (no reply within {timeout:g} s: dl_timeoutSec)", retryable=True) from e
    except http.client.InvalidURL as e:  # bad port, control characters: the same every attempt
        raise _Failure(f"invalid URL: {e}") from e
    except (OSError, http.client.HTTPException) as e:  # reset connections, truncated bodies, TLS
        raise _Failure(f"network error: {type(e).__name__}: {e}", retryable=True) from e
    except ValueError as e:  # host names IDNA cannot encode, other malformed URLs: retrying cannot help
        raise _Failure(f"invalid URL: {e}") from e


def _fetch(
    url: str, timeout: float, retries: int, max_bytes: int, stop: threading.Event
) -> bytes:
    attempt = 0
    while True:
        try:
            return _fetch_once(url, timeout, max_bytes, stop)
        except _Failure as failure:
            attempt += 1
            if not failure.retryable or attempt > retries:
                if attempt > 1:  # a rerun waits as long again on the same host: say it was tried
                    failure.reason += f" ({attempt} attempts)"
                raise
            delay = _BACKOFF_S * attempt
            if failure.retry_after is not None:
                delay = min(failure.retry_after, _MAX_RETRY_AFTER_S)
            if stop.wait(delay):  # sleeps, but wakes at once when the run is interrupted
                raise _Cancelled() from None


def _image_extension(data: bytes) -> str:
    """Extension of the decoded format, or _Failure when `data` is no (usable) image."""
    # Only the formats kept are opened: a downloaded file is as untrusted as an upload, and some
    # Pillow readers run other programs (EPS: Ghostscript) on what they are given.
    readers = openers(tuple(FORMAT_EXTENSIONS))
    try:
        # load_rgb decodes every pixel (at 1/8 scale for JPEG), so truncated files are caught too;
        # Image.open alone only reads the header.
        load_rgb(data, min_size=8, formats=readers)
        with Image.open(io.BytesIO(data), formats=readers) as img:
            fmt = img.format or ""
            size = img.size
    except (ImageDecodeError, UnidentifiedImageError) as e:
        if isinstance(e.__cause__, Image.DecompressionBombError):
            raise _Failure(f"too many pixels ({e.__cause__})") from e
        if (other := _format_name(data)) is not None:
            if other in readers or (other == "MPO" and "JPEG" in readers):  # a kept format, cut short or damaged
                raise _Failure(f"damaged {other} image ({getattr(e, 'reason', e)})") from e
            raise _Failure(f"unsupported image format ({other})") from e
        if not data:
            raise _Failure("empty reply (0 bytes)") from e
        if re.match(rb"\s*<(!doctype html|html|head|body)", data[:512], re.IGNORECASE):
            raise _Failure("a web page (HTML), not an image: the address of a page showing the image, not of "
                           "the image itself?") from e
        raise _Failure("not an image") from e
    if min(size) < MIN_SIDE:  # a site's 1x1 tracking pixel or placeholder, not a photo of anything
        raise _Failure(f"too small ({size[0]}x{size[1]} pixels): a placeholder, not a photo")
    ext = FORMAT_EXTENSIONS.get(fmt)
    if ext is None:
        raise _Failure(f"unsupported image format ({fmt or 'unknown'})")
    return ext


def _format_name(data: bytes) -> str | None:
    """The format Pillow recognises `data` as from its header alone (nothing decoded), or None."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format
    except Exception:  # noqa: BLE001 - any reader's complaint means: not a format to name
        return None


def _download_one(
    label: str,
    url: str,
    out_dir: Path,
    timeout: float,
    retries: int,
    max_bytes: int,
    stop: threading.Event,
) -> str | None:
    """Download, verify and store one URL: None on success, else the failure reason.

    Errors writing to out_dir (disk full, permissions) are not the URL's fault and propagate, so
    the run stops instead of reporting every remaining URL as failed."""
    try:
        data = _fetch(url, timeout, retries, max_bytes, stop)
        ext = _image_extension(data)
    except _Failure as failure:
        return failure.reason
    write_bytes(out_dir / label / (file_stem(url) + ext), data)
    return None


_FAILURES_HEADER = "url\tlabel\treason\n"


def _read_failures(out_dir: Path) -> list[tuple[str, str, str]]:
    """(url, label, reason) of download_failures.tsv (label "" in a file of the earlier two columns)."""
    path = out_dir / FAILURES_FILE
    if not path.is_file():
        return []
    rows = []
    for _, line in tsv_lines(path, error=ValueError):  # as read_manifest reads its file
        fields = line.split("\t")
        if line + "\n" == _FAILURES_HEADER or len(fields) < 2:
            continue
        rows.append((fields[0], fields[1], fields[2]) if len(fields) >= 3 else (fields[0], "", fields[1]))
    return rows


def _write_failures(out_dir: Path, failures: list[tuple[str, str, str]]) -> None:
    """(url, label, reason) of each URL that failed, with a header; the file is removed when none did."""
    path = out_dir / FAILURES_FILE
    if not failures:
        path.unlink(missing_ok=True)  # a stale list from an earlier run would mislead
        return
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(_FAILURES_HEADER)
        for url, label, reason in failures:
            f.write(f"{tsv_field(url)}\t{tsv_field(label)}\t{tsv_field(reason)}\n")


def failure_kinds(failures: Sequence[tuple[str, str]]) -> str:
    """The reasons counted by kind, the most frequent first: "4 HTTP 404, 2 timeout, 1 not an image"."""
    kinds = Counter(reason.split(" (")[0].split(":")[0] for _, reason in failures)
    return ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())


# ---------------------------------------------------------------------------------------------
# Public entry point


def _check_one_folder_per_label(labels: list[str], out_dir: Path) -> None:
    """Raise UrlListError for labels that would share a class folder in `out_dir`: on macOS and
    Windows "Dotted" and "dotted" are one folder, so two such labels would silently become one class
    (and a folder Dotted/ already there would take the images of a label "dotted", which every later
    run would then find "under another label" than the list's). Nothing to find on Linux."""
    # A folder already there under the label's own name in another Unicode form (macOS's HFS+ lists
    # "Rayé" decomposed) is the label's folder, not a clash.
    spelt = {unicodedata.normalize("NFC", lab) for lab in labels}
    folders = [f for f in list_class_dirs(out_dir) if f not in labels and unicodedata.normalize("NFC", f) not in spelt]
    clashes = same_name_groups([*labels, *folders], out_dir)
    if clashes:
        named = "; ".join(" and ".join(repr(n) + (" (a folder there already)" if n in folders else "") for n in g)
                          for g in clashes)
        raise UrlListError(
            f"{out_dir}: {named}: one folder on this file system, which does not tell upper and lower case apart "
            "(macOS, Windows), so their images would become one class; spell each class one way in the list"
            + (", or rename the folder" if any(n in folders for g in clashes for n in g) else ""))


def _check_download_args(workers: int, timeout: float, retries: int, max_bytes: int) -> None:
    """Raise ValueError naming the first setting of download_images out of its range."""
    if workers < 1:
        raise ValueError(f"workers = {workers!r}: expected an int >= 1")
    if timeout <= 0:
        raise ValueError(f"timeout = {timeout!r}: expected a number of seconds > 0")
    if retries < 0:
        raise ValueError(f"retries = {retries!r}: expected an int >= 0")
    if max_bytes < 1:
        raise ValueError(f"max_bytes = {max_bytes!r}: expected an int >= 1")


@dataclass
class _Run:
    """What the steps of one download_images run share, and update as they go."""

    entries: list[tuple[str, str]]  # (label, url) of the list, each URL once (_dedupe)
    out_dir: Path
    report: DownloadReport
    manifest: dict[str, str]  # {url: label} of the files on disk (read_manifest), written back at the end
    reasons: dict[int, str] = field(default_factory=dict)  # entry index -> why it failed (in list order at the end)
    # (old path, new path, new label) of each file _plan moved to follow the list, kept here rather than
    # returned: a move that fails midway (or Ctrl-C) must not lose those done before it (see download_images).
    renamed: list[tuple[str, str, str]] = field(default_factory=list)
    fixes: dict[str, str] | None = None  # annotations_fixes.tsv (read_fixes), read before the first move


def _place_existing(run: _Run, label: str, url: str, files: list[Path],
                    recorded: str | None) -> tuple[str, str, str] | None:
    """Count the file(s) `files` of `url`, found on disk, for `label`, the list's label now, and move
    the file to that label's folder if the label changed in the list since the run that fetched it
    (`recorded`: the manifest's label). Returns (old path, new path, new label) of a file moved."""
    out_dir, report = run.out_dir, run.report
    here = [f for f in files if _label_of(f, out_dir) == label]
    inside = os.path.realpath(files[0]).startswith(os.path.realpath(out_dir) + os.sep)  # not in a folder linked in
    moved = None
    if here:
        report.per_class[label] += 1
    elif recorded is not None and recorded != label and inside:
        # The URL's label changed in the list since the run that downloaded it: follow it.
        if run.fixes is None:
            # Read before the first move, not after the last: a line it cannot read (a space for the tab)
            # stopped the run with the files moved, and the run after it, finding them in place, moved
            # nothing and carried no fix (an EXCLUDE left at a path that is gone).
            run.fixes = read_fixes(out_dir)
        old = files.pop(0)
        target = out_dir / label / old.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(old, target)  # atomic: the image is in one class folder or the other
        report.moved.append((url, _label_of(old, out_dir), label))
        moved = (old.relative_to(out_dir).as_posix(), target.relative_to(out_dir).as_posix(), label)
        report.per_class[label] += 1
        log.info("%s: label now %r, moved %s to %s/", url, label, old.relative_to(out_dir), label)
    elif recorded is not None and inside:
        # The list still says what it said, but the file is in another class folder: the user
        # moved it there to fix its label. The folder wins.
        report.left_by_hand.append((url, _label_of(files[0], out_dir), label))
        files.pop(0)
    else:
        # No record of the label it was fetched under (a data set from before the manifest), or
        # the file is in a folder linked in from elsewhere: a list changed since and a file moved
        # by hand look the same, and nothing outside the data set is moved. Left, and said.
        report.unsure.append((url, _label_of(files[0], out_dir), label))
        files.pop(0)
    for other in files:
        if _label_of(other, out_dir) != label:  # left by a version that downloaded it again
            log.warning("%s is listed as %r but also in %s: the same image in two classes; "
                        "delete that copy", url, label, other.relative_to(out_dir))
    report.skipped_existing += 1
    return moved


def _plan(run: _Run, ambiguous: dict[str, list[str]], retry_gone: bool) -> list[int]:
    """Sort each URL of the list, fetching nothing: on disk (counted, and moved if its label changed in
    the list: _place_existing), set aside by dedupImages.py, deleted by hand since an earlier run,
    failed for good (a bad URL, listed under two labels, gone: in run.reasons), or to fetch. Returns
    the indices of the entries to fetch; (old path, new path, new label) of the files moved go in run.renamed."""
    out_dir, report, manifest = run.out_dir, run.report, run.manifest
    existing = _existing_files(out_dir)
    spellings = _spellings(manifest)  # of the URLs earlier runs fetched
    listed = {_request_url(url) for _, url in run.entries}  # one URL however spelt
    report.unlisted = list(dict.fromkeys(f for url in manifest if _request_url(url) not in listed
                                         for f in existing.get(file_stem(url), [])))
    # dedupImages.py names a moved file <stem>_1.jpg when <stem>.jpg is already there: the same URL.
    set_aside = {re.sub(r"_\d+$", "", p.stem) for p in (out_dir / DUPLICATES_FOLDER).rglob("*")
                 if p.suffix in _KNOWN_EXTENSIONS}
    gone = {} if retry_gone else {url: reason for url, _, reason in _read_failures(out_dir)
                                  if reason.startswith(("HTTP 404", "HTTP 410"))}
    todo: list[int] = []
    for i, (label, url) in enumerate(run.entries):
        try:
            scheme = urllib.parse.urlsplit(url).scheme.lower()
        except ValueError as e:  # "http://[example.com/a.jpg": one bad line must not stop the list
            run.reasons[i] = f"invalid URL: {e}"
            continue
        stems = _stems(url, spellings)
        files = [f for stem in stems for f in existing.get(stem, [])]
        # The label an earlier run fetched it under, whichever spelling it was listed by then: under
        # another spelling a changed label was left as "unsure" (and the next run took the file for
        # one moved by hand, so the list's label was lost), and a photo deleted by hand was fetched back.
        recorded = next((manifest[u] for u in _spelt(url, spellings) if u in manifest), None)
        if url in ambiguous:  # not fetched; a file of an earlier run stays where it is
            run.reasons[i] = (f"listed under {len(ambiguous[url])} labels ({', '.join(ambiguous[url])}): not fetched, "
                              "since an image can be of one class only; keep the line with the right label")
        elif scheme not in ALLOWED_SCHEMES:
            # Never fetched: no file:, ftp:, javascript: ... ("none": a bare host or a path, "not a url").
            run.reasons[i] = (f"unsupported scheme ({scheme or 'none'}): only {' and '.join(sorted(ALLOWED_SCHEMES))} "
                              "URLs are fetched")
        elif not files and any(stem in set_aside for stem in stems):
            report.set_aside += 1  # moved to _duplicates/ by dedupImages.py: not fetched back
        elif files:
            moved = _place_existing(run, label, url, files, recorded)
            if moved:
                run.renamed.append(moved)
            # Every spelling's record of the one file (the manifest has a line for each): a stale label
            # under the other spelling would read, in a later run listing that one, as a label changed.
            for u in _spelt(url, spellings):
                if u == url or u in manifest:
                    manifest[u] = label
        elif recorded is not None:
            report.deleted.append(url)  # fetched by an earlier run, deleted by hand since: not again
        elif tsv_field(url) in gone:
            run.reasons[i] = gone[tsv_field(url)]
            report.gone += 1
        else:
            todo.append(i)
    return todo


def _remove_emptied(out_dir: Path, renamed: list[tuple[str, str, str]]) -> None:
    """Remove the folders the moved files (`renamed`: old path first) left empty: a label renamed in
    the list (cats -> cat) leaves its old folder empty, which stage 1 would take for an empty class."""
    emptied = {f for old, _, _ in renamed for f in (out_dir / old).parents if f != out_dir and out_dir in f.parents}
    for folder in sorted(emptied, key=lambda f: -len(f.parts)):  # sub-folders before their class folder
        try:
            folder.rmdir()  # removes only an empty folder
        except OSError:
            pass


def _fetch_all(run: _Run, todo: list[int], workers: int, timeout: float, retries: int, max_bytes: int,
               progress: bool) -> None:
    """Fetch the entries `todo` in `workers` threads, counting each in run.report and run.manifest or
    its reason in run.reasons. On Ctrl-C or an error writing to out_dir, the downloads in progress are
    stopped, what failed so far is written to FAILURES_FILE, and the exception is raised; the manifest
    is written in any case."""
    entries, out_dir, report, reasons = run.entries, run.out_dir, run.report, run.reasons
    bar = progress_bar(total=len(entries), unit="img", desc="download", disable=not progress)
    bar.update(len(entries) - len(todo))
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imgclass-download")
    pending: dict[Future[str | None], int] = {}
    try:
        for i in todo:
            pending[pool.submit(_download_one, *entries[i], out_dir, timeout, retries, max_bytes, stop)] = i
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                reason = future.result()  # raises only for errors writing to out_dir
                if reason is None:
                    report.ok += 1
                    report.per_class[entries[i][0]] += 1
                    run.manifest[entries[i][1]] = entries[i][0]
                else:
                    reasons[i] = reason
                bar.update(1)
                bar.set_postfix(failed=len(reasons), refresh=False)
    except BaseException as e:
        # Ctrl-C or a write error: drop the queued URLs and make running ones stop (their watchdogs
        # close their sockets), instead of letting `with ThreadPoolExecutor` finish the whole list first.
        if isinstance(e, KeyboardInterrupt) and progress:  # said, since the stop takes a moment (_Watchdog)
            running = sum(f.running() for f in pending)
            print(f"\nstopping: waiting for the {running} download(s) in progress to end "
                  f"(a moment: their connections are closed; Ctrl-C again to quit at once)", file=sys.stderr, flush=True)
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        # What failed so far is recorded, with the earlier run's failures of listed URLs not tried again yet.
        tried = {tsv_field(url) for url in [*(entries[i][1] for i in reasons), *run.manifest]}
        still_listed = {tsv_field(_request_url(url)) for _, url in entries}
        try:
            _write_failures(out_dir, [(entries[i][1], entries[i][0], reasons[i]) for i in sorted(reasons)]
                            + [row for row in _read_failures(out_dir) if row[0] not in tried and row[0] in still_listed])
        except (OSError, UnicodeError) as failed:  # (edited by hand since): the interrupt is what to report
            log.warning("%s not updated: %s", FAILURES_FILE, failed)
        if isinstance(e, KeyboardInterrupt) and progress:
            print(f"so far in this run: {report.ok} downloaded, {len(reasons)} failed (in {FAILURES_FILE})",
                  file=sys.stderr, flush=True)
        raise
    finally:
        bar.close()
        _write_manifest(out_dir, run.manifest)  # what is on disk now, also after Ctrl-C
    pool.shutdown(wait=True)


def download_images(
    url_list: str | Path | list[tuple[str, str]],
    out_dir: str | Path,
    workers: int = 8,
    timeout: float = 20.0,
    retries: int = 1,
    max_bytes: int = 25_000_000,
    progress: bool = True,
    retry_gone: bool = False,
) -> DownloadReport:
    """Download every (label, url) into out_dir/<label>/<sha1(url)[:16]>.<ext>.

    `url_list`: a TSV file (see `read_url_list`) or a list of (label, url) pairs.
    `timeout`: seconds per socket operation (connect, each read); an attempt also gives up after
    10 * timeout in total. `retries`: extra attempts after network errors, timeouts, HTTP 5xx and
    429 (never after other 4xx, oversized bodies or non-images). `max_bytes`: larger bodies are
    abandoned. URLs whose file already exists are skipped (a file found under another label than
    the URL's is moved to its label's folder, see `DownloadReport.moved`); failures are listed in
    the report and in out_dir/download_failures.tsv (removed when nothing failed) and retried by
    the next run, except URLs the server said are gone (HTTP 404 or 410: a list years old holds
    many, and asking again at every rerun is time lost): those only with `retry_gone`.
    """
    _check_download_args(workers, timeout, retries, max_bytes)
    entries, ambiguous, repeated = _dedupe(_normalise_entries(url_list))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # Every label of a URL listed under two: its class shows (with 0 if nothing else) and is named as failed.
    report = DownloadReport(per_class={label: 0 for label in [*(lab for lab, _ in entries), *(
        lab for labels in ambiguous.values() for lab in labels)]})
    _check_one_folder_per_label(list(report.per_class), out_dir)
    report.repeated = repeated
    run = _Run(entries, out_dir, report, read_manifest(out_dir))
    try:
        todo = _plan(run, ambiguous, retry_gone)
    except BaseException:
        # A move that failed (a class folder this user cannot write) or Ctrl-C midway: the files moved
        # before it are where the list says, so no later run moves them again, and their fixes and
        # emptied folders would be left behind for good (an EXCLUDE pointing at a path that is gone).
        # The manifest too: left with their old labels, a next run whose list says the old label again
        # took each moved file for one moved by hand and left it in the wrong class.
        try:
            _carry_fixes(out_dir, run.renamed, run.fixes)
            _remove_emptied(out_dir, run.renamed)
            if run.renamed:
                _write_manifest(out_dir, run.manifest)
        except (OSError, ValueError) as e:  # the first error is the one to report
            log.warning("after moving %d file(s): %s", len(run.renamed), e)
        raise
    report.fixes_moved = _carry_fixes(out_dir, run.renamed, run.fixes)
    _remove_emptied(out_dir, run.renamed)
    _fetch_all(run, todo, workers, timeout, retries, max_bytes, progress)

    reasons = run.reasons
    report.failures = [(entries[i][1], reasons[i]) for i in sorted(reasons)]
    report.failed_labels = {entries[i][0] for i in reasons} | {lab for labels in ambiguous.values() for lab in labels}
    report.failed = len(report.failures)
    _write_failures(out_dir, [(entries[i][1], entries[i][0], reasons[i]) for i in sorted(reasons)])
    return report


__all__ = [
    "DownloadReport",
    "UrlListError",
    "check_label",
    "download_images",
    "file_stem",
    "read_manifest",
    "read_url_list",
]
