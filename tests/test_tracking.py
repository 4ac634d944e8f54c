"""Run history in MLflow: real stage subprocesses recording into a real SQLite store in DATA_DIR."""

from __future__ import annotations

import hashlib
import json
import re
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, TRACKED_SMALL, run_script
from imgclass import tracking
from imgclass.params import Params, load_params

DS = "fashionTextureDemo"
STAGES = ("0_downloadData.py", "1_prepareData.py", "2_refineDNN.py", "3_runDNN.py", "4_trainSVM.py", "5_evaluate.py")


def _client(data_dir: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{data_dir / 'mlflow.db'}")


def _pipeline_runs(data_dir: Path) -> list:
    client = _client(data_dir)
    exp = client.get_experiment_by_name(f"imgclass-{DS}")
    return client.search_runs([exp.experiment_id], "tags.`imgclass.level` = 'pipeline'",
                              order_by=["attributes.start_time DESC"])


def _state(data_dir: Path, classifier: str = "svm") -> dict:
    return json.loads((data_dir / "proc" / DS / f"tracking_{classifier}.json").read_text())


def _tracked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCLASS_TRACKING", "1")


def test_a_pipeline_is_one_run_with_its_stages_nested(tracked_demo: Path) -> None:
    client = _client(tracked_demo)
    run_id = _state(tracked_demo)["run_id"]
    run = client.get_run(run_id)
    # params: every parameter of PARAMETERS.py, with the run's overrides
    p = load_params(overrides={"DATA_DIR": str(tracked_demo)})
    assert set(run.data.params) == set(p.as_dict())
    assert run.data.params["rf_inputResolution"] == "64" and run.data.params["classifier"] == "svm"
    # metrics: the figures of metrics.json, overall, class-averaged and per class
    m = json.loads((tracked_demo / "results" / DS / "svm" / "metrics.json").read_text())
    got = run.data.metrics
    assert got["overall_accuracy"] == pytest.approx(m["overall_accuracy"])
    assert got["class_averaged_accuracy"] == pytest.approx(m["class_averaged_accuracy"])
    for c, v in m["per_class"].items():
        assert got[f"accuracy_{c}"] == pytest.approx(v["accuracy"]) and got[f"auc_{c}"] == pytest.approx(v["auc"])
        assert v["precision"] is None or got[f"precision_{c}"] == pytest.approx(v["precision"])
    assert got["class_averaged_auc"] == pytest.approx(sum(v["auc"] for v in m["per_class"].values()) / 3)
    assert got["svm_C"] == pytest.approx(m["svm_C"])
    # tags: data set, classifier, the project's git commit
    assert run.data.tags["dataset"] == DS and run.data.tags["classifier"] == "svm"
    assert len(run.data.tags["git_commit"]) == 40 or run.data.tags["git_commit"] == "unknown"
    # artifacts: plots and metrics.json, stored under DATA_DIR
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"metrics.json", "roc.png", "confusion.png"} <= names
    assert len(run.data.tags[tracking.TEST_TAG]) == 10  # which test images and labels the figures are of
    suspects = tracked_demo / "results" / DS / "svm" / "label_suspects.tsv"  # stage 4's label check, kept too
    assert "label_suspects.tsv" in names and suspects.is_file()
    stored = Path(run.info.artifact_uri.removeprefix("file://")) / "roc.png"
    assert stored.is_file() and stored.resolve().is_relative_to(tracked_demo.resolve())
    # the six stages, each a child run of the pipeline run
    children = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'")
    assert {c.data.tags["stage"] for c in children} == {s[:-3] for s in STAGES} and len(children) >= 6
    assert all(c.data.metrics["stage_seconds"] > 0 for c in children)
    # nothing written outside DATA_DIR: no ./mlruns, ./mlartifacts or ./mlflow.db in the project
    assert not any((ROOT / n).exists() for n in ("mlruns", "mlartifacts", "mlflow.db"))


