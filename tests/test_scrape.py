"""imgclass.scrape against a fake search service on 127.0.0.1 that answers like the real APIs.

The fake serves a Bing Image Search v7 endpoint (value[].contentUrl, nextOffset,
totalEstimatedMatches; key in Ocp-Apim-Subscription-Key) and Openverse's /v1/images/ (results[],
page_count), with pagination, a query that always fails with HTTP 500, a query throttled once with
429 + Retry-After, one throttled for an hour, queries of two labels returning the same image, and
the images themselves, so the URL list can be downloaded by stage 0.
"""

from __future__ import annotations

import io
import json
import math
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_script
import imgclass.scrape
from imgclass.download import read_url_list
from imgclass.scrape import (
    BingImageSearch,
    OpenverseImageSearch,
    SearchError,
    build_queries,
    read_state,
    read_url_rows,
    scrape,
    scrape_to_file,
    state_path,
)

KEY = "good-key"
TOTAL = {"default": 45}  # results each query has on the fake service
BING_PAGE_CAP = 4  # like the real API, the fake may return fewer than `count` per page


def _jpeg(n: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 20), ((n * 37) % 256, (n * 91) % 256, 128)).save(buf, "JPEG")
    return buf.getvalue()


class Fake:
    def __init__(self) -> None:
        self.hits: Counter = Counter()  # (path, q) -> requests
        self.lock = threading.Lock()
        self.base = ""

    def url(self, path: str) -> str:
        return self.base + path


def _items(q: str) -> list[str]:
    slug = urllib.parse.quote(q.replace(" ", "-"))
    items = [f"/img/{slug}-{i}.jpg" for i in range(TOTAL.get(q, TOTAL["default"]))]
    if q.endswith("twinset"):  # every "<attribute> twinset" query returns this image first
        items.insert(0, "/img/twinset-common.jpg")
    return items


def _handler(fake: Fake) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _json(self, status: int, obj: object, **headers: str) -> None:
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                self.send_header(k.replace("_", "-"), v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            qs = dict(urllib.parse.parse_qsl(parts.query))
            q = qs.get("q", "")
            with fake.lock:
                fake.hits[(parts.path, q)] += 1
                n = fake.hits[(parts.path, q)]
            if parts.path.startswith("/img/"):
                body = _jpeg(sum(parts.path.encode()))
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if q.startswith("broken"):
                return self._json(500, {"detail": "internal error"})
            if q.startswith("cutoff") and n == 1:  # the reply ends before its Content-Length: IncompleteRead
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b'{"results": [')
                return
            if q.startswith("throttled") and n == 1:
                return self._json(429, {"detail": "Request was throttled."}, Retry_After="1")
            if q.startswith("slowdown"):
                return self._json(429, {"detail": "Request was throttled."}, Retry_After="3600")
            if q.startswith("nourls"):  # an odd "compatible" service: results without URLs, no page count
                if parts.path == "/bing/v7.0/images/search":
                    return self._json(200, {"value": [{"name": "x"}] * 4, "nextOffset": int(qs["offset"]) + 4})
                return self._json(200, {"results": [{"title": "x"}] * 20})
            items = _items(q)
            if parts.path == "/bing/v7.0/images/search":
                if self.headers.get("Ocp-Apim-Subscription-Key") != KEY:
                    return self._json(401, {"error": {"code": "401", "message": "Access denied due to invalid subscription key."}})
                offset, count = int(qs["offset"]), min(int(qs["count"]), BING_PAGE_CAP)
                page = items[offset:offset + count]
                return self._json(200, {
                    "_type": "Images", "totalEstimatedMatches": len(items), "nextOffset": offset + len(page),
                    "value": [{"contentUrl": fake.url(p), "hostPageUrl": fake.url("/page" + p), "name": p,
                               "encodingFormat": "jpeg"} for p in page],
                })
            if parts.path == "/v1/images/":
                page_no, size = int(qs["page"]), int(qs["page_size"])
                if size > 20:
                    return self._json(401, {"detail": "Authentication credentials were not provided."})
                page_count = math.ceil(len(items) / size)
                if page_no > page_count:
                    return self._json(400, {"detail": "Invalid page."})
                page = items[(page_no - 1) * size:page_no * size]
                return self._json(200, {
                    "result_count": len(items), "page_count": page_count, "page_size": size, "page": page_no,
                    "results": [{"id": str(i), "title": p, "url": fake.url(p), "creator": "Ann Smith",
                                 "license": "by-sa", "license_version": "4.0",
                                 "foreign_landing_url": fake.url("/landing" + p)} for i, p in enumerate(page)],
                })
            self._json(404, {"detail": "Not found."})

    return Handler


