"""Progress bars: live in a terminal, a redraw every 30 s in a log file or pipe."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import types

import pytest

LOOP = "import time; from {module} import {name} as bar\nfor _ in bar(range(40), desc='work'): time.sleep(0.05)"


def _draws(module: str, name: str, env: dict[str, str] | None = None, terminal: bool = False) -> list[str]:
    """The redraws of a 2-second loop's bar, as its stderr received them."""
    env = {**{k: v for k, v in os.environ.items() if k != "TQDM_MININTERVAL"}, **(env or {})}
    code = LOOP.format(module=module, name=name)
    if not terminal:
        err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stderr
    else:
        import fcntl
        import pty
        import struct
        import termios

        main, side = pty.openpty()
        # 120 columns: in a terminal of width 0 (a bare pseudo-terminal's) tqdm draws nothing at all.
        fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
        proc = subprocess.Popen([sys.executable, "-c", code], stderr=side, env=env)
        os.close(side)
        chunks = []
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=60) == 0
        os.close(main)
        err = b"".join(chunks).decode(errors="replace")
    return [d for d in err.replace("\n", "\r").split("\r") if "work" in d]


def test_a_bar_written_to_a_log_is_redrawn_rarely_and_ends_complete() -> None:
    plain = _draws("tqdm.auto", "tqdm")
    assert len(plain) >= 10  # tqdm itself: a redraw every 0.1 s, each one more "line" in the log
    ours = _draws("imgclass.progress", "progress_bar")
    assert 1 <= len(ours) <= 3 and "40/40" in ours[-1], ours


def test_a_jupyter_package_imported_outside_a_kernel_is_no_notebook(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test suite imports ipykernel (the notebook tests); the bars there still write to a log.
    from imgclass.progress import LOG_INTERVAL_S, progress_bar

    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    with progress_bar(range(3), file=io.StringIO()) as bar:
        assert bar.mininterval == LOG_INTERVAL_S


def test_in_a_jupyter_kernel_the_bar_is_tqdms_widget() -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    code = ("from imgclass.progress import progress_bar, _writes_to_a_log\n"
            "for _ in progress_bar(range(3), desc='work'): pass\n"
            "print('to a log:', _writes_to_a_log(None))")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    outputs = nb.cells[0].outputs
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs), outputs
    assert any(o.get("text", "").strip() == "to a log: False" for o in outputs), outputs


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_a_terminal_still_gets_a_live_bar() -> None:
    assert len(_draws("imgclass.progress", "progress_bar", terminal=True)) >= 10


def test_tqdm_mininterval_in_the_environment_wins() -> None:
    assert len(_draws("imgclass.progress", "progress_bar", env={"TQDM_MININTERVAL": "0.1"})) >= 10


SWALLOWED = """
import signal
from imgclass.cli import run_stage
from imgclass.progress import progress_bar


class Collected:
    def __del__(self) -> None:  # Ctrl-C arriving in a garbage collector's callback: Python swallows it
        signal.raise_signal(signal.SIGINT)


def main() -> int:
    for i in progress_bar(range(5), disable=True):
        if i == 1:
            Collected()
        print("step", i, flush=True)
    print("finished")
    return 0


run_stage(main)
"""


def test_a_ctrl_c_python_swallows_still_stops_the_stage() -> None:
    """A refinement ran to its end once after Ctrl-C ("Exception ignored in: ... KeyboardInterrupt"):
    the interrupt is remembered and raised again at the loop's next step."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal starts a command
    try:
        proc = subprocess.run([sys.executable, "-c", SWALLOWED], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "IMGCLASS_TRACKING": "0"})
    finally:
        signal.signal(signal.SIGINT, previous)
    # Swallowed there, it is raised again at the next step: Python's "Exception ignored in ..." traceback
    # would only alarm (it reads as a crash), so it is not printed.
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 130 and "step 1" in proc.stdout and "step 2" not in proc.stdout, proc.stdout + proc.stderr
    assert "finished" not in proc.stdout and "interrupted:" in proc.stderr


def test_a_folder_or_file_in_the_way_of_a_write_is_one_line_naming_it(color_dataset, tmp_path, capsys) -> None:
    """split.json made a folder by hand (or results/ a file) ended a stage in a traceback naming the
    temp file it was renaming ('.split.json.x1y2.tmp' -> 'split.json')."""
    from conftest import run_script
    from imgclass import cli
    from imgclass.fileio import write_json

    split = tmp_path / "proc" / "colors" / "split.json"
    split.mkdir(parents=True)
    proc = run_script("1_prepareData.py", "--set", "datasetName=colors", data_dir=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"error: {split} is a folder, where this stage expects a file: move or rename it" in proc.stderr
    assert not [p.name for p in split.parent.iterdir() if p.name.endswith(".tmp")]

    blocker = tmp_path / "results"
    blocker.write_text("")
    for main in (lambda: write_json(blocker / "colors" / "metrics.json", {}),  # mkdir: File exists
                 lambda: (blocker / "metrics.json").unlink(missing_ok=True)):  # Not a directory
        with pytest.raises(SystemExit) as exit_:
            cli.run_stage(main)
        assert exit_.value.code == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: {blocker} is a file, where this stage needs a folder") and err.count("\n") == 1, err
    # A path read, not written, is refused with the same errno: said so, not "to write" it.
    urls = tmp_path / "urls.tsv"
    urls.write_text("red\thttp://127.0.0.1:9/red.jpg\n")
    proc = run_script("0_downloadData.py", "--urls", str(urls / "list.tsv"), "--set", "datasetName=colors",
                      data_dir=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"error: {urls} is a file, where this stage needs a folder (in the path "
                                  f"{urls / 'list.tsv'}): move or rename it, or correct the path"), proc.stderr


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_full_disk_is_one_line_not_a_traceback(wrapped: bool, tmp_path, monkeypatch, capsys) -> None:
    """No space left (torch.save wraps the OSError in a RuntimeError) ended a stage in a traceback
    of 20-50 lines; a read-only folder likewise."""
    import errno

    from imgclass import cli

    def main() -> int:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            if wrapped:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
            raise

    with pytest.raises(SystemExit) as exit_:
        cli.run_stage(main)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on the device") and err.count("\n") == 1, err

    def read_only() -> int:
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "x.json"))

    with pytest.raises(SystemExit):
        cli.run_stage(read_only)
    assert capsys.readouterr().err.startswith(f"error: read-only file system writing {tmp_path / 'x.json'}")

    def other() -> int:
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError):  # anything else keeps its traceback
        cli.run_stage(other)
