"""imgclass.download against a real HTTP server on 127.0.0.1 (no internet needed).

The server serves good images, a PNG named .jpg, an HTML page with status 200, a 404, a flaky 500,
a slow endpoint, oversized bodies, redirects and a 429 with Retry-After, and counts every request
per path, so the tests can prove what was (not) fetched.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import re
import shutil
import socket
import io
import threading
import time
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_script
from imgclass import download as dl
from imgclass.data import list_class_dirs
from imgclass.download import DownloadReport, UrlListError, download_images, read_url_list
from imgclass.images import check_image


def _image_bytes(fmt: str, color: tuple[int, int, int], size: tuple[int, int] = (32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


JPEG = _image_bytes("JPEG", (200, 30, 30))
PNG = _image_bytes("PNG", (30, 200, 30))
PNG_AS_JPG = _image_bytes("PNG", (30, 30, 200))
HTML = b"<!doctype html><html><body>Sorry, this image is no longer available</body></html>"
BIG = 50_000  # bytes; the tests use max_bytes=10_000


def _noisy_jpeg() -> bytes:  # large enough that its first half still holds the whole header
    import numpy as np

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


NOISY_JPEG = _noisy_jpeg()
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n"


@dataclass
class Server:
    base: str
    hits: Counter = field(default_factory=Counter)  # path -> number of requests
    user_agents: list[str] = field(default_factory=list)
    closing: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str) -> str:
        return self.base + path


def _make_handler(state: Server) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
            pass

        def _send(
            self, status: int, body: bytes, ctype: str = "image/jpeg", **headers: str
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            with lock:
                state.hits[path] += 1
                hit = state.hits[path]
                state.user_agents.append(self.headers.get("User-Agent", ""))
            try:
                self._route(path, hit)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout, size cap): expected in these tests

        def _route(self, path: str, hit: int) -> None:
            if path in ("/cat.jpg", "/cat2.jpg", "/caf%C3%A9%20photo.jpg", "/100%25%20cotton.jpg"):
                self._send(200, JPEG)
            elif path == "/dog.png":
                self._send(200, PNG, "image/png")
            elif path == "/gzipped.jpg":  # compressed though the client asked for no Content-Encoding
                self._send(200, gzip.compress(JPEG), Content_Encoding="gzip")
            elif path == "/deflated.png":  # "deflate" as many servers send it: raw, without the zlib header
                pack = zlib.compressobj(wbits=-15)
                self._send(200, pack.compress(PNG) + pack.flush(), "image/png", Content_Encoding="deflate")
            elif path == "/gzip-bomb.jpg":
                self._send(200, gzip.compress(b"\0" * 2_000_000), Content_Encoding="gzip")
            elif path == "/gzip-cut.jpg":  # a gzip stream cut in half, served whole as such (Content-Length fits)
                packed = gzip.compress(NOISY_JPEG)
                self._send(200, packed[: len(packed) // 2], Content_Encoding="gzip")
            elif path == "/brotli.jpg":
                self._send(200, JPEG, Content_Encoding="br")
            elif path == "/pixel.gif":  # a 1x1 tracking pixel, as sites serve for hotlinked images
                buf = io.BytesIO()
                Image.new("P", (1, 1)).save(buf, "GIF")
                self._send(200, buf.getvalue(), "image/gif")
            elif path == "/png-named.jpg":
                self._send(200, PNG_AS_JPG)
            elif path == "/page.jpg":  # an error page served with 200, as many CDNs do
                self._send(200, HTML, "text/html")
            elif path == "/flaky.jpg":  # 500 the first time, the image afterwards
                if hit == 1:
                    self._send(500, b"oops", "text/plain")
                else:
                    self._send(200, JPEG)
            elif path == "/always500.jpg":
                self._send(503, b"down", "text/plain")
            elif path == "/throttled.jpg":  # 429 with a Retry-After the client should honour
                if hit == 1:
                    self._send(429, b"slow down", "text/plain", Retry_After="1")
                else:
                    self._send(200, JPEG)
            elif path == "/slow.jpg":
                self.closing.wait(3.0)  # far longer than the tests' timeout
                self._send(200, JPEG)
            elif path in ("/truncated.jpg", "/truncated-once.jpg"):
                # The connection closes after half the declared body: a network error, worth a retry.
                body = JPEG if path == "/truncated-once.jpg" and hit > 1 else JPEG[: len(JPEG) // 2]
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(JPEG)))
                self.end_headers()
                self.wfile.write(body)
            elif path == "/big-declared.jpg":
                # Content-Length alone must reject it: the body sent is short, so a client that read
                # on would see a truncated body (a network error, retried), not "too large".
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(BIG))
                self.end_headers()
                self.wfile.write(b"\xff" * 100)
            elif path == "/big-streamed.jpg":  # no Content-Length: the cap must hit while streaming
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.end_headers()  # HTTP/1.0: the body ends when the connection closes
                for _ in range(BIG // 1000):
                    self.wfile.write(b"\xff" * 1000)
            elif path == "/drip.jpg":  # a byte every 50 ms: each read is fast, the whole never ends
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.end_headers()
                for _ in range(200):
                    if self.closing.wait(0.05):
                        break
                    self.wfile.write(b"\xff")
                    self.wfile.flush()
            elif path == "/drip-headers.jpg":  # the status line and headers a byte every 50 ms, for 10 s
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for _ in range(200):
                    if self.closing.wait(0.05):
                        break
                    self.wfile.write(b"X")
                    self.wfile.flush()
            elif path == "/redirect-file.jpg":  # urllib itself refuses file: before our handler sees it
                self.send_response(302)
                self.send_header("Location", "file:///etc/passwd")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path == "/half.jpg":  # a JPEG cut in half, served whole as such
                self._send(200, NOISY_JPEG[: len(NOISY_JPEG) // 2])
            elif path == "/ghost.eps":  # PostScript: Pillow's EPS reader would run Ghostscript on it
                self._send(200, EPS, "application/postscript")
            elif path == "/redirect-ok.jpg":
                self.send_response(302)
                self.send_header("Location", "/cat.jpg")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path == "/loop.jpg":  # a redirect to itself
                self.send_response(302)
                self.send_header("Location", "/loop.jpg")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path == "/nowhere.jpg":  # a redirect that says not where to
                self.send_response(302)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path == "/empty.jpg":
                self._send(200, b"")
            elif path == "/redirect-ftp.jpg":
                self.send_response(302)
                self.send_header("Location", f"ftp://127.0.0.1:{self.server.server_address[1]}/x")
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self._send(404, b"not found", "text/plain")

    Handler.closing = state.closing  # type: ignore[attr-defined]
    return Handler


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    # A proxy configured in the environment would swallow requests meant for 127.0.0.1.
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    state = Server(base="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        state.closing.set()  # wake slow handlers so nothing outlives the test
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _files(root: Path) -> dict[str, list[str]]:
    """{class folder: sorted file names}, ignoring top-level files such as the failures TSV."""
    return {
        d.name: sorted(p.name for p in d.iterdir()) for d in sorted(root.iterdir()) if d.is_dir()
    }


def _stem(url: str) -> str:
    return hashlib.sha1(url.encode("utf-8")).hexdigest()[:16]


def _write_tsv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _failures_tsv(out: Path) -> list[list[str]]:
    """The rows of download_failures.tsv (url, label, reason), after its header."""
    lines = (out / dl.FAILURES_FILE).read_text(encoding="utf-8").splitlines()
    assert lines[0] == "url\tlabel\treason"
    return [line.split("\t") for line in lines[1:]]


# ---------------------------------------------------------------------------------------------
# read_url_list


def test_read_url_list_header_comments_blank_lines_and_extra_columns(tmp_path: Path) -> None:
    path = tmp_path / "urls.tsv"
    path.write_bytes(
        "\ufeffLabel\tURL\tsource\r\n"  # BOM + header in any case + extra column, CRLF endings
        "# a comment\r\n"
        "\r\n"
        "cat\thttp://example.com/a.jpg\tflickr\tCC-BY\r\n"
        "  \t  \r\n"
        "dog \t http://example.com/b.png \r\n".encode("utf-8")
    )
    assert read_url_list(path) == [
        ("cat", "http://example.com/a.jpg"),
        ("dog", "http://example.com/b.png"),
    ]


def test_read_url_list_takes_headers_for_headers(tmp_path: Path) -> None:
    # Two lists joined with cat: the second's header "label<TAB>url" was read as a class "label".
    path = _write_tsv(tmp_path / "urls.tsv", ["label\turl", "cat\thttp://x/a.jpg", "label\turl", "dog\thttp://x/b.jpg"])
    assert read_url_list(path) == [("cat", "http://x/a.jpg"), ("dog", "http://x/b.jpg")]
    # A first line of other column names was a class "category" whose one URL failed.
    path = _write_tsv(tmp_path / "urls.tsv", ["category\timage_url", "cat\thttp://x/a.jpg"])
    assert read_url_list(path) == [("cat", "http://x/a.jpg")]
    # Not a header: a first line with an address in it (its scheme missing fails as that URL's fault).
    path = _write_tsv(tmp_path / "urls.tsv", ["cat\twww.example.com/a.jpg", "dog\thttp://x/b.jpg"])
    assert read_url_list(path)[0] == ("cat", "www.example.com/a.jpg")
    # Fields in double quotes, as Excel writes some.
    path = _write_tsv(tmp_path / "urls.tsv", ['"cat"\t"http://x/a ""b"".jpg"'])
    assert read_url_list(path) == [("cat", 'http://x/a "b".jpg')]


def test_lists_joined_with_byte_order_marks_and_invisible_characters_in_labels(tmp_path: Path) -> None:
    # Two lists saved by Notepad and joined with cat: the second's mark began a line, and its header
    # became a class "\ufefflabel" and its first label "\ufeffcircle", a class beside "circle".
    joined = ("\ufefflabel\turl\ncircle\thttp://x/a.jpg\n".encode() * 2).replace(b"a.jpg", b"b.jpg", 1)
    (tmp_path / "urls.tsv").write_bytes(joined)
    assert read_url_list(tmp_path / "urls.tsv") == [("circle", "http://x/b.jpg"), ("circle", "http://x/a.jpg")]
    path = _write_tsv(tmp_path / "urls.tsv", ["circle\u200b\thttp://x/a.jpg", "\U0001f469\u200d\U0001f52c\thttp://x/b.jpg"])
    with pytest.raises(UrlListError, match=re.escape("line 1: label 'circle\\u200b' contains an invisible character "
                                                     "(U+200B ZERO WIDTH SPACE)")):
        read_url_list(path)
    # An emoji's joiner, and Persian's zero-width non-joiner, are part of the name.
    scientist, persian = "\U0001f469\u200d\U0001f52c", "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"
    path = _write_tsv(tmp_path / "urls.tsv", [f"{scientist}\thttp://x/b.jpg", f"{persian}\thttp://x/c.jpg"])
    assert read_url_list(path) == [(scientist, "http://x/b.jpg"), (persian, "http://x/c.jpg")]


def test_every_bad_line_of_a_url_list_is_named_at_once(tmp_path: Path) -> None:
    lines = ["cat\thttp://x/a.jpg", "cat http://x/b.jpg", "dog\thttp://x/c.jpg", "dog http://x/d.jpg"]
    with pytest.raises(UrlListError, match=r"urls.tsv: 2 lines to mend:\n  line 2: expected 'label<TAB>url', found no "
                                           r"tab in 'cat http://x/b.jpg'\n  line 4: "):
        read_url_list(_write_tsv(tmp_path / "urls.tsv", lines))
    many = [f"cat http://x/{i}.jpg" for i in range(15)]
    with pytest.raises(UrlListError, match=r"15 lines to mend:(\n  line \d+: [^\n]+){10}\n  \.\.\. and 5 more$"):
        read_url_list(_write_tsv(tmp_path / "many.tsv", many))


@pytest.mark.parametrize(
    "bad_line, words",
    [
        ("cat http://example.com/a.jpg", "expected 'label<TAB>url'"),  # spaces instead of a tab
        ("\thttp://example.com/a.jpg", "empty label"),
        ("cat\t", "URL is empty"),
        ("cats/evil\thttp://example.com/a.jpg", "'/'"),
        ("http://example.com/a.jpg\tcat", "the columns look swapped"),
        ("..\thttp://example.com/a.jpg", "'..'"),
        ("a\\b\thttp://example.com/a.jpg", "'\\\\'"),
        # Stage 1 skips folders starting with '_' or '.': such a class would vanish from the data set.
        ("_background\thttp://example.com/a.jpg", "starts with '_'"),
        (".misc\thttp://example.com/a.jpg", "starts with '.'"),
        # Names Windows refuses or changes: a data set built here would not copy there.
        ("what?\thttp://example.com/a.jpg", "'?'"),
        ("a|b\thttp://example.com/a.jpg", "'|'"),
        ("misc.\thttp://example.com/a.jpg", "ends with a dot or a space"),
        ("con\thttp://example.com/a.jpg", "reserves for a device"),
        # As Python 3.13's ntpath.isreserved: a space before the extension, the console and superscripts.
        ("con .png\thttp://example.com/a.jpg", "reserves for a device"),
        ("CONOUT$\thttp://example.com/a.jpg", "reserves for a device"),
        ("com\u00b9\thttp://example.com/a.jpg", "reserves for a device"),
        # Checked before anything is fetched: both stopped the run half-way with a traceback.
        ("\u732b" * 88 + "\thttp://example.com/a.jpg", "is 264 bytes long as UTF-8 (a folder name holds at most 255"),
        ("download_manifest.tsv\thttp://example.com/a.jpg", "the name of a file the pipeline keeps in the data set folder"),
        ("Train\thttp://example.com/a.jpg", "names a side of a split made in advance"),
    ],
)
def test_read_url_list_errors_name_file_and_line(tmp_path: Path, bad_line: str, words: str) -> None:
    path = _write_tsv(
        tmp_path / "my_urls.tsv",
        ["label\turl", "# comment", "", "cat\thttp://example.com/ok.jpg", bad_line],
    )
    with pytest.raises(UrlListError) as info:
        read_url_list(path)
    message = str(info.value)
    assert "my_urls.tsv" in message
    assert "line 5" in message
    assert words in message
    assert isinstance(info.value, ValueError)  # callers catching ValueError still see it


def test_a_list_with_no_url_line_is_an_error(tmp_path: Path) -> None:
    for lines in ([], ["label\turl"], ["# urls", ""]):  # most likely the wrong file
        with pytest.raises(UrlListError, match=r"empty.tsv: no 'label<TAB>url' line in it"):
            read_url_list(_write_tsv(tmp_path / "empty.tsv", lines))



def test_a_folder_or_a_missing_file_given_as_the_url_list_is_named_as_such(tmp_path: Path) -> None:
    with pytest.raises(UrlListError, match=rf"{tmp_path} is a folder: give the URL list, a text file of label<TAB>url lines"):
        read_url_list(tmp_path)  # it was an IsADirectoryError traceback
    with pytest.raises(UrlListError, match=r"missing.tsv: no such file \(the URL list"):
        read_url_list(tmp_path / "missing.tsv")
    proc = run_script("0_downloadData.py", "--set", "datasetName=pets", "--urls", str(tmp_path), data_dir=tmp_path / "d", check=False)
    assert proc.returncode == 1 and "is a folder: give the URL list" in proc.stderr and "Traceback" not in proc.stderr


def test_read_url_list_rejects_non_utf8_with_line_number(tmp_path: Path) -> None:
    path = tmp_path / "latin1.tsv"
    path.write_bytes(b"cat\thttp://x/a.jpg\ncaf\xe9\thttp://x/b.jpg\n")
    with pytest.raises(UrlListError, match=r"latin1\.tsv, line 2"):
        read_url_list(path)
    path.write_bytes(b"cat\thttp://x/a.jpg\rdog\thttp://x/c.jpg\rcaf\xe9\thttp://x/b.jpg\r")  # old Mac line ends
    with pytest.raises(UrlListError, match=r"latin1\.tsv, line 3"):
        read_url_list(path)


def test_read_url_list_takes_every_kind_of_line_end(tmp_path: Path) -> None:
    """Windows (CRLF), Unix (LF) and old Mac (CR alone) line ends, as an editor shows the lines."""
    path = tmp_path / "mixed.tsv"
    path.write_bytes(b"label\turl\r\ncat\thttp://x/a.jpg\rdog\thttp://x/b.jpg\nbird\thttp://x/c.jpg\r\n")
    assert read_url_list(path) == [("cat", "http://x/a.jpg"), ("dog", "http://x/b.jpg"), ("bird", "http://x/c.jpg")]
    path.write_bytes(b"cat\thttp://x/a.jpg\r\rdog\r")
    with pytest.raises(UrlListError, match=r"mixed\.tsv, line 3: expected 'label<TAB>url', found no tab"):
        read_url_list(path)


def test_download_images_checks_labels_of_a_python_list(tmp_path: Path) -> None:
    with pytest.raises(UrlListError, match="entry 1"):
        download_images([("cat", "http://x/a.jpg"), ("../up", "http://x/b.jpg")], tmp_path / "out")
    assert not (tmp_path / "up").exists()


# ---------------------------------------------------------------------------------------------
# download_images


def test_mixed_list_counts_files_and_failures(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "images"
    tsv = _write_tsv(
        tmp_path / "urls.tsv",
        [
            "label\turl\tsource",
            f"cat\t{server.url('/cat.jpg')}\tunit test",
            f"dog\t{server.url('/dog.png')}",
            f"dog\t{server.url('/png-named.jpg')}",
            f"cat\t{server.url('/page.jpg')}",
            f"cat\t{server.url('/missing.jpg')}",
            f"bird\t{server.url('/redirect-ok.jpg')}",
        ],
    )
    report = download_images(tsv, out, workers=4, timeout=5, retries=1, progress=False)

    assert isinstance(report, DownloadReport)
    assert (report.ok, report.skipped_existing, report.failed) == (4, 0, 2)
    assert report.per_class == {"cat": 1, "dog": 2, "bird": 1}
    page = "a web page (HTML), not an image: the address of a page showing the image, not of the image itself?"
    assert report.failures == [
        (server.url("/page.jpg"), page),
        (server.url("/missing.jpg"), "HTTP 404"),
    ]
    # Names: sha1 of the URL + the extension of the decoded format, not of the URL.
    assert _files(out) == {
        "bird": [_stem(server.url("/redirect-ok.jpg")) + ".jpg"],
        "cat": [_stem(server.url("/cat.jpg")) + ".jpg"],
        "dog": sorted(
            [_stem(server.url("/dog.png")) + ".png", _stem(server.url("/png-named.jpg")) + ".png"]
        ),
    }
    for image in out.glob("*/*"):
        assert check_image(image) is None, image
    assert (out / "dog" / (_stem(server.url("/png-named.jpg")) + ".png")).read_bytes() == PNG_AS_JPG
    assert _failures_tsv(out) == [
        [server.url("/page.jpg"), "cat", page],
        [server.url("/missing.jpg"), "cat", "HTTP 404"],
    ]
    assert report.notes(out)[-1].startswith("failed: 1 a web page, 1 HTTP 404; each URL, its label and the reason: ")
    assert server.hits["/missing.jpg"] == 1  # 4xx is never retried
    assert not list(out.rglob("*.tmp")), "no temp files may be left behind"
    assert all(ua.startswith("imgclass-downloader/") for ua in server.user_agents)


def test_rerun_skips_existing_and_retries_failures(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "images"
    entries = [
        ("cat", server.url("/cat.jpg")),
        ("dog", server.url("/dog.png")),
        ("cat", server.url("/missing.jpg")),
    ]
    first = download_images(entries, out, workers=2, timeout=5, progress=False)
    files_after_first = _files(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.*") if p.parent != out}
    hits_after_first = Counter(server.hits)

    second = download_images(entries, out, workers=2, timeout=5, progress=False)

    assert (first.ok, first.skipped_existing, first.failed) == (2, 0, 1)
    assert (second.ok, second.skipped_existing, second.failed) == (0, 2, 1)
    assert second.per_class == first.per_class == {"cat": 1, "dog": 1}
    assert _files(out) == files_after_first  # same URL -> same file name
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # existing files untouched
    # Existing images were not requested again; nor was the URL the server said is gone (404), which
    # is still listed as failed, and is requested when asked (a failure that may pass is retried at
    # every run: test_failures_file_written_then_removed_when_a_rerun_succeeds).
    assert server.hits["/cat.jpg"] == hits_after_first["/cat.jpg"] == 1
    assert server.hits["/dog.png"] == hits_after_first["/dog.png"] == 1
    assert server.hits["/missing.jpg"] == 1 and second.gone == 1
    assert second.failures == [(server.url("/missing.jpg"), "HTTP 404")]
    assert _failures_tsv(out) == [[server.url("/missing.jpg"), "cat", "HTTP 404"]]
    assert "note: 1 of them not requested again: the server said they are gone (HTTP 404" in "\n".join(second.notes(out))
    third = download_images(entries, out, workers=2, timeout=5, progress=False, retry_gone=True)
    assert server.hits["/missing.jpg"] == 2 and (third.failed, third.gone) == (1, 0)


def test_failures_file_written_then_removed_when_a_rerun_succeeds(
    server: Server, tmp_path: Path
) -> None:
    out = tmp_path / "images"
    entries = [("cat", server.url("/flaky.jpg"))]

    first = download_images(entries, out, retries=0, timeout=5, progress=False)
    assert first.failures == [(server.url("/flaky.jpg"), "HTTP 500")]
    assert _failures_tsv(out) == [[server.url("/flaky.jpg"), "cat", "HTTP 500"]]
    assert server.hits["/flaky.jpg"] == 1  # retries=0: a single attempt

    second = download_images(entries, out, retries=0, timeout=5, progress=False)
    assert (second.ok, second.failed) == (1, 0)
    assert not (out / dl.FAILURES_FILE).exists(), "a stale failures list must be removed"
    assert _files(out) == {"cat": [_stem(server.url("/flaky.jpg")) + ".jpg"]}


def test_retry_after_5xx_succeeds(server: Server, tmp_path: Path) -> None:
    report = download_images(
        [("cat", server.url("/flaky.jpg"))], tmp_path, retries=1, timeout=5, progress=False
    )
    assert (report.ok, report.failed) == (1, 0)
    assert server.hits["/flaky.jpg"] == 2


def test_retries_are_bounded_and_4xx_is_not_retried(server: Server, tmp_path: Path) -> None:
    entries = [("cat", server.url("/always500.jpg")), ("cat", server.url("/missing.jpg"))]
    report = download_images(entries, tmp_path, retries=2, timeout=5, progress=False)
    assert report.failures == [
        (server.url("/always500.jpg"), "HTTP 503 (3 attempts)"),  # a rerun waits on it again: said
        (server.url("/missing.jpg"), "HTTP 404"),
    ]
    assert server.hits["/always500.jpg"] == 3  # 1 attempt + 2 retries
    assert server.hits["/missing.jpg"] == 1


def test_429_honours_short_retry_after(server: Server, tmp_path: Path) -> None:
    start = time.monotonic()
    report = download_images(
        [("cat", server.url("/throttled.jpg"))], tmp_path, retries=1, timeout=5, progress=False
    )
    elapsed = time.monotonic() - start
    assert (report.ok, report.failed) == (1, 0)
    assert server.hits["/throttled.jpg"] == 2
    assert elapsed >= 0.9, "the server asked for Retry-After: 1"


def test_slow_server_times_out_without_stalling_the_run(server: Server, tmp_path: Path) -> None:
    entries = [("cat", server.url("/slow.jpg")), ("cat", server.url("/cat.jpg"))]
    start = time.monotonic()
    report = download_images(entries, tmp_path, timeout=0.5, retries=0, progress=False)
    elapsed = time.monotonic() - start
    assert report.ok == 1
    assert report.failures == [(server.url("/slow.jpg"), "timeout (no reply within 0.5 s: dl_timeoutSec)")]
    assert elapsed < 2.5  # the endpoint would take 3 s
    assert _files(tmp_path) == {"cat": [_stem(server.url("/cat.jpg")) + ".jpg"]}


@pytest.mark.parametrize("path", ["/drip.jpg", "/drip-headers.jpg"])
def test_dripping_server_hits_the_total_deadline(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """Every byte arrives well within `timeout`, so only the per-attempt total budget stops it. It was
    checked between body chunks only: a host that dripped its status line and headers held the
    worker, and the first Ctrl-C, forever."""
    monkeypatch.setattr(dl, "_TOTAL_TIMEOUT_FACTOR", 2.0)
    start = time.monotonic()
    report = download_images([("cat", server.url(path))], tmp_path, timeout=0.3, retries=0, progress=False)
    assert report.failures == [(server.url(path), "timeout (download too slow)")]
    assert time.monotonic() - start < 3  # the endpoint would drip for 10 s


def test_stopping_the_run_ends_a_download_in_progress_at_once(server: Server) -> None:
    """Ctrl-C sets `stop`; a download waiting on a silent host used to end only when the host
    answered or the socket timed out (dl_timeoutSec, 20 s by default)."""
    stop = threading.Event()
    outcome: list[BaseException] = []

    def fetch() -> None:
        try:
            dl._fetch(server.url("/slow.jpg"), timeout=30, retries=0, max_bytes=10_000, stop=stop)
        except BaseException as e:  # noqa: BLE001 - the test looks at what it was
            outcome.append(e)

    worker = threading.Thread(target=fetch)
    worker.start()
    deadline = time.monotonic() + 10
    while server.hits["/slow.jpg"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.monotonic()
    stop.set()
    worker.join(timeout=10)
    assert time.monotonic() - start < 1.5  # the endpoint answers after 3 s
    assert [type(e) for e in outcome] == [dl._Cancelled]


def test_stopping_the_run_ends_a_connection_the_host_never_answers(tmp_path: Path) -> None:
    """A host that drops the connection request (a firewall; here a listening socket whose backlog is
    full, so the kernel drops the SYN) held a stopped run for the rest of dl_timeoutSec: the
    watchdog saw the socket only once it had connected."""
    with socket.socket() as host:
        host.bind(("127.0.0.1", 0))
        host.listen(0)
        port = host.getsockname()[1]
        queued = []  # never accepted: they fill the backlog
        for _ in range(3):
            c = socket.socket()
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                c.connect(("127.0.0.1", port))
            queued.append(c)
        time.sleep(0.3)
        stop = threading.Event()
        outcome: list[BaseException] = []

        def fetch() -> None:
            try:
                dl._fetch(f"http://127.0.0.1:{port}/cat.jpg", timeout=10, retries=0, max_bytes=10_000, stop=stop)
            except BaseException as e:  # noqa: BLE001 - the test looks at what it was
                outcome.append(e)

        worker = threading.Thread(target=fetch)
        worker.start()
        time.sleep(1.0)  # connecting by now
        assert worker.is_alive() and outcome == [], outcome  # the host indeed does not answer
        start = time.monotonic()
        stop.set()
        worker.join(timeout=15)
        took = time.monotonic() - start
        for c in queued:
            c.close()
    assert took < 1.5, took  # it took the rest of the 10 s timeout
    assert [type(e) for e in outcome] == [dl._Cancelled]


def test_size_cap_by_content_length_and_while_streaming(server: Server, tmp_path: Path) -> None:
    entries = [
        ("big", server.url("/big-declared.jpg")),
        ("big", server.url("/big-streamed.jpg")),
        ("cat", server.url("/cat.jpg")),
    ]
    report = download_images(entries, tmp_path, max_bytes=10_000, timeout=5, progress=False)
    assert report.ok == 1
    assert report.failures == [
        (entries[0][1], f"too large ({BIG} bytes, over the limit of 10000: dl_maxBytes)"),  # rejected by the header
        (entries[1][1], "too large (over the limit of 10000 bytes: dl_maxBytes)"),  # cut off while streaming
    ]
    assert report.per_class == {"big": 0, "cat": 1}
    assert not (tmp_path / "big").exists() or not any((tmp_path / "big").iterdir())
    assert server.hits["/big-declared.jpg"] == 1  # oversize is not retried


def test_unsupported_schemes_are_never_fetched(server: Server, tmp_path: Path) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(JPEG)
    host = server.base.removeprefix("http://")
    bad = [
        f"file://{secret}",
        f"ftp://{host}/cat.jpg",
        "javascript:alert(1)",
        f"{host}/cat.jpg",  # no scheme
        f"//{host}/cat.jpg",  # scheme-relative
        "data:image/jpeg;base64,AAAA",
    ]
    out = tmp_path / "out"
    report = download_images([("cat", url) for url in bad], out, progress=False)
    assert report.ok == 0
    assert [(url, reason.split(" (")[0]) for url, reason in report.failures] == [(url, "unsupported scheme") for url in bad]
    assert report.failures[-1][1] == "unsupported scheme (data): only http and https URLs are fetched"
    assert report.failures[-3][1].startswith("unsupported scheme (none)")
    assert sum(server.hits.values()) == 0, "nothing may reach the server"
    assert _files(out) == {}
    assert len(_failures_tsv(out)) == len(bad)


def test_redirect_to_another_scheme_is_refused(server: Server, tmp_path: Path) -> None:
    report = download_images(
        [("cat", server.url("/redirect-ftp.jpg"))], tmp_path, retries=2, timeout=5, progress=False
    )
    assert report.failed == 1
    assert report.failures[0][1].startswith("redirect to unsupported scheme")
    assert server.hits["/redirect-ftp.jpg"] == 1  # refused outright, not retried
    assert server.hits["/x"] == 0


def test_redirect_to_a_local_file_is_named_as_such(server: Server, tmp_path: Path) -> None:
    """It was "HTTP 302: a redirect loop, or more than 10 redirects" (urllib refuses file: itself)."""
    report = download_images(
        [("cat", server.url("/redirect-file.jpg"))], tmp_path, retries=2, timeout=5, progress=False
    )
    assert report.failures == [(server.url("/redirect-file.jpg"), "redirect to unsupported scheme (file)")]
    assert server.hits["/redirect-file.jpg"] == 1  # refused outright, not retried


def test_duplicate_urls_are_fetched_once(server: Server, tmp_path: Path) -> None:
    url = server.url("/cat.jpg")
    tsv = _write_tsv(
        tmp_path / "urls.tsv",
        [f"cat\t{url}", f"cat\t{url}\tsecond source", f"cat\t{server.url('/cat2.jpg')}"],
    )
    report = download_images(tsv, tmp_path / "out", workers=4, progress=False)
    assert (report.ok, report.failed) == (2, 0)
    assert server.hits["/cat.jpg"] == 1
    assert len(_files(tmp_path / "out")["cat"]) == 2
    assert report.repeated == 1 and "note: 1 line(s) of the list repeat a URL under the same label: each URL is " \
        "fetched once and counted once" in report.notes(tmp_path / "out")
    # A URL also listed under another label is not fetched at all: its repeats are not "fetched once".
    tsv = _write_tsv(tmp_path / "two.tsv", [f"cat\t{url}", f"dog\t{url}", f"cat\t{url}"])
    assert download_images(tsv, tmp_path / "out2", progress=False).repeated == 0


def test_same_url_under_two_labels_is_not_fetched(server: Server, tmp_path: Path) -> None:
    """Its class was whichever line came first, said only in a log line above the progress bar; it is
    a failure of the list now, as scrapeImages.py drops such URLs."""
    url, other = server.url("/cat.jpg"), server.url("/dog.png")
    report = download_images([("cat", url), ("dog", other), ("dog", url), ("cat", url)], tmp_path, progress=False)
    assert report.per_class == {"cat": 0, "dog": 1} and server.hits.get("/cat.jpg", 0) == 0
    assert report.failures == [(url, "listed under 2 labels (cat, dog): not fetched, since an image can be of one "
                                     "class only; keep the line with the right label")]
    assert _failures_tsv(tmp_path)[0][:2] == [url, "cat"]
    # A label whose one URL is listed under another label too: its class is shown (0), and as failed.
    report = download_images([("cat", other), ("bird", other)], tmp_path / "b", progress=False)
    assert report.per_class == {"cat": 0, "bird": 0} and report.failed_labels == {"cat", "bird"}


def test_labels_one_folder_on_a_case_blind_file_system_are_refused_before_fetching(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On macOS and Windows "Dotted" and "dotted" are one folder: their images would silently become
    one class. This machine's file system tells them apart (both are fetched, as before); a
    case-blind one is stood in for by folding the names as macOS's APFS does (case and Unicode form)."""
    cat, cat2 = server.url("/cat.jpg"), server.url("/cat2.jpg")
    report = download_images([("Cat", cat), ("cat", cat2)], tmp_path / "linux", progress=False)
    assert report.per_class == {"Cat": 1, "cat": 1}

    def case_blind(names: list[str], folder: Path) -> list[list[str]]:
        assert Path(folder).is_dir()
        groups: dict[str, list[str]] = {}
        for n in dict.fromkeys(names):
            groups.setdefault(unicodedata.normalize("NFC", n).casefold(), []).append(n)
        return [g for g in groups.values() if len(g) > 1]

    monkeypatch.setattr(dl, "same_name_groups", case_blind)
    out = tmp_path / "mac"
    with pytest.raises(UrlListError, match=r"'Cat' and 'cat': one folder on this file system, which does not tell "
                                           r"upper and lower case apart .*spell each class one way in the list$"):
        download_images([("Cat", cat), ("dog", server.url("/dog.png")), ("cat", cat2)], out, progress=False)
    # A folder made earlier (by hand, or by an earlier list) under the other spelling.
    (out / "Dog").mkdir()
    with pytest.raises(UrlListError, match=r"'dog' and 'Dog' \(a folder there already\).*, or rename the folder$"):
        download_images([("dog", server.url("/dog.png"))], out, progress=False)
    assert server.hits.get("/dog.png", 0) == 0 and list_class_dirs(out) == ["Dog"]
    # The label's own folder, listed in another Unicode form (macOS's HFS+ decomposes accents), is no clash.
    (out / "Raye\u0301").mkdir()
    assert download_images([("Ray\u00e9", server.url("/dog.png"))], out, progress=False).ok == 1