@pytest.fixture(autouse=True)
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    """No polite pause between requests to the fake: tests that measure the pause set it."""
    monkeypatch.setattr(imgclass.scrape, "DEFAULT_PAUSE_SEC", 0.0)


@pytest.fixture(scope="module")
def fake() -> Iterator[Fake]:
    state = Fake()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def test_build_queries_combines_every_item_with_every_attribute() -> None:
    qs = build_queries(["blouse", "t-shirt", "vest"], ["striped", "dotted"])
    assert [q.text for q in qs] == ["striped blouse", "striped t-shirt", "striped vest",
                                    "dotted blouse", "dotted t-shirt", "dotted vest"]
    assert [q.label for q in qs] == ["striped"] * 3 + ["dotted"] * 3
    with pytest.raises(ValueError, match="cannot be a class folder"):
        build_queries(["blouse"], ["a/b"])
    with pytest.raises(ValueError, match="at least one item"):
        build_queries([], ["striped"])


def test_openverse_pages_until_enough_or_no_more(fake: Fake) -> None:
    ov = OpenverseImageSearch(endpoint=fake.url("/v1/images/"))
    hits = ov.search("dotted vest", 25)  # 2 pages of 20
    assert [h.url for h in hits] == [fake.url(p) for p in _items("dotted vest")[:25]]
    assert fake.hits[("/v1/images/", "dotted vest")] == 2
    assert hits[0].license == "by-sa 4.0" and hits[0].creator == "Ann Smith"
    assert hits[0].source == fake.url("/landing" + _items("dotted vest")[0])
    # More asked than exist: stops at page_count instead of asking for page 4 (which is an error).
    all_hits = ov.search("leopard shirt", 100)
    assert len(all_hits) == 45 and fake.hits[("/v1/images/", "leopard shirt")] == 3


def test_pages_without_a_usable_result_end_the_search(fake: Fake) -> None:
    # Such a service, asked page after page, kept the scraper going forever (21,403 requests in 20 s).
    assert OpenverseImageSearch(endpoint=fake.url("/v1/images/")).search("nourls vest", 50) == []
    assert BingImageSearch(key=KEY, endpoint=fake.url("/bing/")).search("nourls vest", 50) == []
    assert fake.hits[("/v1/images/", "nourls vest")] == 1 and fake.hits[("/bing/v7.0/images/search", "nourls vest")] == 1


def test_openverse_endpoint_may_be_the_site_root(fake: Fake) -> None:
    assert OpenverseImageSearch(endpoint=fake.base).search("striped hoodie", 3)[2].url.endswith("striped-hoodie-2.jpg")


def test_bing_pages_by_offset_and_sends_the_key(fake: Fake) -> None:
    bing = BingImageSearch(key=KEY, endpoint=fake.url("/bing/"))  # resource endpoint: path appended
    hits = bing.search("striped blouse", 10)
    assert [h.url for h in hits] == [fake.url(p) for p in _items("striped blouse")[:10]]
    assert fake.hits[("/bing/v7.0/images/search", "striped blouse")] == 3  # 4 + 4 + 2
    assert hits[0].source == fake.url("/page" + _items("striped blouse")[0])


