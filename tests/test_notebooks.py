"""The three notebooks, executed top to bottom in a real python3 kernel against a small pipeline's DATA_DIR."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT
from imgclass.annotations import EXCLUDE, FIXES_FILE, read_fixes
from imgclass.suspects import read_suspects

NOTEBOOKS = ROOT / "notebooks"
DS = "fashionTextureDemo"


def run_notebook(name: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch, **params: Any) -> nbformat.NotebookNode:
    """Execute notebooks/<name> with the parameters cell's values overridden; fails on any cell error."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += "".join(f"\n{k} = {v!r}" for k, v in params.items())
    monkeypatch.setenv("IMGCLASS_DATA_DIR", str(data_dir))  # the kernel inherits the environment
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def _texts(nb: nbformat.NotebookNode) -> str:
    out = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            out.append(o.get("text", "") or o.get("data", {}).get("text/plain", ""))
    return "\n".join(out)


def _count(nb: nbformat.NotebookNode, mime: str) -> int:
    return sum(mime in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_notebooks_are_stored_clean_for_the_python3_kernel() -> None:
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["kernelspec"]["name"] == "python3", path.name
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs"
        assert any("import" in c.source and "imgclass" in c.source for c in code), path.name
    assert {p.name for p in NOTEBOOKS.glob("*.ipynb")} == {"showImages.ipynb", "showResults.ipynb", "deploy.ipynb"}


def test_show_images_pages_and_records_a_fix(tracked_demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = tracked_demo / "images" / DS
    try:
        nb = run_notebook("showImages.ipynb", tracked_demo, monkeypatch, example_fix=True, page_size=6)
        text = _texts(nb)
        fixes = read_fixes(images)
        assert list(fixes.values()) == [EXCLUDE] and f"excluded {next(iter(fixes))}" in text
        assert f"left out: {next(iter(fixes))}: marked EXCLUDE" in text  # the preview of the next split
        assert "dotted" in text and "1 page(s)" not in text  # 8 images a class, 6 a page: 2 pages
        assert _count(nb, "image/png") >= 1  # the page of thumbnails
        # Stage 4's label suspects, as a view of their own (paged like a class).
        suspects = read_suspects(tracked_demo / "results" / DS / "svm" / "label_suspects.tsv")
        assert f"{len(suspects)} label suspects from " in text
        assert _count(nb, "image/png") >= 1 + bool(suspects)
        assert _count(nb, "application/vnd.jupyter.widget-view+json") == 1 or "ipywidgets is not installed" in text
    finally:
        (images / FIXES_FILE).unlink(missing_ok=True)  # the data set is shared with other tests


def test_show_results_lists_scores_and_errors(tracked_demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = run_notebook("showResults.ipynb", tracked_demo, monkeypatch)
    text = _texts(nb)
    assert "6 test images of fashionTextureDemo scored by svm" in text and "class-avg" in text
    assert "misclassified of 6" in text
    assert re.search(r"dotted: \d+\.\d% of its 2 test images classified right", text), text
    lines = [ln for ln in text.splitlines() if ln.startswith(("ok ", "ERR"))]
    assert len(lines) == 6 and all("->" in ln and ln.count("=") == 3 for ln in lines)
    assert _count(nb, "image/png") >= 3  # ROC, confusion matrix and at least one grid of images
    assert "warning: not the results of the model" not in text


def test_show_results_says_when_the_results_are_of_an_earlier_svm(tracked_demo: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage 4 run again and stage 5 not: the notebook showed the earlier SVM's results as the model's,
    where stage 6 leaves them out of a bundle for that reason."""
    import shutil

    from conftest import TRACKED_SMALL, run_script

    data_dir = Path(shutil.copytree(tracked_demo, tmp_path / "data"))
    run_script("4_trainSVM.py", *TRACKED_SMALL, "--set", "svm_CVals=[0.5]", data_dir=data_dir)
    text = _texts(run_notebook("showResults.ipynb", data_dir, monkeypatch))
    assert ("warning: not the results of the model as it is now (metrics.json evaluated an earlier svm_fixed.npz "
            "(or other features)): run scripts/5_evaluate.py") in text, text


def test_deploy_runs_or_says_what_is_missing(tracked_demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The data set was trained with --set overrides (TRACKED_SMALL): stage 6 refuses a model made with
    # other settings than the parameters say, so the notebook gets them as a user would, in a file.
    params = tracked_demo.parent / "tracked_small_params.py"
    params.write_text("demoImagesPerClass = 8\nrun_mbSize = 8\nsvm_cvFolds = 3\n")
    monkeypatch.setenv("IMGCLASS_PARAMS", str(params))
    # The resolution as the parameters cell's `settings`: the service the notebook starts gets it too
    # (without it, stage 6 refuses the model, made at 64 px, for the 320 px PARAMETERS.py asks for).
    nb = run_notebook("deploy.ipynb", tracked_demo, monkeypatch, startup_timeout=180, settings={"rf_inputResolution": 64})
    text = _texts(nb)
    if not (ROOT / "scripts" / "6_deploy.py").is_file():
        assert "Not available in this checkout: scripts/6_deploy.py" in text and "stops here" in text
    else:
        assert "service up at http://127.0.0.1:" in text and "(multipart)" in text and "(JSON)" in text
        assert "service stopped" in text and "service stopped (exit status" not in text  # a clean stop, said so


def test_notebooks_take_the_data_set_and_classifier_of_the_parameters_file(tracked_demo: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The parameters cell said datasetName = "fashionTextureDemo", which won over IMGCLASS_PARAMS and
    PARAMETERS.py: a user's own data set's results were "not found: run scripts/5_evaluate.py first"."""
    import shutil

    data = tmp_path / "data"
    for part in ("images", "results"):  # the demo's results, as another data set's
        shutil.copytree(tracked_demo / part / DS, data / part / "myShirts")
    params = tmp_path / "myShirts.py"
    params.write_text('datasetName = "myShirts"\nclassifier = "svm"\n')
    monkeypatch.setenv("IMGCLASS_PARAMS", str(params))
    text = _texts(run_notebook("showResults.ipynb", data, monkeypatch))
    assert "6 test images of myShirts scored by svm" in text, text
    text = _texts(run_notebook("showImages.ipynb", data, monkeypatch))
    assert f"data set: {data / 'images' / 'myShirts'}" in text, text