def test_rerun_of_the_last_stage_joins_the_run(tracked_demo: Path, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    _tracked(monkeypatch)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # MLflow writes nothing there either (no telemetry id file)
    before = _state(tracked_demo)["run_id"]
    out = run_script("5_evaluate.py", *TRACKED_SMALL, "--on", "train", data_dir=tracked_demo).stdout
    assert not [f for f in home.rglob("*") if "mlflow" in f.name.lower()]  # (matplotlib caches its fonts there)
    assert f"tracked in pipeline run {before[:8]}" in out and "mlflow ui --backend-store-uri sqlite:///" in out
    run = _client(tracked_demo).get_run(before)
    m = json.loads((tracked_demo / "results" / DS / "svm" / "metrics_train.json").read_text())
    assert run.data.metrics["train_overall_accuracy"] == pytest.approx(m["overall_accuracy"])
    assert _state(tracked_demo)["run_id"] == before
    # Where the service listens and how many processes work change no result: the run goes on (a
    # new port started a new pipeline run, and the stages after it read as a rerun).
    out = run_script("5_evaluate.py", *TRACKED_SMALL, "--on", "train", "--set", "dep_port=8123", "--set", "run_workers=0",
                     data_dir=tracked_demo).stdout
    assert f"tracked in pipeline run {before[:8]}" in out and _state(tracked_demo)["run_id"] == before, out
    # Nor the demo's size or download settings (stage 0's inputs: the images are what split.json holds).
    # Nor stage 3's batch size (the features are the same to the bit; lowering it is the advice when
    # stage 3 runs out of memory).
    out = run_script("5_evaluate.py", *TRACKED_SMALL, "--on", "train", "--set", "demoImagesPerClass=30",
                     "--set", "dl_timeoutSec=5", "--set", "run_mbSize=5", data_dir=tracked_demo).stdout
    assert f"tracked in pipeline run {before[:8]}" in out, out
    # Nor eval_set, which says what --on says (it started a new run holding stage 5 alone).
    out = run_script("5_evaluate.py", *TRACKED_SMALL, "--set", "eval_set=train", data_dir=tracked_demo).stdout
    assert f"tracked in pipeline run {before[:8]}" in out and _state(tracked_demo)["run_id"] == before, out


def test_tracking_failure_is_a_warning_and_keeps_the_outputs(tracked_demo: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _tracked(monkeypatch)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the store's folder should be")
    split = tracked_demo / "proc" / DS / "split.json"
    split.unlink()
    proc = run_script("1_prepareData.py", *TRACKED_SMALL, "--set", f"track_uri=sqlite:///{blocker}/mlflow.db",
                      data_dir=tracked_demo)
    assert proc.returncode == 0 and "warning: run tracking failed" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads(split.read_text())["classes"] == ["dotted", "leopard", "striped"]


def test_tracking_can_be_switched_off(tracked_demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tracked(monkeypatch)
    n_runs = len(_pipeline_runs(tracked_demo))
    state = tracked_demo / "proc" / DS / "tracking_svm.json"
    before = state.read_bytes()
    out = run_script("4_trainSVM.py", *TRACKED_SMALL, "--set", "track_enabled=False", data_dir=tracked_demo).stdout
    assert "tracked in" not in out
    monkeypatch.setenv("IMGCLASS_TRACKING", "0")
    out = run_script("4_trainSVM.py", *TRACKED_SMALL, data_dir=tracked_demo).stdout
    assert "tracked in" not in out
    assert len(_pipeline_runs(tracked_demo)) == n_runs and state.read_bytes() == before


@pytest.mark.parametrize("second", [
    # Other SVM settings: a user retrains from stage 4 on, which is a new pipeline run of its own
    # (the parameters differ); it keeps this test's time down while 'dnn' is not available.
    pytest.param(("svm", ["--set", "svm_boL2Normalize=False", "--set", "svm_CVals=[0.1, 1.0]"], 4), id="svm-vs-svm"),
    # stage 0 would only report the data set that is already there
    pytest.param(("dnn", ["--set", "rf_maxEpochs=2", "--set", "rf_mbSize=8"], 1), id="svm-vs-dnn"),
])
def test_two_pipelines_are_compared(tracked_demo: Path, monkeypatch: pytest.MonkeyPatch,
                                    second: tuple[str, list[str], int]) -> None:
    _tracked(monkeypatch)
    classifier, extra, first_stage = second
    args = [*TRACKED_SMALL, "--set", f"classifier={classifier}", *extra]
    first_id = _state(tracked_demo)["run_id"]
    outputs = []
    for script in STAGES[first_stage:]:
        proc = run_script(script, *args, data_dir=tracked_demo, check=False)
        if proc.returncode != 0 and "not implemented yet" in proc.stderr:
            pytest.skip(f"classifier {classifier!r} is not implemented in this branch yet")
        assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
        outputs.append(proc.stdout)
    second_id = _state(tracked_demo, classifier)["run_id"]
    assert second_id != first_id
    if classifier == "svm":  # the first stage says why it did not join the run it would have joined
        assert (f"tracked in new pipeline run {second_id[:8]} (parameters differ from run {first_id[:8]}'s: "
                "svm_CVals, svm_boL2Normalize)") in outputs[0], outputs[0]
        assert f"tracked in pipeline run {second_id[:8]} in " in outputs[1]

    client = _client(tracked_demo)
    ids = [r.info.run_id for r in _pipeline_runs(tracked_demo)]
    assert first_id in ids and second_id in ids
    a, b = client.get_run(first_id), client.get_run(second_id)
    assert a.data.params["classifier"] == "svm" and b.data.params["classifier"] == classifier
    m = json.loads((tracked_demo / "results" / DS / classifier / "metrics.json").read_text())
    assert b.data.metrics["overall_accuracy"] == pytest.approx(m["overall_accuracy"])
    assert "overall_accuracy" in a.data.metrics
    if classifier == "svm":  # stage 4 records the C it chose (a run without stage 5 shows it too), stage 5 again
        assert [h.value for h in client.get_metric_history(second_id, "svm_C")] == [m["svm_C"]] * 2
    if classifier == "dnn":
        curves = json.loads((tracked_demo / "results" / DS / "dnn" / "training_curves.json").read_text())
        history = client.get_metric_history(second_id, "curve_train_loss")
        assert [h.step for h in history] == [int(e) for e in curves["epoch"]]
        assert "training_curves.png" in {x.path for x in client.list_artifacts(second_id)}

    out = run_script("compareRuns.py", "--runs", second_id[:8], first_id[:8], data_dir=tracked_demo).stdout
    lines = out.splitlines()
    assert any(line.startswith("run id") and second_id[:8] in line and first_id[:8] in line for line in lines)
    differ = {line.split()[0]: line.split()[1:] for line in lines if line.split()}
    if classifier == "svm":
        assert differ["svm_boL2Normalize"] == ["False", "True"]
        cvals = next(line for line in lines if line.startswith("svm_CVals"))
        assert "[0.1, 1.0]" in cvals and "[0.0001, 0.…10.0, 100.0]" in cvals  # the long list shortened
        assert differ["stages"] == ["4,5", "0,1,2,3,4,5"]
    else:
        assert differ["classifier"] == ["dnn", "svm"]
    for row in ("overall accuracy", "class-averaged accuracy", "class-averaged AUC", "accuracy dotted", "precision leopard",
                "AUC striped"):
        assert any(line.startswith(row) for line in lines), row
    # The data each run used: the same split.json here, and its image counts (from stage 5's metrics).
    from imgclass.provenance import split_hash

    split_row = next(line for line in lines if line.startswith("split.json (hash)")).split()[2:]
    assert split_row == [split_hash(tracked_demo / "proc" / DS / "split.json")[:10]] * 2
    counts = next(line for line in lines if line.startswith("train / test images"))
    assert counts.count(f"{m['n_train']} / {m['n_test']}") == 2, counts
    acc = next(line for line in lines if line.startswith("overall accuracy")).split()[2:]
    assert acc[0] == f"{100 * m['overall_accuracy']:.2f}%"
    # --last N lists the newest runs first
    out = run_script("compareRuns.py", "--last", "2", data_dir=tracked_demo).stdout
    assert "2 run(s)" in out and second_id[:8] in out


def test_metrics_and_curves_are_flattened_for_mlflow() -> None:
    m = {"overall_accuracy": 0.5, "class_averaged_accuracy": 0.25, "n_test": 4, "svm_C": 0.1,
         "per_class": {"a b/c": {"accuracy": 0.5, "precision": 1.0, "auc": 0.75, "n": 2},
                       "x(y)": {"accuracy": 0.0, "precision": None, "auc": None, "n": 2}}}
    flat = tracking.metrics_from_json(m, prefix="train_")
    assert flat == {"train_overall_accuracy": 0.5, "train_class_averaged_accuracy": 0.25,
                    "train_class_averaged_auc": 0.75, "train_accuracy_a b/c": 0.5, "train_precision_a b/c": 1.0,
                    "train_auc_a b/c": 0.75,
                    "train_accuracy_x_y__dfdfae": 0.0, "train_n_test": 4.0, "train_svm_C": 0.1}
    # Classes "a+b" and "a_b" both sanitise to a_b: each keeps its own figures.
    two = tracking.metrics_from_json({"per_class": {"a+b": {"accuracy": 1.0}, "a_b": {"accuracy": 0.0}}})
    assert two["accuracy_a_b"] == 0.0 and two[f"accuracy_a_b_{hashlib.sha1(b'a+b').hexdigest()[:6]}"] == 1.0
    curves = {"epoch": [1, 2], "train_loss": [1.5, 0.5], "test_error": [0.4, float("nan")], "note": "x"}
    assert tracking.curves_from_json(curves) == [("curve_train_loss", 1.5, 1), ("curve_train_loss", 0.5, 2),
                                                 ("curve_test_error", 0.4, 1)]
    assert tracking.ui_command("sqlite:////home/j/my data/mlflow.db") == "mlflow ui --backend-store-uri 'sqlite:////home/j/my data/mlflow.db'"
    assert tracking.ui_command("sqlite:////d/mlflow.db") == "mlflow ui --backend-store-uri sqlite:////d/mlflow.db"
    assert tracking.stage_of("scripts/2_refineDNN.py") == (2, "refineDNN") and tracking.stage_of("compareRuns.py") is None
    # The service's client is numbered 6 like the deploy stage, but it is not a step of the pipeline.
    assert tracking.stage_of("scripts/6_deploy.py") == (6, "deploy") and tracking.stage_of("scripts/6_callWebservice.py") is None


def test_store_location_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = load_params(overrides={"DATA_DIR": str(tmp_path)})
    ini = tmp_path / "tracking.ini"
    monkeypatch.setattr(tracking, "CONFIG_FILE", ini)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_uri(p) == f"sqlite:///{tmp_path.resolve().as_posix()}/mlflow.db"
    assert tracking.resolve_experiment(p) == "imgclass-fashionTextureDemo"
    ini.write_text("[mlflow]\n# shared server\ntracking_uri = http://127.0.0.1:5000\nexperiment = team\n")
    assert tracking.resolve_uri(p) == "http://127.0.0.1:5000" and tracking.resolve_experiment(p) == "team"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5001")
    assert tracking.resolve_uri(p) == "http://127.0.0.1:5001"
    assert tracking.resolve_uri(p.replace(track_uri="sqlite:////elsewhere/x.db")) == "sqlite:////elsewhere/x.db"
    monkeypatch.setenv("IMGCLASS_TRACKING", "0")
    assert not tracking.tracking_enabled(p)
    monkeypatch.setenv("IMGCLASS_TRACKING", "1")
    assert tracking.tracking_enabled(p) and not tracking.tracking_enabled(p.replace(track_enabled=False))


def test_refinement_curves_become_metrics_with_epochs(tracked_demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What stage 2 of the dnn classifier writes (training_curves.json/.png) is logged per epoch."""
    _tracked(monkeypatch)
    p = load_params(overrides={"DATA_DIR": str(tracked_demo), "datasetName": "curvesDemo", "classifier": "dnn"})
    started = time.time()
    p.results_dir.mkdir(parents=True)
    curves = {"epoch": [1, 2, 3], "train_loss": [1.2, 0.7, 0.4], "train_error": [0.5, 0.3, 0.1], "test_error": [0.6, 0.4, 0.3]}
    saved_as = "the PRETRAINED network with a last layer fitted on its features, as refining diverged"
    (p.results_dir / "training_curves.json").write_text(json.dumps({**curves, "saved_test_error": 0.1,
                                                                    "saved_as": saved_as}))
    (p.results_dir / "training_curves.png").write_bytes((tracked_demo / "results" / DS / "svm" / "roc.png").read_bytes())
    rec = tracking.record_stage(p, "scripts/2_refineDNN.py", started, ["--set", "classifier=dnn"])
    assert rec is not None and rec.new_run and set(rec.artifacts) == {"training_curves.json", "training_curves.png"}
    assert rec.why_new == ""  # the data set's first run: nothing to explain
    client = _client(tracked_demo)
    for key in ("train_loss", "train_error", "test_error"):
        hist = client.get_metric_history(rec.run_id, f"curve_{key}")
        assert [(h.step, h.value) for h in sorted(hist, key=lambda h: h.step)] == list(zip(curves["epoch"], curves[key]))
    assert client.get_experiment(rec.experiment_id).name == "imgclass-curvesDemo"
    # What was saved is a tag, and a row of the comparison: a fallback run is told from a refined one.
    run = tracking.find_runs(p, run_ids=[rec.run_id])[0]
    assert run.tags[tracking.SAVED_AS_TAG] == saved_as
    row = next(line for line in tracking.format_comparison([run], wide=True).splitlines()
               if line.startswith("refined model saved as"))
    assert row.endswith(saved_as)


def test_conda_environment_matches_requirements() -> None:
    req = {ln.strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()
           if ln.strip() and not ln.strip().startswith("#")}
    yml = (ROOT / "aml_config" / "conda_dependencies.yml").read_text().split("- pip:", 1)[1]
    pip = {ln.strip()[2:].strip() for ln in yml.splitlines() if ln.strip().startswith("- ")}
    assert pip == req, f"only in requirements.txt: {sorted(req - pip)}; only in the conda file: {sorted(pip - req)}"
    assert tracking._config(ROOT / "aml_config" / "tracking.ini") == {"tracking_uri": "", "experiment": ""}


def test_compare_runs_without_history_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_script("compareRuns.py", data_dir=tmp_path, check=False)
    assert proc.returncode == 1 and "no run history in" in proc.stderr and "Traceback" not in proc.stderr
    # An empty database file (a copy that failed), here or named by track_uri: read, never written to.
    for db, args in ((tmp_path / "mlflow.db", ()), (tmp_path / "other.db", ("--set", f"track_uri=sqlite:///{tmp_path}/other.db"))):
        db.write_bytes(b"")
        proc = run_script("compareRuns.py", *args, data_dir=tmp_path, check=False)
        assert proc.returncode == 1 and f"error: no run history in {db} (empty (0 bytes)): run the pipeline" in proc.stderr
        assert db.stat().st_size == 0 and not (tmp_path / "mlartifacts").exists()
    proc = run_script("compareRuns.py", "--set", f"track_uri=sqlite:///{tmp_path}/none.db", data_dir=tmp_path, check=False)
    assert "(not there): run the pipeline with track_enabled = True, or set track_uri to the store" in proc.stderr
    assert not (tmp_path / "none.db").exists()


def test_compare_runs_for_a_data_set_without_runs_names_those_with_runs(tracked_demo: Path) -> None:
    proc = run_script("compareRuns.py", "--set", "datasetName=elsewhere", data_dir=tracked_demo, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "no experiment 'imgclass-elsewhere'" in proc.stderr
    listed = proc.stderr.split("it holds runs of datasetName = ")[1].strip().split(", ")
    assert DS in listed and "elsewhere" not in listed  # other tests may have added data sets of their own


def test_compare_runs_names_the_data_set_of_a_run_id_from_another(tracked_demo: Path) -> None:
    client = _client(tracked_demo)
    if client.get_experiment_by_name("imgclass-elsewhere 2") is None:
        client.create_experiment("imgclass-elsewhere 2")  # a data set with no pipeline run of its own yet
    run_id = _pipeline_runs(tracked_demo)[0].info.run_id
    proc = run_script("compareRuns.py", "--set", "datasetName=elsewhere 2", "--runs", run_id[:8],
                      data_dir=tracked_demo, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (f"run id '{run_id[:8]}' matches 0 pipeline runs of experiment 'imgclass-elsewhere 2'; it is a run of "
            f"datasetName = '{DS}': add --set datasetName={DS}") in proc.stderr, proc.stderr
    proc = run_script("compareRuns.py", "--set", "datasetName=elsewhere 2", "--runs", "ffffffffff",
                      data_dir=tracked_demo, check=False)
    assert proc.returncode == 1 and proc.stderr.rstrip().endswith("matches 0 pipeline runs of experiment "
                                                                  "'imgclass-elsewhere 2'"), proc.stderr


def _stage_outputs(p: Params, started: float) -> None:
    """What a stage 5 writes into results/<ds>/<classifier>/: a metrics file and a plot."""
    p.results_dir.mkdir(parents=True, exist_ok=True)
    (p.results_dir / "metrics.json").write_text(json.dumps({"overall_accuracy": 0.5, "per_class": {}}))
    (p.results_dir / "roc.png").write_bytes(b"\x89PNG not really")
    for f in ("metrics.json", "roc.png"):  # written by this stage, after it started
        os.utime(p.results_dir / f, (started + 0.5, started + 0.5))


def test_moved_data_dir_keeps_new_artifacts_inside_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """An MLflow experiment keeps the absolute artifact folder it was created with: after DATA_DIR is
    moved, new runs must not write to (and recreate) the old folder."""
    _tracked(monkeypatch)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "CONFIG_FILE", tmp_path / "no_tracking.ini")
    old, new = tmp_path / "rv_a", tmp_path / "rv_b"
    p = load_params(overrides={"DATA_DIR": str(old), "datasetName": "movedDemo"})
    started = time.time()
    _stage_outputs(p, started)
    first = tracking.track_stage(p, "scripts/5_evaluate.py", started)
    assert first is not None and (old / "mlartifacts").is_dir() and "note:" not in capsys.readouterr().out

    old.rename(new)
    q = load_params(overrides={"DATA_DIR": str(new), "datasetName": "movedDemo"})
    started = time.time()
    _stage_outputs(q, started)
    rec = tracking.track_stage(q, "scripts/4_trainSVM.py", started)
    out = capsys.readouterr()
    assert rec is not None and "warning" not in out.err
    assert not old.exists(), "MLflow recreated the old DATA_DIR"
    client = _client(new)
    run = client.get_run(rec.run_id)
    stored = Path(run.info.artifact_uri.removeprefix("file://")) / "roc.png"
    assert stored.is_file() and stored.resolve().is_relative_to(new.resolve())
    exp = client.get_experiment(rec.experiment_id)
    assert exp.name == tracking.relocated_experiment("imgclass-movedDemo", q)
    # one note, naming the old folder, the experiment used and how to choose another
    assert out.out.count("note:") == 1 and str(old / "mlartifacts") in out.out and exp.name in out.out
    assert "track_experiment" in out.out
    # the next stage joins that run, and the comparison shows the runs from before and after the move
    started = time.time()
    _stage_outputs(q, started)
    again = tracking.track_stage(q, "scripts/5_evaluate.py", started)
    assert again is not None and again.run_id == rec.run_id and not again.new_run and not old.exists()
    assert "note:" not in capsys.readouterr().out  # said once per pipeline run, not at every stage
    assert {r.run_id for r in tracking.find_runs(q)} == {first.run_id, rec.run_id}


def test_failed_artifact_upload_keeps_the_pipeline_run_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The state file that ties the stages together is saved before the artifacts are uploaded."""
    _tracked(monkeypatch)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "CONFIG_FILE", tmp_path / "no_tracking.ini")
    data = tmp_path / "data"
    data.mkdir()
    (data / "mlartifacts").write_text("a file where the artifact folder should be")  # uploads fail
    p = load_params(overrides={"DATA_DIR": str(data), "datasetName": "uploadDemo"})
    started = time.time()
    _stage_outputs(p, started)
    assert tracking.track_stage(p, "scripts/4_trainSVM.py", started) is None
    assert "warning: run tracking failed" in capsys.readouterr().err
    state = json.loads(tracking.state_path(p).read_text())
    assert state["last_stage"] == 4 and state["stages"] == ["4_trainSVM"]
    started = time.time()
    _stage_outputs(p, started)
    assert tracking.track_stage(p, "scripts/5_evaluate.py", started) is None
    assert json.loads(tracking.state_path(p).read_text())["run_id"] == state["run_id"]  # the same pipeline run
    runs = _client(data).search_runs([state["experiment_id"]], "tags.`imgclass.level` = 'pipeline'")
    assert [r.info.run_id for r in runs] == [state["run_id"]]


def test_stage6_is_recorded_before_it_hands_over_to_the_web_service(tracked_demo: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage 6 execs the server, so run_stage never returns to record it: it records itself first."""
    import shutil
    import subprocess
    import sys
    import urllib.request

    from deploy_support import free_port

    data_dir = tmp_path / "data"  # a copy: the other tests expect stages 0-5 only in tracked_demo
    shutil.copytree(tracked_demo, data_dir)
    env = {**os.environ, "IMGCLASS_DATA_DIR": str(data_dir), "IMGCLASS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "IMGCLASS_TRACKING": "1"}
    # Another test here trains tracked_demo's SVM with other settings, which stage 6 refuses with these.
    run_script("4_trainSVM.py", *TRACKED_SMALL, data_dir=data_dir)

    def serve(*args: str) -> str:
        """Start stage 6 with `args`, wait for the service to answer, stop it; its output."""
        port = free_port()
        server = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "6_deploy.py"), *args, "--port", str(port)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        up = False
        try:
            deadline = time.time() + 120
            while time.time() < deadline and not up and server.poll() is None:  # (it stops when it refuses to export)
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                        up = r.status == 200
                except OSError:
                    time.sleep(0.5)
        finally:
            server.terminate()
            out = server.communicate(timeout=30)[0]
        assert up, f"the service did not come up (exit status {server.returncode}):\n{out}"
        return out

    out = serve(*TRACKED_SMALL)
    assert "tracked in" in out, out
    client = _client(data_dir)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`stage` = '6_deploy'")
    assert len(runs) == 1 and runs[0].data.metrics["stage_seconds"] > 0
    # Serving a bundle as it is (it may be another data set's, another classifier's) is no stage of
    # the parameters' data set: it was recorded under their datasetName and classifier.
    bundles = list((data_dir / "deploy").glob("*/*/bundle.json"))
    assert len(bundles) == 1
    out = serve("--bundle", str(bundles[0].parent), "--set", "datasetName=another", "--set", "classifier=dnn")
    assert "tracked in" not in out, out
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`stage` = '6_deploy'")
    assert len(runs) == 1 and not (data_dir / "proc" / "another").exists()


def test_compare_runs_shows_the_real_names_of_classes_whose_keys_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """MLflow keys refuse '%' and '#': 'a+b' and 'a_b' once shared a key (one class showed the other's
    figure), and the comparison showed keys like '100_ horiz' instead of the class names."""
    _tracked(monkeypatch)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "CONFIG_FILE", tmp_path / "no_tracking.ini")
    p = load_params(overrides={"DATA_DIR": str(tmp_path / "d"), "datasetName": "oddNames"})
    started = time.time()
    p.results_dir.mkdir(parents=True)
    per_class = {"a+b": {"accuracy": 1.0, "auc": 0.9}, "a_b": {"accuracy": 0.25, "auc": 0.5},
                 "100% horiz": {"accuracy": 0.5, "auc": 0.75}}
    (p.results_dir / "metrics.json").write_text(json.dumps({"overall_accuracy": 0.6, "per_class": per_class}))
    os.utime(p.results_dir / "metrics.json", (started + 0.5, started + 0.5))
    assert tracking.track_stage(p, "scripts/5_evaluate.py", started) is not None
    table = tracking.format_comparison(tracking.find_runs(p)).splitlines()
    row = {line[:len("accuracy 100% horiz")].strip(): line.split()[-1] for line in table if line.startswith(("accuracy", "AUC"))}
    assert row["accuracy a+b"] == "100.00%" and row["accuracy a_b"] == "25.00%" and row["accuracy 100% horiz"] == "50.00%"
    assert row["AUC a+b"] == "0.9000" and row["AUC a_b"] == "0.5000"


def test_comparison_marks_parameters_a_classifier_does_not_use() -> None:
    """An svm run does not refine and a dnn run has no SVM: their values there are the defaults of
    PARAMETERS.py, shown as unused rather than as a difference between the runs."""
    def run(classifier: str, **params: str) -> tracking.RunSummary:
        return tracking.RunSummary(f"{classifier:0<32}", classifier, 0, params, {}, {"classifier": classifier})

    runs = [run("svm", rf_maxEpochs="8", rf_inputResolution="320", aug_colorJitter="0.2", svm_cvFolds="5", rf_workers="2"),
            run("dnn", rf_maxEpochs="2", rf_inputResolution="160", aug_colorJitter="0.2", svm_cvFolds="3", rf_workers="4")]
    rows = {line.split()[0]: line.split()[1:] for line in tracking.format_comparison(runs).splitlines()
            if line.startswith(("rf_", "aug_", "svm_"))}
    # aug_colorJitter: the same default in both runs, unused in one: no difference, no row.
    assert rows == {"rf_inputResolution": ["320", "160"], "rf_maxEpochs": ["unused", "2"], "svm_cvFolds": ["5", "unused"]}
    # Worker counts change no result: shown when every parameter is asked for.
    assert "rf_workers" in tracking.format_comparison(runs, all_params=True)
    # A value recorded differently but used by no run (two svm runs' rf_maxEpochs): no difference.
    svm_runs = [run("svm", rf_maxEpochs="3"), run("svm", rf_maxEpochs="10")]
    assert "rf_maxEpochs" not in tracking.format_comparison(svm_runs)


def test_a_stage_that_starts_a_new_run_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tracked(monkeypatch)
    p = load_params(overrides={"DATA_DIR": str(tmp_path), "datasetName": "whyDemo"})
    p.results_dir.mkdir(parents=True)
    first = tracking.record_stage(p, "scripts/5_evaluate.py", time.time())
    assert first is not None and first.new_run and first.why_new == ""
    rerun = tracking.record_stage(p, "scripts/1_prepareData.py", time.time())
    assert rerun is not None and rerun.new_run and rerun.why_new == f"stage 1 after stage 5 of run {first.run_id[:8]}: a rerun"
    _client(tmp_path).delete_run(rerun.run_id)
    after = tracking.record_stage(p, "scripts/2_refineDNN.py", time.time())
    assert after is not None and after.new_run and after.why_new == f"run {rerun.run_id[:8]} was deleted"
    joined = tracking.record_stage(p, "scripts/3_runDNN.py", time.time())
    assert joined is not None and not joined.new_run and joined.run_id == after.run_id and joined.why_new == ""


def test_a_stage_after_an_untracked_stage_1_starts_a_new_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage 1 run with tracking off changed split.json: the stages after it joined the old run and
    replaced its figures (of other images) with theirs."""
    _tracked(monkeypatch)
    p = load_params(overrides={"DATA_DIR": str(tmp_path), "datasetName": "splitDemo"})
    p.split_path.parent.mkdir(parents=True)
    p.split_path.write_text('{"classes": ["a", "b"], "train": [["a/1.jpg", 0]], "test": [["b/2.jpg", 1]]}')
    first = tracking.record_stage(p, "scripts/1_prepareData.py", time.time())
    joined = tracking.record_stage(p, "scripts/2_refineDNN.py", time.time())
    assert first is not None and joined is not None and joined.run_id == first.run_id
    p.split_path.write_text('{"classes": ["a", "b"], "train": [["b/2.jpg", 1]], "test": [["a/1.jpg", 0]]}')  # untracked
    after = tracking.record_stage(p, "scripts/3_runDNN.py", time.time())
    assert after is not None and after.new_run
    assert after.why_new == (f"split.json changed since run {first.run_id[:8]}'s stages (stage 1 ran since, untracked "
                             "or for another classifier)")
    assert not tracking.record_stage(p, "scripts/4_trainSVM.py", time.time()).new_run  # and the next one joins it


def test_runs_of_every_folder_the_data_dir_lived_in_are_compared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Moved twice, DATA_DIR's history holds an experiment per earlier folder: all are listed."""
    _tracked(monkeypatch)
    p = load_params(overrides={"DATA_DIR": str(tmp_path), "datasetName": "movedDemo"})
    p.results_dir.mkdir(parents=True)
    tracking.record_stage(p, "scripts/5_evaluate.py", time.time())  # creates the store and the experiment
    client = _client(tmp_path)
    ids = []
    for folder in ("/old/a", "/old/b"):
        exp = client.create_experiment(f"imgclass-movedDemo ({folder})")
        ids.append(client.create_run(exp, tags={tracking.LEVEL_TAG: "pipeline"}).info.run_id)
    for other in ("imgclass-movedDemoX", "imgclass-movedDemo (copy)"):  # other data sets' ("movedDemo (copy)")
        client.create_run(client.create_experiment(other), tags={tracking.LEVEL_TAG: "pipeline"})
    found = {r.run_id for r in tracking.find_runs(p, last=10)}
    assert len(found) == 3 and set(ids) <= found
    assert [r.run_id for r in tracking.find_runs(p, run_ids=[ids[0][:8]])] == [ids[0]]


def test_compare_runs_last_larger_than_mlflow_searches_lists_them_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--last 100000 ("all of them"): MLflow refuses max_results over 50000, which read as a store that
    cannot be read."""
    _tracked(monkeypatch)
    p = load_params(overrides={"DATA_DIR": str(tmp_path), "datasetName": "manyDemo"})
    p.results_dir.mkdir(parents=True)
    tracking.record_stage(p, "scripts/5_evaluate.py", time.time())
    assert len(tracking.find_runs(p, last=10**20)) == 1
    proc = run_script("compareRuns.py", "--set", "datasetName=manyDemo", "--last", "100000", data_dir=tmp_path, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("1 run(s) of experiment"), proc.stderr


def test_a_store_that_cannot_be_read_is_one_error_line(tmp_path: Path) -> None:
    proc = run_script("compareRuns.py", "--set", f"track_uri=file://{tmp_path}/store", data_dir=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: cannot read the run history in file://") and \
        "MLFLOW_ALLOW_FILE_STORE=true" in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr


def test_stage4_of_the_dnn_classifier_leaves_no_run_behind(tracked_demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It trains nothing ('no SVM to train'): recorded, it started a pipeline run with no results."""
    _tracked(monkeypatch)
    before = len(_pipeline_runs(tracked_demo))
    out = run_script("4_trainSVM.py", *TRACKED_SMALL, "--set", "classifier=dnn", data_dir=tracked_demo).stdout
    assert "no SVM to train" in out and "tracked in" not in out
    assert len(_pipeline_runs(tracked_demo)) == before


def test_comparison_shortens_long_values_but_judges_them_whole() -> None:
    """Two runs' rf_lrPerMb lists made every column 60 characters wide."""
    def run(rates: str) -> tracking.RunSummary:
        return tracking.RunSummary(f"{rates[:8]:0<32}", "dnn", 0, {"rf_lrPerMb": rates}, {}, {"classifier": "dnn"})

    a = "[0.01, 0.01, 0.01, 0.01, 0.005, 0.001, 0.001, 0.001]"
    b = "[0.01, 0.01, 0.01, 0.02, 0.005, 0.001, 0.001, 0.001]"  # differs in the middle only
    row = next(line for line in tracking.format_comparison([run(a), run(b)]).splitlines() if line.startswith("rf_lrPerMb"))
    assert re.split(r"\s{2,}", row)[1:] == [a, b]  # shortened, the two would read alike: this row whole
    c = "[0.05, 0.01, 0.01, 0.02, 0.005, 0.001, 0.001, 0.002]"  # differs at both ends
    row = next(line for line in tracking.format_comparison([run(a), run(c)]).splitlines() if line.startswith("rf_lrPerMb"))
    cells = re.split(r"\s{2,}", row)[1:]
    assert len(cells) == 2 and cells[0] != cells[1] and all("…" in x and len(x) == tracking.CELL_MAX for x in cells), cells
    wide = tracking.format_comparison([run(a), run(b)], wide=True)
    assert a in wide and b in wide


def test_five_runs_wider_than_the_terminal_come_in_blocks() -> None:
    """Five runs side by side took ~120 columns: in an 80-column terminal every line wrapped."""
    runs = [tracking.RunSummary(f"{k:x}" * 32, "svm", 1_700_000_000_000 + k, {"svm_cvFolds": str(k + 2)},
                                {"overall_accuracy": 0.9 + k / 100}, {"classifier": "svm"}) for k in range(5)]
    whole = tracking.format_comparison(runs).splitlines()
    assert max(len(line) for line in whole) > 80 and not any(line.startswith("runs ") for line in whole)
    lines = tracking.format_comparison(runs, width=80).splitlines()
    assert max(len(line) for line in lines) <= 80
    heads = [line for line in lines if line.startswith("runs ")]
    assert len(heads) >= 2 and heads[0].startswith("runs 1-") and heads[-1].endswith("-5 of 5:")
    ids = [cell for line in lines if line.startswith("run id") for cell in line.split()[2:]]
    assert ids == [f"{k:x}" * 8 for k in range(5)]  # every run once, in order
    accs = [cell for line in lines if line.startswith("overall accuracy") for cell in line.split()[2:]]
    assert accs == ["90.00%", "91.00%", "92.00%", "93.00%", "94.00%"]


def test_a_long_class_name_still_leaves_two_runs_side_by_side_in_80_columns() -> None:
    """A class named with 80 characters made the row names 50 columns wide: beside the 16 of a start
    time, an 80-column terminal then held one run per block, and nothing was side by side."""
    long = "a_very_long_class_name_describing_photos_of_leopard_print_fabric_closeups_from_shop"
    runs = [tracking.RunSummary(f"{k:x}" * 32, "svm", 1_700_000_000_000 + k * 60_000, {"svm_cvFolds": str(k + 2)},
                                {"overall_accuracy": 0.9 + k / 100, "accuracy_long": 0.5 + k / 100,
                                 "accuracy_short": 0.7, "auc_long": 0.9, "auc_short": 0.9},
                                {"classifier": "svm", tracking.CLASS_NAMES_TAG: json.dumps({"long": long})})
            for k in range(3)]
    lines = tracking.format_comparison(runs, width=80).splitlines()
    assert max(len(line) for line in lines) <= 80
    ids = [line.split()[2:] for line in lines if line.startswith("run id")]
    assert len(ids[0]) >= 2, lines  # at least two runs beside each other
    assert [i for block in ids for i in block] == [f"{k:x}" * 8 for k in range(3)]
    assert any(line.startswith("accuracy a_very") and "…" in line for line in lines)


def test_runs_tested_on_different_test_sets_are_pointed_out(tmp_path: Path) -> None:
    """Labels fixed in test images (annotations_fixes.tsv) changed the figures under the same
    parameters; the comparison says so, where a row of hashes alone went unread."""
    from imgclass.provenance import test_set_hash

    split = tmp_path / "split.json"
    split.write_text('{"classes": ["a", "b"], "train": [["a/1.jpg", 0]], "test": [["a/2.jpg", 0], ["b/3.jpg", 1]]}')
    before = test_set_hash(split)
    split.write_text('{"classes": ["a", "b"], "train": [["a/1.jpg", 1]], "test": [["b/3.jpg", 1], ["a/2.jpg", 0]]}')
    assert test_set_hash(split) == before  # the training side and the order do not count
    split.write_text('{"classes": ["a", "b"], "train": [["a/1.jpg", 0]], "test": [["a/2.jpg", 1], ["b/3.jpg", 1]]}')
    assert test_set_hash(split) != before  # a test label fixed

    def run(run_id: str, test_set: str | None) -> tracking.RunSummary:
        tags = {"classifier": "svm", **({tracking.TEST_TAG: test_set} if test_set else {})}
        return tracking.RunSummary(f"{run_id:0<32}", "svm", 0, {}, {}, tags)

    same = [run("aaaa1111", "x1"), run("bbbb2222", "x1"), run("cccc3333", None)]  # (an older run: unknown)
    assert tracking.comparison_notes(same) == []
    notes = tracking.comparison_notes([*same, run("dddd4444", "y2")])
    assert notes == ["the runs were tested on 2 different test sets (images, or their labels: aaaa1111, bbbb2222; "
                     "dddd4444): their test figures do not compare like for like (the 'test set (hash)' row)"]
    assert "test set (hash)" in tracking.format_comparison(same)


def test_numbers_alike_and_parameters_the_classifier_does_not_use_keep_the_run(tracked_demo: Path, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _tracked(monkeypatch)
    data_dir = Path(shutil.copytree(tracked_demo, tmp_path / "data"))  # its SVM retrained: the other tests' stays
    out = run_script("4_trainSVM.py", *TRACKED_SMALL, "--set", "svm_CVals=[1, 10]", data_dir=data_dir).stdout
    run_id = _state(data_dir)["run_id"]
    assert f"tracked in new pipeline run {run_id[:8]}" in out
    # The same grid written with floats and in another order (the SVM check accepts it: the order
    # chooses nothing), and a refinement setting an svm run does not use: the same pipeline run, not a
    # new one whose table would show no difference.
    out = run_script("5_evaluate.py", *TRACKED_SMALL, "--set", "svm_CVals=[10.0, 1.0]", "--set", "rf_maxEpochs=3",
                     data_dir=data_dir).stdout
    assert f"tracked in pipeline run {run_id[:8]} in " in out, out


def test_a_damaged_state_file_starts_a_new_run_and_is_written_anew(tracked_demo: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _tracked(monkeypatch)
    data_dir = Path(shutil.copytree(tracked_demo, tmp_path / "data"))
    state = data_dir / "proc" / DS / "tracking_svm.json"
    state.write_bytes(state.read_bytes()[:30])  # cut short, as by a full disk
    # Stage 4 (it retrains the SVM, whatever grid the other tests left in tracked_demo)
    proc = run_script("4_trainSVM.py", *TRACKED_SMALL, data_dir=data_dir)
    run_id = _state(data_dir)["run_id"]  # valid JSON again
    assert f"tracked in new pipeline run {run_id[:8]} (tracking_svm.json was damaged (" in proc.stdout, proc.stdout
    assert "warning" not in proc.stderr
    out = run_script("5_evaluate.py", *TRACKED_SMALL, data_dir=data_dir).stdout
    assert f"tracked in pipeline run {run_id[:8]} in " in out  # and the next stage joins that run


def test_a_run_whose_stages_ran_at_other_commits_or_edited_code_is_marked(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("imgclass-x")
    run_id = client.create_run(exp, tags={"git_commit": "a" * 40, "git_dirty": "false"}).info.run_id
    tracking._note_code_version(client, run_id, "a" * 40, False)  # the same code: nothing to mark
    assert tracking.COMMITS_TAG not in client.get_run(run_id).data.tags
    tracking._note_code_version(client, run_id, "b" * 40, True)  # a git pull, and a file edited
    tracking._note_code_version(client, run_id, "b" * 40, False)
    tags = client.get_run(run_id).data.tags
    assert tags[tracking.COMMITS_TAG] == f"{'a' * 40},{'b' * 40}" and tags["git_dirty"] == "true"
    runs = [tracking.RunSummary(run_id, "", 0, {}, {}, tags),
            tracking.RunSummary("c" * 32, "", 0, {}, {}, {"git_commit": "c" * 40, "git_dirty": "false"})]
    table = tracking.format_comparison(runs)
    row = next(line for line in table.splitlines() if line.startswith("git commit")).split()[2:]
    assert row == [f"{'a' * 10}*+1", "c" * 10]
    notes = tracking.comparison_notes(runs)
    assert notes == [f"git commit *: the project had uncommitted changes when a stage of {run_id[:8]} ran; they are "
                     "not recorded, so the commit alone does not reproduce the run",
                     f"git commit +N: the stages of {run_id[:8]} ({'a' * 10}, {'b' * 10}) ran at more than one commit "
                     "(the code changed between stages)"]


def test_edited_parameters_or_notebooks_do_not_mark_the_code_as_changed(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "notebooks").mkdir()
    (tmp_path / "libraries").mkdir()
    for name in ("PARAMETERS.py", "notebooks/a.ipynb", "libraries/svm.py"):
        (tmp_path / name).write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "c")
    commit, dirty = tracking.git_commit(tmp_path)
    assert len(commit) == 40 and not dirty
    (tmp_path / "PARAMETERS.py").write_text("x = 2\n")  # recorded as parameters anyway
    (tmp_path / "notebooks" / "a.ipynb").write_text("x = 2\n")  # outputs saved by running it
    (tmp_path / "new.txt").write_text("")  # untracked: not code the stages run
    assert tracking.git_commit(tmp_path) == (commit, False)
    (tmp_path / "libraries" / "svm.py").write_text("x = 2\n")
    assert tracking.git_commit(tmp_path) == (commit, True)


def test_what_stage_2_saved_is_shown_whole_where_shortened_it_would_read_alike() -> None:
    saved = ["the refined network of epoch 3 of 8, the best on the held-out images",
             "the refined network of epoch 7 of 8, the best on the held-out images"]
    runs = [tracking.RunSummary(f"{k}" * 32, "", 0, {}, {}, {tracking.SAVED_AS_TAG: s}) for k, s in enumerate(saved)]
    row = next(line for line in tracking.format_comparison(runs, width=400).splitlines()
               if line.startswith("refined model saved as"))
    assert saved[0] in row and saved[1] in row
    runs[1].tags[tracking.SAVED_AS_TAG] = "the PRETRAINED network with a last layer fitted on its features"
    row = next(line for line in tracking.format_comparison(runs, width=400).splitlines()
               if line.startswith("refined model saved as"))
    assert saved[0] not in row and "…" in row  # differing at their start: short cells tell them apart


def test_a_leakage_setting_given_to_stage_1_alone_does_not_split_the_run(tracked_demo: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """dedup_threshold and leakageCheck act at stage 1 only, and split.json (whose hash the run has)
    holds what they did: a later stage without them started a second run that recorded the defaults."""
    _tracked(monkeypatch)
    data_dir = Path(shutil.copytree(tracked_demo, tmp_path / "data"))
    out = run_script("1_prepareData.py", *TRACKED_SMALL, "--set", "dedup_threshold=3", data_dir=data_dir).stdout
    run_id = _state(data_dir)["run_id"]
    assert f"tracked in new pipeline run {run_id[:8]}" in out, out
    out = run_script("4_trainSVM.py", *TRACKED_SMALL, data_dir=data_dir).stdout
    assert f"tracked in pipeline run {run_id[:8]} in " in out, out
    assert _client(data_dir).get_run(run_id).data.params["dedup_threshold"] == "3"


def test_a_parameter_added_to_the_project_since_a_run_started_does_not_split_it(tracked_demo: Path, tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A run recorded by an earlier version lacks the parameters added since (rf_maxGradNorm): after a
    git pull, the next stage started a new run, 'parameters differ: rf_maxGradNorm', that nobody changed."""
    from mlflow.entities import Param

    _tracked(monkeypatch)
    data_dir = Path(shutil.copytree(tracked_demo, tmp_path / "data"))
    p = load_params(overrides={"DATA_DIR": str(data_dir), "demoImagesPerClass": 8, "rf_inputResolution": 64,
                               "run_mbSize": 8, "svm_cvFolds": 3})  # TRACKED_SMALL
    tracking.record_stage(p, "scripts/5_evaluate.py", time.time())  # the copied folder's experiment (see above)
    state = _state(data_dir)
    client = _client(data_dir)
    recorded = client.get_run(state["run_id"])
    # The run as the earlier version left it: every parameter but the one added since, and a state
    # file of that version (no digests of this one).
    old = client.create_run(state["experiment_id"], tags={**recorded.data.tags}).info.run_id
    params = [Param(k, v) for k, v in recorded.data.params.items() if k != "rf_maxGradNorm"]
    for i in range(0, len(params), 100):
        client.log_batch(old, params=params[i:i + 100])
    (data_dir / "proc" / DS / "tracking_svm.json").write_text(json.dumps(
        {"uri": state["uri"], "experiment_id": state["experiment_id"], "run_id": old, "params_digest": "earlier",
         "last_stage": 4, "stages": []}))
    rec = tracking.record_stage(p, "scripts/5_evaluate.py", time.time())
    assert rec is not None and not rec.new_run and rec.run_id == old, rec


def test_a_stage_opens_a_sqlite_store_holding_its_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two stages started at once on a new store both created MLflow's tables, and the second's run
    was lost ("table sql_trace_metric_daily_rollups already exists"): the store is opened, and the
    experiment found or created, under a lock that a second process waits for."""
    import fcntl

    _tracked(monkeypatch)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "CONFIG_FILE", tmp_path / "no_tracking.ini")
    data = tmp_path / "data"
    data.mkdir()
    p = load_params(overrides={"DATA_DIR": str(data), "datasetName": "lockDemo"})
    lock = data / ("mlflow.db" + tracking.STORE_LOCK_SUFFIX)
    held_by_another: list[bool] = []
    experiment_for = tracking._experiment_for

    def experiment_for_as_another_process_sees_it(*args: object) -> tuple[str, str]:
        with open(lock, "a") as other:  # another open file: what a second stage's flock would meet
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held_by_another.append(False)
            except BlockingIOError:
                held_by_another.append(True)
        return experiment_for(*args)

    monkeypatch.setattr(tracking, "_experiment_for", experiment_for_as_another_process_sees_it)
    started = time.time()
    _stage_outputs(p, started)
    rec = tracking.record_stage(p, "scripts/4_trainSVM.py", started)
    assert rec is not None and held_by_another == [True]
    with open(lock, "a") as after:  # released once the experiment is known: the stage's logging is not serialised
        fcntl.flock(after, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_file_uri_path_keeps_a_windows_share_host(monkeypatch):
    """A DATA_DIR on a Windows share: MLflow's artifact location is file://server/share/...; read back
    without its host it named \\share\\... on the current drive, outside DATA_DIR, and every stage refused
    to track. Windows' own url2pathname (nturl2path) is what tracking.url2pathname is there."""
    import nturl2path
    from pathlib import PureWindowsPath

    monkeypatch.setattr(tracking, "url2pathname", nturl2path.url2pathname)
    share = PureWindowsPath(r"\\server\share\data\mlartifacts")
    assert tracking._file_uri_path(share.as_uri()) == str(share)
    drive = PureWindowsPath(r"C:\Users\John Smith\imgclass_data\mlartifacts")
    assert tracking._file_uri_path(drive.as_uri()) == str(drive)


def test_file_uri_path_of_a_posix_folder(tmp_path):
    folder = tmp_path / "my data" / "mlartifacts"
    assert tracking._file_uri_path(folder.as_uri()) == str(folder)
    assert tracking._local_folder(folder.as_uri()) == folder.resolve()