def test_bing_wrong_key_missing_key_and_missing_endpoint(fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SearchError, match="invalid subscription key") as e:
        BingImageSearch(key="wrong", endpoint=fake.url("/bing/v7.0/images/search")).search("dotted blouse", 5)
    assert e.value.fatal
    monkeypatch.delenv("BING_SEARCH_V7_SUBSCRIPTION_KEY", raising=False)
    with pytest.raises(SearchError, match="BING_SEARCH_V7_SUBSCRIPTION_KEY"):
        BingImageSearch(endpoint=fake.url("/bing/"))
    monkeypatch.delenv("BING_SEARCH_V7_ENDPOINT", raising=False)
    with pytest.raises(SearchError, match="retired in 2025"):
        BingImageSearch(key=KEY)


def test_throttling_waits_for_retry_after_then_succeeds(fake: Fake) -> None:
    ov = OpenverseImageSearch(endpoint=fake.url("/v1/images/"))
    t0 = time.monotonic()
    hits = ov.search("throttled vest", 5)
    assert len(hits) == 5 and fake.hits[("/v1/images/", "throttled vest")] == 2
    assert time.monotonic() - t0 >= 0.9  # honoured Retry-After: 1
    # A long Retry-After is not slept through: the run stops with a clear message at once.
    t0 = time.monotonic()
    with pytest.raises(SearchError, match="throttling.*3600 s") as e:
        ov.search("slowdown vest", 5)
    # Under 60 s, not 3600: a bound with room for a loaded machine (5 s was once exceeded, 5.03 s, in a
    # full run on 2 busy cores, where alone it takes milliseconds).
    assert e.value.fatal and time.monotonic() - t0 < 60


def test_a_reply_cut_off_is_retried(fake: Fake) -> None:
    hits = OpenverseImageSearch(endpoint=fake.url("/v1/images/")).search("cutoff vest", 5)
    assert len(hits) == 5 and fake.hits[("/v1/images/", "cutoff vest")] == 2


def test_scrape_keeps_going_after_a_failing_query_and_drops_repeats(fake: Fake) -> None:
    ov = OpenverseImageSearch(endpoint=fake.url("/v1/images/"), retries=1)
    queries = build_queries(["vest", "blouse"], ["broken", "dotted"]) + build_queries(["vest"], ["dotted"])
    report = scrape(queries, ov, 5, progress=False)
    assert [q for q, _ in report.failures] == ["broken vest", "broken blouse"]
    assert "HTTP 500" in report.failures[0][1] and "internal error" in report.failures[0][1]
    assert fake.hits[("/v1/images/", "broken vest")] == 2  # one retry after a 5xx
    assert len(report.rows) == 10 and report.repeated == 5  # "dotted vest" asked twice
    assert {r[0] for r in report.rows} == {"dotted"} and not report.stopped


def test_scrape_stops_at_a_fatal_error_keeping_what_it_found(fake: Fake) -> None:
    bing = BingImageSearch(key=KEY, endpoint=fake.url("/bing/"))
    report = scrape(build_queries(["coat"], ["dotted", "slowdown", "striped"]), bing, 3, progress=False)
    assert len(report.rows) == 3 and "throttling" in report.stopped
    assert fake.hits[("/bing/v7.0/images/search", "striped coat")] == 0  # not asked after the stop
    assert list(report.per_query) == ["dotted coat"]