def test_progress_false_prints_nothing(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = download_images([("cat", server.url("/cat.jpg"))], tmp_path, progress=False)
    captured = capsys.readouterr()
    assert report.ok == 1
    assert captured.err == "" and captured.out == ""


def test_progress_bar_shown_by_default(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    download_images([("cat", server.url("/cat.jpg"))], tmp_path)
    assert "download" in capsys.readouterr().err


def test_invalid_arguments_are_rejected(tmp_path: Path) -> None:
    for kwargs in ({"workers": 0}, {"timeout": 0}, {"retries": -1}, {"max_bytes": 0}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            download_images([], tmp_path, progress=False, **kwargs)


def test_write_errors_stop_the_run_instead_of_counting_as_failures(
    server: Server, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "cat").write_text("a file where the class folder should go")
    entries = [("cat", server.url("/cat.jpg")), ("cat", server.url("/cat2.jpg"))]
    with pytest.raises(OSError):
        download_images(entries, out, workers=1, timeout=5, progress=False)
    assert not (out / dl.FAILURES_FILE).exists()


def test_changing_a_urls_label_moves_its_file(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "images"
    cat, cat2 = server.url("/cat.jpg"), server.url("/cat2.jpg")
    download_images([("cat", cat), ("cat", cat2)], out, progress=False)
    # The user fixes the label of the first URL in the list and runs stage 0 again.
    report = download_images([("dog", cat), ("cat", cat2)], out, progress=False)
    assert (report.ok, report.skipped_existing, report.failed) == (0, 2, 0)
    assert report.per_class == {"dog": 1, "cat": 1}
    assert report.moved == [(cat, "cat", "dog")]
    assert _files(out) == {"cat": [_stem(cat2) + ".jpg"], "dog": [_stem(cat) + ".jpg"]}  # in one class only
    assert server.hits["/cat.jpg"] == 1  # moved, not fetched again
    again = download_images([("dog", cat), ("cat", cat2)], out, progress=False)
    assert again.moved == [] and again.skipped_existing == 2


def test_urls_copied_from_a_browser_are_percent_encoded(server: Server, tmp_path: Path) -> None:
    # Address bars show spaces and accented letters; HTTP needs them %-encoded. Existing %XX stay.
    urls = [server.url("/café photo.jpg"), server.url("/100%25 cotton.jpg"), server.url("/cat.jpg?q=tëst ä")]
    report = download_images([("cat", u) for u in urls], tmp_path, retries=0, timeout=5, progress=False)
    assert (report.ok, report.failed) == (3, 0), report.failures
    assert server.hits["/caf%C3%A9%20photo.jpg"] == server.hits["/100%25%20cotton.jpg"] == 1
    # The file name still derives from the URL as listed, so earlier downloads are found again.
    assert _stem(urls[0]) + ".jpg" in _files(tmp_path)["cat"]
    assert dl._encode_url("http://bücher.example:8080/ä b/%41.jpg?x=ü&y=1#frag ment") == (
        "http://xn--bcher-kva.example:8080/%C3%A4%20b/%41.jpg?x=%C3%BC&y=1#frag%20ment")
    assert dl._encode_url(server.url("/cat.jpg?a=1&b=%2F")) == server.url("/cat.jpg?a=1&b=%2F")


def test_one_url_spelt_two_ways_is_one_url(server: Server, tmp_path: Path) -> None:
    # "café photo.jpg" and "caf%C3%A9%20photo.jpg" are one request: fetched once (twice, the same
    # photo was stored in both classes), and under two labels it is the ambiguity it is.
    typed, encoded = server.url("/café photo.jpg"), server.url("/caf%C3%A9%20photo.jpg")
    report = download_images([("cat", typed), ("cat", encoded)], tmp_path / "a", retries=0, timeout=5, progress=False)
    assert (report.ok, report.repeated) == (1, 1) and server.hits["/caf%C3%A9%20photo.jpg"] == 1
    report = download_images([("cat", typed), ("dog", encoded)], tmp_path / "b", retries=0, timeout=5, progress=False)
    assert report.failures == [(typed, "listed under 2 labels (cat, dog): not fetched, since an image can be of one "
                                       "class only; keep the line with the right label")]
    assert server.hits["/caf%C3%A9%20photo.jpg"] == 1


def test_one_url_spelt_another_way_in_the_next_run_is_the_file_on_disk(server: Server, tmp_path: Path) -> None:
    """A list that spelt a URL otherwise in the next run ("café photo.jpg", then "caf%C3%A9%20photo.jpg":
    one request) fetched the photo again and stored it a second time beside the first, and named the
    first as the file of a URL no longer listed."""
    typed, encoded = server.url("/café photo.jpg"), server.url("/caf%C3%A9%20photo.jpg")
    assert download_images([("cat", typed)], tmp_path, retries=0, timeout=5, progress=False).ok == 1
    report = download_images([("cat", encoded)], tmp_path, retries=0, timeout=5, progress=False)
    assert (report.ok, report.skipped_existing, report.unlisted) == (0, 1, [])
    assert server.hits["/caf%C3%A9%20photo.jpg"] == 1 and _files(tmp_path) == {"cat": [f"{_stem(typed)}.jpg"]}
    # The manifest leads from either spelling to the one file.
    rows = [line.split("\t") for line in (tmp_path / dl.MANIFEST_FILE).read_text(encoding="utf-8").splitlines()[1:]]
    assert sorted(rows) == sorted([[typed, "cat", f"cat/{_stem(typed)}.jpg"], [encoded, "cat", f"cat/{_stem(typed)}.jpg"]])


def test_a_url_spelt_otherwise_keeps_the_record_of_its_other_spelling(server: Server, tmp_path: Path) -> None:
    """The manifest's record of a URL fetched under another spelling counts as the URL's: a label changed
    in the list moves the file (it was left in the old class as 'unsure', and the next run then took it
    for a file moved there by hand, so the list's label was lost for good), and a photo deleted by hand
    is not fetched back."""
    typed, encoded = server.url("/café photo.jpg"), server.url("/caf%C3%A9%20photo.jpg")
    assert download_images([("cat", typed)], tmp_path, retries=0, timeout=5, progress=False).ok == 1
    report = download_images([("dog", encoded)], tmp_path, retries=0, timeout=5, progress=False)
    assert report.moved == [(encoded, "cat", "dog")] and report.unsure == []
    assert _files(tmp_path) == {"dog": [f"{_stem(typed)}.jpg"]}
    report = download_images([("dog", encoded)], tmp_path, retries=0, timeout=5, progress=False)
    assert (report.skipped_existing, report.left_by_hand, report.unsure) == (1, [], [])
    # Both spellings' lines say the label now: moved to bird by hand, the file stays there when the
    # list goes back to the first spelling (a stale 'cat' under it read as a label changed in the list).
    rows = [line.split("\t") for line in (tmp_path / dl.MANIFEST_FILE).read_text(encoding="utf-8").splitlines()[1:]]
    assert sorted(r[:2] for r in rows) == sorted([[typed, "dog"], [encoded, "dog"]])
    (tmp_path / "bird").mkdir()
    (tmp_path / "dog" / f"{_stem(typed)}.jpg").rename(tmp_path / "bird" / f"{_stem(typed)}.jpg")
    report = download_images([("dog", typed)], tmp_path, retries=0, timeout=5, progress=False)
    assert report.left_by_hand == [(typed, "bird", "dog")] and report.moved == []
    (tmp_path / "bird" / f"{_stem(typed)}.jpg").rename(tmp_path / "dog" / f"{_stem(typed)}.jpg")
    # Deleted by hand (a bad photo): not fetched again under either spelling.
    (tmp_path / "dog" / f"{_stem(typed)}.jpg").unlink()
    report = download_images([("dog", typed)], tmp_path, retries=0, timeout=5, progress=False)
    assert report.ok == 0 and report.deleted == [typed] and server.hits["/caf%C3%A9%20photo.jpg"] == 1


def test_invalid_urls_are_not_retried(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = Counter()
    fetch_once = dl._fetch_once

    def counting(url, *args):  # type: ignore[no-untyped-def]
        attempts[url] += 1
        return fetch_once(url, *args)

    monkeypatch.setattr(dl, "_fetch_once", counting)
    url = server.base + "abc/cat.jpg"  # port "<n>abc": http.client.InvalidURL
    report = download_images([("cat", url)], tmp_path, retries=2, timeout=5, progress=False)
    assert report.failures[0][1].startswith("invalid URL: nonnumeric port"), report.failures
    assert attempts[url] == 1


def test_truncated_body_is_a_network_error_and_retried(server: Server, tmp_path: Path) -> None:
    entries = [("cat", server.url("/truncated.jpg")), ("cat", server.url("/truncated-once.jpg"))]
    report = download_images(entries, tmp_path, retries=1, timeout=5, progress=False)
    assert report.failures == [(entries[0][1], f"truncated body: {len(JPEG) // 2} of {len(JPEG)} bytes (2 attempts)")]
    assert server.hits["/truncated.jpg"] == 2 and server.hits["/truncated-once.jpg"] == 2
    assert _files(tmp_path) == {"cat": [_stem(entries[1][1]) + ".jpg"]}
    assert (tmp_path / "cat" / (_stem(entries[1][1]) + ".jpg")).read_bytes() == JPEG


def test_a_rerun_leaves_what_the_user_did_by_hand(server: Server, tmp_path: Path) -> None:
    """A file moved to another class folder to fix its label stays there (it was moved back, and
    said "label changed in the URL list"); one sorted into a sub-folder of its class is not fetched
    again; one deleted is not fetched again; one whose URL left the list is named."""
    out = tmp_path / "images"
    cat, cat2, dog = server.url("/cat.jpg"), server.url("/cat2.jpg"), server.url("/dog.png")
    entries = [("cat", cat), ("cat", cat2), ("dog", dog)]
    download_images(entries, out, progress=False)
    assert dl.read_manifest(out) == {cat: "cat", cat2: "cat", dog: "dog"}
    (out / "cat" / f"{_stem(cat)}.jpg").rename(out / "dog" / f"{_stem(cat)}.jpg")  # "that one is a dog"
    (out / "cat" / "batch1").mkdir()
    (out / "cat" / f"{_stem(cat2)}.jpg").rename(out / "cat" / "batch1" / f"{_stem(cat2)}.jpg")
    (out / "dog" / f"{_stem(dog)}.png").unlink()  # "not a usable photo"
    report = download_images(entries, out, progress=False)
    assert (report.ok, report.skipped_existing, report.moved) == (0, 2, [])
    assert report.left_by_hand == [(cat, "dog", "cat")] and report.deleted == [dog]
    assert server.hits["/cat.jpg"] == server.hits["/cat2.jpg"] == server.hits["/dog.png"] == 1
    assert (out / "dog" / f"{_stem(cat)}.jpg").is_file() and (out / "cat" / "batch1" / f"{_stem(cat2)}.jpg").is_file()
    # The list itself relabels cat2 now: that change is followed, from the sub-folder; cat/, emptied
    # (its batch1/ too), goes, or stage 1 would stop at an empty class.
    report = download_images([("cat", cat), ("dog", cat2), ("dog", dog)], out, progress=False)
    assert report.moved == [(cat2, "cat", "dog")] and (out / "dog" / f"{_stem(cat2)}.jpg").is_file()
    assert not (out / "cat").exists()
    # A URL dropped from the list (scrapeImages.py found it for two labels) keeps its file, named.
    report = download_images([("cat", cat)], out, progress=False)
    assert report.unlisted == [out / "dog" / f"{_stem(cat2)}.jpg"]
    # A data set fetched before the manifest existed: a file in another folder than the list says is
    # left (the list may have changed, or the file been moved), and said; nothing is moved.
    manifest = out / dl.MANIFEST_FILE
    saved = manifest.read_text()
    manifest.unlink()
    report = download_images([("cat", cat2)], out, progress=False)
    assert report.unsure == [(cat2, "dog", "cat")] and report.moved == [] and (out / "dog" / f"{_stem(cat2)}.jpg").is_file()
    manifest.write_text(saved)
    # Deleting the manifest's line fetches the deleted image again.
    manifest.write_text("".join(line + "\n" for line in manifest.read_text().splitlines() if dog not in line))
    report = download_images(entries, out, progress=False)
    assert report.ok == 1 and server.hits["/dog.png"] == 2


def test_stage0_expands_tilde_in_urls_file(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / "lists").mkdir(parents=True)
    _write_tsv(home / "lists" / "urls.tsv", [f"cat\t{server.url('/cat.jpg')}", f"dog\t{server.url('/dog.png')}"])
    monkeypatch.setenv("HOME", str(home))
    data_dir = tmp_path / "data"
    for how in (["--set", "urlsFile=~/lists/urls.tsv"], ["--urls", "~/lists/urls.tsv"]):
        proc = run_script("0_downloadData.py", "--set", "datasetName=pets", *how, data_dir=data_dir)
        assert "0 failed" in proc.stdout, proc.stdout
    assert set(_files(data_dir / "images" / "pets")) == {"cat", "dog"}
    assert server.hits["/cat.jpg"] == 1  # the second run found the first one's files
    # Relabelled in the list: stage 0 says it moved the file.
    _write_tsv(home / "lists" / "urls.tsv", [f"dog\t{server.url('/cat.jpg')}", f"dog\t{server.url('/dog.png')}"])
    proc = run_script("0_downloadData.py", "--set", "datasetName=pets", "--urls", "~/lists/urls.tsv", data_dir=data_dir)
    assert "moved 1 image from cat/ to dog/ (label changed in the URL list)" in proc.stdout, proc.stdout
    assert _files(data_dir / "images" / "pets") == {"dog": sorted(  # cat/, emptied, is gone
        [_stem(server.url("/cat.jpg")) + ".jpg", _stem(server.url("/dog.png")) + ".png"])}
    # Moved back by hand, deleted by hand, and dropped from the list: each said once, nothing fetched.
    pets = data_dir / "images" / "pets"
    (pets / "cat").mkdir()
    (pets / "dog" / f"{_stem(server.url('/cat.jpg'))}.jpg").rename(pets / "cat" / f"{_stem(server.url('/cat.jpg'))}.jpg")
    (pets / "dog" / f"{_stem(server.url('/dog.png'))}.png").unlink()
    _write_tsv(home / "lists" / "urls.tsv", [f"dog\t{server.url('/cat.jpg')}", f"dog\t{server.url('/dog.png')}"])
    proc = run_script("0_downloadData.py", "--set", "datasetName=pets", "--urls", "~/lists/urls.tsv", data_dir=data_dir)
    assert ("note: 1 image listed as 'dog' is in cat/: left there (moved by hand to fix a label, or the list changed "
            "since they were fetched); if the list is right, move it to dog/ yourself") in proc.stdout, proc.stdout
    assert "every URL of this label failed" not in proc.stdout
    assert "note: 1 image(s) deleted since an earlier run fetched them: not fetched again" in proc.stdout, proc.stdout
    _write_tsv(home / "lists" / "urls.tsv", [f"dog\t{server.url('/dog.png')}", f"bird\t{server.url('/no-such.jpg')}"])
    proc = run_script("0_downloadData.py", "--set", "datasetName=pets", "--urls", "~/lists/urls.tsv", data_dir=data_dir)
    assert "note: 1 image(s) fetched for URLs no longer in the list" in proc.stdout, proc.stdout
    assert "  bird                      0 image files  <- none: every URL of this label failed" in proc.stdout, proc.stdout
    assert server.hits["/cat.jpg"] == server.hits["/dog.png"] == 1
    # A URL the server said is gone is asked for again only when told to.
    for how, hits in (([], 1), (["--retry-failed"], 2)):
        proc = run_script("0_downloadData.py", "--set", "datasetName=pets", "--urls", "~/lists/urls.tsv", *how,
                          data_dir=data_dir)
        assert server.hits["/no-such.jpg"] == hits and "1 failed" in proc.stdout, proc.stdout
    # A label typed "Dog" beside the folder dog/: two classes; stage 0 says so, before stage 1 would.
    (data_dir / "images" / "pets" / "Dog").mkdir()
    (data_dir / "images" / "pets" / "dog").mkdir(exist_ok=True)
    for folder in ("Dog", "dog"):
        shutil.copy(next((data_dir / "images" / "pets" / "cat").iterdir()), data_dir / "images" / "pets" / folder / "x.jpg")
    proc = run_script("0_downloadData.py", "--set", "datasetName=pets", data_dir=data_dir)
    assert "note: classes 'Dog', 'dog' differ only in letter case: one class split in two?" in proc.stdout, proc.stdout


def test_downloaded_files_reach_only_the_readers_of_the_formats_kept(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file from the internet is as untrusted as an upload: an EPS body must never reach
    Ghostscript, which Pillow's EPS reader runs to decode it."""
    from PIL import EpsImagePlugin

    ran = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: ran.append(a) or Image.new("RGB", (16, 16)))
    report = download_images([("cat", server.url("/ghost.eps"))], tmp_path, timeout=5, progress=False)
    assert report.failures == [(server.url("/ghost.eps"), "unsupported image format (EPS)")]
    assert ran == []


def test_a_malformed_url_is_a_failure_of_its_line_not_of_the_run(server: Server, tmp_path: Path) -> None:
    entries = [("cat", "http://[example.com/a.jpg"), ("cat", server.url("/cat.jpg"))]
    report = download_images(entries, tmp_path, timeout=5, progress=False)
    assert report.ok == 1 and report.failed == 1
    assert report.failures[0][0] == "http://[example.com/a.jpg" and report.failures[0][1].startswith("invalid URL: ")


def test_too_many_pixels_is_named_as_such(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 32x24 JPEG: over twice the limit
    report = download_images([("cat", server.url("/cat.jpg"))], tmp_path, timeout=5, progress=False)
    assert report.failures[0][1].startswith("too many pixels ("), report.failures


def test_images_dedup_set_aside_are_not_fetched_again(server: Server, tmp_path: Path) -> None:
    """dedupImages.py moves duplicates to _duplicates/<class>/; rerunning stage 0 (to retry failed
    URLs, or after scrapeImages.py added some) must not bring them back."""
    out = tmp_path / "images"
    entries = [("cat", server.url("/cat.jpg")), ("dog", server.url("/dog.png"))]
    download_images(entries, out, timeout=5, progress=False)
    cat = next((out / "cat").iterdir())
    (out / "_duplicates" / "cat").mkdir(parents=True)
    cat.rename(out / "_duplicates" / "cat" / f"{cat.stem}_1{cat.suffix}")  # as dedup names it beside a namesake
    again = download_images(entries, out, timeout=5, progress=False)
    assert (again.ok, again.skipped_existing, again.set_aside, again.failed) == (0, 1, 1, 0)
    assert server.hits["/cat.jpg"] == 1 and not list((out / "cat").iterdir())
    assert "1 set aside as duplicates (in _duplicates/, not fetched again)" in again.summary()


def test_a_truncated_image_of_a_kept_format_is_named_damaged(server: Server, tmp_path: Path) -> None:
    """Cut short with a matching Content-Length (a broken upload on the server): not 'unsupported'."""
    report = download_images([("cat", server.url("/half.jpg"))], tmp_path, timeout=5, progress=False)
    assert report.failures[0][1].startswith("damaged JPEG image ("), report.failures


def test_ctrl_c_says_it_is_waiting_and_keeps_what_was_fetched(server: Server, tmp_path: Path) -> None:
    """The first Ctrl-C seemed to do nothing while a silent host kept its request open."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import ROOT, SCRIPTS

    urls = tmp_path / "urls.tsv"
    _write_tsv(urls, [f"cat\t{server.url('/cat.jpg')}", f"cat\t{server.url('/missing.jpg')}", f"cat\t{server.url('/slow.jpg')}"])
    env = {**os.environ, "IMGCLASS_DATA_DIR": str(tmp_path / "data"), "IMGCLASS_OFFLINE": "1", "IMGCLASS_TRACKING": "0"}
    # A test run started in the background (`make test &`, some CI runners) ignores SIGINT, and its
    # children inherit that: start this one as a terminal starts a command, with SIGINT caught.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, str(SCRIPTS / "0_downloadData.py"), "--set", "datasetName=pets",
                                 "--set", "dl_workers=1", "--urls", str(urls)], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 60
    while server.hits["/slow.jpg"] == 0 and time.monotonic() < deadline:  # cat.jpg done, slow.jpg open
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopping: waiting for the 1 download(s) in progress to end" in err, err
    pets = tmp_path / "data" / "images" / "pets"
    assert dl.read_manifest(pets) == {server.url("/cat.jpg"): "cat"}  # what finished is recorded
    # ... failures too (they were lost), and the counts so far are said.
    assert _failures_tsv(pets) == [[server.url("/missing.jpg"), "cat", "HTTP 404"]]
    assert "so far in this run: 1 downloaded, 1 failed (in download_failures.tsv)" in err, err


def test_failures_say_what_went_wrong(server: Server, tmp_path: Path) -> None:
    entries = [("cat", server.url("/loop.jpg")), ("cat", server.url("/empty.jpg")), ("cat", server.url("/nowhere.jpg"))]
    report = download_images(entries, tmp_path, timeout=5, retries=0, progress=False)
    assert report.failures == [(entries[0][1], "HTTP 302: a redirect loop, or more than 10 redirects"),
                               (entries[1][1], "empty reply (0 bytes)"),
                               (entries[2][1], "HTTP 302: a redirect without a Location to follow")]


def test_the_manifest_leads_from_a_file_back_to_its_url(server: Server, tmp_path: Path) -> None:
    """Files are named by a hash of their URL: the manifest's third column is how a suspect image (or
    one whose licence must be checked) leads back to where it came from."""
    cat, dog = server.url("/cat.jpg"), server.url("/dog.png")
    download_images([("cat", cat), ("dog", dog)], tmp_path, progress=False)
    rows = [line.split("\t") for line in (tmp_path / dl.MANIFEST_FILE).read_text().splitlines()[1:]]
    assert sorted(rows) == sorted([[cat, "cat", f"cat/{_stem(cat)}.jpg"], [dog, "dog", f"dog/{_stem(dog)}.png"]])
    assert dl.read_manifest(tmp_path) == {cat: "cat", dog: "dog"}
    # A manifest of the earlier two columns still reads.
    (tmp_path / dl.MANIFEST_FILE).write_text(f"# url<TAB>label\n{cat}\tcat\n")
    assert dl.read_manifest(tmp_path) == {cat: "cat"}


@pytest.mark.parametrize("breaker", ["\x0c", "\u2028"])
def test_a_url_holding_a_character_splitlines_breaks_at_stays_one_manifest_line(
        server: Server, tmp_path: Path, breaker: str) -> None:
    """The manifest keeps a form feed or U+2028 in a URL as written; read back with splitlines(), the
    line fell apart and each rerun wrote a bogus entry ('b\tcat\t') into the manifest."""
    url = server.url(f"/cat.jpg?v=a{breaker}b")
    for _ in range(2):
        download_images([("cat", url)], tmp_path, progress=False)
    assert dl.read_manifest(tmp_path) == {url: "cat"}
    assert len((tmp_path / dl.MANIFEST_FILE).read_bytes().split(b"\n")) == 3  # comment, the URL's line, ""


@pytest.mark.parametrize("name", [dl.MANIFEST_FILE, dl.FAILURES_FILE])
def test_a_manifest_or_failures_file_saved_in_another_encoding_names_the_file(
        server: Server, tmp_path: Path, name: str) -> None:
    """The manifest invites editing ("delete a line to fetch its URL again"): saved as Latin-1, stage 0
    said only "'utf-8' codec can't decode byte 0xe9 in position 62"."""
    (tmp_path / name).write_bytes(b"url\tlabel\treason\nhttp://x/caf\xe9.jpg\tcat\tHTTP 404\n")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / name}, line 2: not valid UTF-8 text")):
        download_images([("cat", server.url("/cat.jpg"))], tmp_path, progress=False)
    # A byte-order mark, and the byte at a line's start: the mark's three bytes are not in the decoder's
    # offset, and counting the file's own bytes up to it missed the newline just before (line 1).
    (tmp_path / name).write_bytes(b"\xef\xbb\xbfurl\tlabel\treason\n\xe9x.jpg\tcat\tHTTP 404\n")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / name}, line 2: not valid UTF-8 text")):
        download_images([("cat", server.url("/cat.jpg"))], tmp_path, progress=False)


def test_a_tracking_pixel_is_refused_as_too_small(server: Server, tmp_path: Path) -> None:
    report = download_images([("cat", server.url("/pixel.gif")), ("cat", server.url("/cat.jpg"))], tmp_path,
                             timeout=5, progress=False)
    assert report.ok == 1
    assert report.failures == [(server.url("/pixel.gif"), "too small (1x1 pixels): a placeholder, not a photo")]


def test_a_fix_made_by_hand_follows_its_image_when_the_list_relabels_it(server: Server, tmp_path: Path) -> None:
    """An image excluded in the notebook, then relabelled in the URL list: stage 0 moves the file,
    and the EXCLUDE moved with it (it pointed at the old path, and the image came back into training)."""
    from imgclass.annotations import read_fixes, write_fixes

    out = tmp_path / "images"
    cat, dog = server.url("/cat.jpg"), server.url("/dog.png")
    download_images([("cat", cat), ("dog", dog)], out, workers=1, progress=False)
    write_fixes(out, {f"cat/{_stem(cat)}.jpg": "EXCLUDE", f"dog/{_stem(dog)}.png": "cat"})
    report = download_images([("dog", cat), ("cat", dog)], out, workers=1, progress=False)
    assert len(report.moved) == 2 and report.fixes_moved == 2
    # The EXCLUDE follows its image; the relabel to 'cat' is what the folder says now, so it goes.
    assert read_fixes(out) == {f"dog/{_stem(cat)}.jpg": "EXCLUDE"}
    assert any("2 of the moved images had a fix in annotations_fixes.tsv" in line for line in report.notes(out))


def test_the_moves_made_before_one_that_fails_take_their_fixes_and_leave_no_empty_folder(
        server: Server, tmp_path: Path) -> None:
    """Two labels renamed in the list (cats -> cat, dogs -> dog), the second file's move failing (here a
    folder in its way; a class folder the user cannot write does the same): the first file had moved
    already, so no later run moves it again, and its EXCLUDE pointed at a path that was gone (the image
    back in training) and its emptied folder stayed, an empty class for stage 1."""
    from imgclass.annotations import read_fixes, write_fixes

    out = tmp_path / "images"
    cat, dog = server.url("/cat.jpg"), server.url("/dog.png")
    download_images([("cats", cat), ("dogs", dog)], out, workers=1, progress=False)
    write_fixes(out, {f"cats/{_stem(cat)}.jpg": "EXCLUDE"})
    (out / "dog" / f"{_stem(dog)}.png").mkdir(parents=True)
    with pytest.raises(OSError):
        download_images([("cat", cat), ("dog", dog)], out, workers=1, progress=False)
    assert (out / "cat" / f"{_stem(cat)}.jpg").is_file()
    assert read_fixes(out) == {f"cat/{_stem(cat)}.jpg": "EXCLUDE"}
    assert not (out / "cats").exists()


def test_a_fixes_file_it_cannot_read_stops_the_run_before_any_file_is_moved(server: Server, tmp_path: Path) -> None:
    """The fixes file was read after the moves: a line it could not read stopped the run with the files
    moved already, and once the line was corrected the next run found them in place, moved nothing, and
    the EXCLUDE of one stayed at its old path (the image back in training)."""
    from imgclass.annotations import FIXES_FILE, AnnotationError, read_fixes

    out = tmp_path / "images"
    cat = server.url("/cat.jpg")
    download_images([("cats", cat)], out, workers=1, progress=False)
    excluded = f"cats/{_stem(cat)}.jpg\tEXCLUDE\n"
    (out / FIXES_FILE).write_text(excluded + "cats/other.jpg EXCLUDE\n", encoding="utf-8")  # a space for the tab
    with pytest.raises(AnnotationError, match="line 2"):
        download_images([("cat", cat)], out, workers=1, progress=False)
    assert (out / "cats" / f"{_stem(cat)}.jpg").is_file()  # nothing moved
    (out / FIXES_FILE).write_text(excluded, encoding="utf-8")  # the line named, corrected
    report = download_images([("cat", cat)], out, workers=1, progress=False)
    assert report.fixes_moved == 1 and read_fixes(out) == {f"cat/{_stem(cat)}.jpg": "EXCLUDE"}


def test_the_moves_made_before_one_that_fails_are_in_the_manifest(server: Server, tmp_path: Path) -> None:
    """The second move failing after the first (cats -> cat) was made: the manifest still said cats for
    the file in cat/, so a next run whose list said cats again (the relabel undone) took the file for
    one moved by hand and left it in cat/, the class the list no longer gives it."""
    out = tmp_path / "images"
    cat, dog = server.url("/cat.jpg"), server.url("/dog.png")
    download_images([("cats", cat), ("dogs", dog)], out, workers=1, progress=False)
    (out / "dog" / f"{_stem(dog)}.png").mkdir(parents=True)
    with pytest.raises(OSError):
        download_images([("cat", cat), ("dog", dog)], out, workers=1, progress=False)
    assert dl.read_manifest(out) == {cat: "cat", dog: "dogs"}
    assert f"\tcat/{_stem(cat)}.jpg\n" in (out / dl.MANIFEST_FILE).read_text(encoding="utf-8")
    shutil.rmtree(out / "dog")
    report = download_images([("cats", cat), ("dogs", dog)], out, workers=1, progress=False)
    assert report.moved == [(cat, "cat", "cats")] and not report.left_by_hand
    assert (out / "cats" / f"{_stem(cat)}.jpg").is_file()


def test_a_compressed_reply_is_unpacked_within_the_size_limit(server: Server, tmp_path: Path) -> None:
    # Some servers compress every reply, asked or not: the image read as "not an image".
    urls = [server.url(p) for p in ("/gzipped.jpg", "/deflated.png", "/gzip-bomb.jpg", "/brotli.jpg")]
    report = download_images([("cat", u) for u in urls], tmp_path, retries=0, timeout=5, max_bytes=1_000_000,
                             progress=False)
    assert report.ok == 2 and sorted(Path(f).suffix for f in _files(tmp_path)["cat"]) == [".jpg", ".png"]
    assert dict(report.failures) == {
        urls[2]: "too large (over the limit of 1000000 bytes unpacked: dl_maxBytes)",  # 2 KB that unpack to 2 MB
        urls[3]: "sent with Content-Encoding br, which this download cannot undo"}


def test_a_compressed_reply_cut_short_is_damaged_data_and_retried(server: Server, tmp_path: Path) -> None:
    """zlib unpacks a cut stream without a word: its first half was kept as the image, named a damaged
    JPEG and not retried, while what was damaged was the compressed reply."""
    url = server.url("/gzip-cut.jpg")
    report = download_images([("cat", url)], tmp_path, retries=1, timeout=5, progress=False)
    assert report.failures == [(url, "damaged gzip data (Content-Encoding): the compressed data ends early "
                                     "(2 attempts)")]
    assert server.hits["/gzip-cut.jpg"] == 2


def test_a_size_limit_past_what_zlib_takes_is_no_limit_on_a_compressed_reply(server: Server, tmp_path: Path) -> None:
    """dl_maxBytes = 10**19 (a "no limit" the parameters accept) ended the run in an OverflowError
    traceback from zlib at the first compressed reply."""
    report = download_images([("cat", server.url("/gzipped.jpg"))], tmp_path, retries=0, timeout=5,
                             max_bytes=10**19, progress=False)
    assert report.ok == 1 and report.failures == []