def test_script_writes_a_list_that_stage0_downloads(fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENVERSE_ENDPOINT", fake.url("/v1/images/"))
    args = ["--set", "datasetName=scraped", "--set", "scrape_items=['hoodie','vest']",
            "--set", "scrape_attributes=['striped','leopard']", "--set", "scrape_resultsPerQuery=3",
            "--set", "scrape_pauseSec=0"]
    out = run_script("scrapeImages.py", *args, data_dir=tmp_path).stdout
    tsv = tmp_path / "proc" / "scraped" / "search_urls.tsv"
    assert f"wrote {tsv}" in out and "4 queries" in out
    lines = tsv.read_text().splitlines()
    assert lines[0].split("\t") == ["label", "url", "source", "license", "creator", "query"]
    assert lines[1].split("\t")[3:] == ["by-sa 4.0", "Ann Smith", "striped hoodie"]
    entries = read_url_list(tsv)
    assert len(entries) == 12 and {label for label, _ in entries} == {"striped", "leopard"}
    run_script("0_downloadData.py", *args, "--urls", str(tsv), data_dir=tmp_path)
    images = tmp_path / "images" / "scraped"
    assert len(list((images / "striped").glob("*.jpg"))) == 6 and len(list((images / "leopard").glob("*.jpg"))) == 6


def test_script_says_a_failed_query_is_asked_again_by_a_rerun(fake: Fake, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENVERSE_ENDPOINT", fake.url("/v1/images/"))
    args = ["--set", "datasetName=scraped", "--set", "scrape_items=['vest']", "--set", "scrape_resultsPerQuery=1",
            "--set", "scrape_attributes=['striped','broken']", "--set", "scrape_pauseSec=0"]
    out = run_script("scrapeImages.py", *args, data_dir=tmp_path).stdout
    assert "query 'broken vest' failed: " in out and "rerun this script later to retry the 1 failed query" in out, out
    assert "  striped                   1 URL\n" in out and "\n1 URL (0 hits of a URL listed already" in out
    asked = fake.hits[("/v1/images/", "broken vest")], fake.hits[("/v1/images/", "striped vest")]
    run_script("scrapeImages.py", *args, data_dir=tmp_path)
    assert fake.hits[("/v1/images/", "broken vest")] > asked[0]  # asked again, as said
    assert fake.hits[("/v1/images/", "striped vest")] == asked[1]  # answered: not asked again


def test_script_refuses_an_out_that_is_a_folder_before_asking_anything(fake: Fake, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """--out naming a folder (as a hurried user types it) was found out only when the first answer was
    saved, after the queries were asked (and paused between)."""
    monkeypatch.setenv("OPENVERSE_ENDPOINT", fake.url("/v1/images/"))
    folder = tmp_path / "lists"
    folder.mkdir()
    proc = run_script("scrapeImages.py", "--set", "scrape_items=['lists_vest']", "--set", "scrape_attributes=['striped']",
                      "--set", "scrape_pauseSec=0", "--out", str(folder), data_dir=tmp_path, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"--out {folder}: a folder" in proc.stderr, proc.stderr
    assert fake.hits[("/v1/images/", "striped lists_vest")] == 0 and list(folder.iterdir()) == []


@pytest.mark.parametrize("env, args, message", [
    ({}, ["--set", "scrape_provider=bing"], "no Bing Image Search key: set BING_SEARCH_V7_SUBSCRIPTION_KEY"),
    ({"BING_SEARCH_V7_SUBSCRIPTION_KEY": KEY}, ["--set", "scrape_provider=bing"], "no Bing Image Search endpoint"),
    ({"OPENVERSE_ENDPOINT": "http://127.0.0.1:9/v1/images/"}, [], "cannot reach Openverse at http://127.0.0.1:9"),
])
def test_script_explains_missing_key_and_unreachable_service(
    env: dict, args: list, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("BING_SEARCH_V7_SUBSCRIPTION_KEY", "BING_SEARCH_V7_ENDPOINT", "OPENVERSE_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    proc = run_script("scrapeImages.py", *args, data_dir=tmp_path, check=False)
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "proc").exists() or not list((tmp_path / "proc").rglob("*.tsv"))


def test_requests_are_spaced_by_a_polite_pause(fake: Fake) -> None:
    slept: list[float] = []
    ov = OpenverseImageSearch(endpoint=fake.url("/v1/images/"), pause=0.5, sleep=slept.append)
    assert len(ov.search("dotted cape", 45)) == 45 and fake.hits[("/v1/images/", "dotted cape")] == 3
    assert len(slept) == 2 and all(0.3 < t <= 0.5 for t in slept)  # before the 2nd and 3rd page, not the 1st
    with pytest.raises(ValueError, match="pause = -1"):
        OpenverseImageSearch(endpoint=fake.url("/v1/images/"), pause=-1)


def test_a_connect_timeout_is_retried_then_fatal(fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    real = urllib.request.urlopen
    calls: list[str] = []

    def times_out_first(request: urllib.request.Request, timeout: float) -> object:
        calls.append(request.full_url)
        if len(calls) == 1 or "never" in request.full_url:  # what urlopen raises for a connect timeout
            raise urllib.error.URLError(TimeoutError("timed out"))
        return real(request, timeout=timeout)

    monkeypatch.setattr(urllib.request, "urlopen", times_out_first)
    slept: list[float] = []
    ov = OpenverseImageSearch(endpoint=fake.url("/v1/images/"), sleep=slept.append)
    assert len(ov.search("striped cape", 5)) == 5 and len(calls) == 2 and slept == [0.5]
    calls.clear()
    with pytest.raises(SearchError, match="cannot reach Openverse.*timed out") as e:
        ov.search("never answered", 5)
    assert e.value.fatal and len(calls) == 3  # the default 2 retries, then the run stops


def test_a_url_returned_for_two_labels_is_dropped_as_ambiguous(fake: Fake, tmp_path: Path) -> None:
    ov = OpenverseImageSearch(endpoint=fake.url("/v1/images/"))
    common = fake.url("/img/twinset-common.jpg")
    queries = build_queries(["twinset"], ["striped", "dotted"]) + build_queries(["twinset"], ["striped"])
    report = scrape(queries, ov, 3, progress=False)
    assert report.ambiguous == {common} and common not in {r[1] for r in report.rows}
    assert len(report.rows) == 4  # 2 striped + 2 dotted
    assert report.repeated == 2  # only the same-label repeats of the second "striped twinset"
    # Across runs too: a URL listed as striped and then returned for dotted leaves the list.
    out = tmp_path / "urls.tsv"
    first, _ = scrape_to_file(out, build_queries(["twinset"], ["striped"]), ov, 3, progress=False)
    assert common in {r[1] for r in first.rows}
    second, note = scrape_to_file(out, build_queries(["twinset"], ["striped", "dotted"]), ov, 3, progress=False)
    assert second.skipped == ["striped twinset"] and note == ""
    assert (first.previous_dropped, second.previous, second.previous_dropped) == (0, 3, 1)  # said by the script
    assert common not in {url for _, url in read_url_list(out)} and len(read_url_list(out)) == 4
    assert json.loads(state_path(out).read_text())["ambiguous"] == [common]
    # Another count per query: the recorded queries no longer say what was asked, so all are asked again.
    third, note = scrape_to_file(out, build_queries(["twinset"], ["striped", "dotted"]), ov, 4, progress=False)
    assert not third.skipped and "asking every query again" in note and third.repeated == 4


def test_a_stopped_run_never_shrinks_the_list_and_a_rerun_skips_answered_queries(
    fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENVERSE_ENDPOINT", fake.url("/v1/images/"))
    args = ["--set", "datasetName=resumed", "--set", "scrape_items=['poncho','cardigan']",
            "--set", "scrape_resultsPerQuery=3", "--set", "scrape_pauseSec=0"]
    tsv = tmp_path / "proc" / "resumed" / "search_urls.tsv"
    run_script("scrapeImages.py", *args, "--set", "scrape_attributes=['striped','leopard']", data_dir=tmp_path)
    assert len(read_url_list(tsv)) == 12
    # Rerun with a new class; the service then throttles for an hour ("slowdown" queries).
    proc = run_script("scrapeImages.py", *args, "--set", "scrape_attributes=['striped','dotted','slowdown','leopard']",
                      data_dir=tmp_path, check=False)
    assert proc.returncode == 1 and "throttling" in proc.stderr and "2 queries not yet answered" in proc.stderr
    assert "4 of 8 queries answered by an earlier run" in proc.stdout
    entries = read_url_list(tsv)
    assert len(entries) == 18 and Counter(label for label, _ in entries) == {"striped": 6, "leopard": 6, "dotted": 6}
    assert fake.hits[("/v1/images/", "striped poncho")] == 1  # answered by the first run: not asked again
    assert fake.hits[("/v1/images/", "leopard cardigan")] == 1
    # Throttling over: the rerun asks only what is left, and the list is complete.
    proc = run_script("scrapeImages.py", *args, "--set", "scrape_attributes=['striped','dotted','leopard']", data_dir=tmp_path)
    assert "every query was answered by an earlier run" in proc.stdout and len(read_url_list(tsv)) == 18
    assert fake.hits[("/v1/images/", "dotted poncho")] == 1


def test_a_damaged_list_or_state_file_is_named(tmp_path: Path) -> None:
    """A list the scraper would merge into must be one it can read: a bad line stops the run, naming
    the file and line; an unreadable state file only means asking every query again."""
    out = tmp_path / "urls.tsv"
    out.write_text("\ufefflabel\turl\nstriped\thttp://a/1.jpg\nnot a row\n", encoding="utf-8")
    with pytest.raises(SearchError, match=r"urls\.tsv, line 3: expected 'label<TAB>url<TAB>\.\.\.', got 'not a row'; "
                                          r"move the file away to start a new list"):
        read_url_rows(out)
    out.write_text("label\turl\nstriped\thttp://a/1.jpg\n", encoding="utf-8")
    assert read_url_rows(out) == [("striped", "http://a/1.jpg", "", "", "", "")]  # padded to TSV_COLUMNS
    # Saved from a Windows editor in cp1252: named like any other damage, not a UnicodeDecodeError.
    out.write_bytes("label\turl\ncaf\u00e9\thttp://a/1.jpg\n".encode("cp1252"))
    with pytest.raises(SearchError, match=r"urls\.tsv, line 2: not valid UTF-8 text"):
        read_url_rows(out)
    out.write_bytes(b"label\turl\rstriped\thttp://a/1.jpg\rdotted\thttp://a/2.jpg\r")  # old Mac line ends
    assert [r[:2] for r in read_url_rows(out)] == [("striped", "http://a/1.jpg"), ("dotted", "http://a/2.jpg")]
    state = state_path(out)
    state.write_text("[1, 2]", encoding="utf-8")
    done, ambiguous, note = read_state(state, "openverse", 20)
    assert (done, ambiguous) == ([], []) and note == f"{state} is not a state file this script writes; asking every query again"



def test_a_wrong_endpoint_stops_at_the_first_query_and_says_so(fake: Fake, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP 404 for every query was a failure per query, 'rerun later to retry': no rerun could help."""
    monkeypatch.setenv("OPENVERSE_ENDPOINT", fake.url("/v2/no/such/path/"))
    proc = run_script("scrapeImages.py", "--set", "datasetName=wrongEndpoint", "--set", "scrape_items=['poncho']",
                      "--set", "scrape_attributes=['striped','dotted','leopard']", "--set", "scrape_pauseSec=0",
                      data_dir=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "HTTP 404: Not found. for " in proc.stderr and "is it the right endpoint?" in proc.stderr, proc.stderr
    assert "rerun this script later" not in proc.stdout
    assert sum(n for (path, _), n in fake.hits.items() if path.startswith("/v2/")) == 1  # stopped at once
