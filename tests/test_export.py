"""The model bundle: one ONNX model that reproduces stages 3-5's scores, for every classifier."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_script
from deploy_support import free_port
from imgclass.export import BundleError, export_bundle, load_bundle
from imgclass.fileio import load_npz
from imgclass.images import load_square
from imgclass.serve import Scorer
from imgclass.svm import LinearSvm

DS = "fashionTextureDemo"
SMALL = ["--set", "demoImagesPerClass=8", "--set", "rf_inputResolution=64", "--set", "run_mbSize=8",
         "--set", "svm_cvFolds=3", "--set", "run_workers=0"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Stages 0-5 on the small demo set, then 6_deploy.py --no-serve: (DATA_DIR, bundle folder)."""
    data_dir = tmp_path_factory.mktemp("deploydata")
    for script in ("0_downloadData.py", "1_prepareData.py", "2_refineDNN.py", "3_runDNN.py", "4_trainSVM.py", "5_evaluate.py"):
        run_script(script, *SMALL, data_dir=data_dir)
    out = run_script("6_deploy.py", *SMALL, "--no-serve", data_dir=data_dir).stdout
    bundle_dir = data_dir / "deploy" / DS / "svm"
    assert f"bundle: {bundle_dir}" in out
    return data_dir, bundle_dir


def test_bundle_scores_match_stage5_on_the_test_images(pipeline: tuple[Path, Path]) -> None:
    data_dir, bundle_dir = pipeline
    bundle = load_bundle(bundle_dir)
    test = load_npz(data_dir / "proc" / DS / "features_fixed_test.npz")
    svm = LinearSvm.load(data_dir / "proc" / DS / "svm_fixed.npz")
    expected = svm.decision_function(test["features"])  # what 5_evaluate.py scores
    images = np.stack([load_square(data_dir / "images" / DS / str(p), bundle.resolution, bundle.resize_mode)
                       for p in test["paths"]])
    scorer = Scorer(bundle, threads=1)
    try:
        got = scorer.run(images)
        queued = np.stack([scorer.submit(img).result(timeout=30) for img in images])
    finally:
        scorer.close()
    assert got.shape == expected.shape == (6, 3)
    assert np.abs(got - expected).max() < 1e-4
    assert np.abs(queued - expected).max() < 1e-4  # the batching path gives the same numbers
    # Stage 5's own output file (scores printed to 6 significant digits) agrees image by image.
    rows = [line.split("\t") for line in (data_dir / "results" / DS / "svm" / "predictions.tsv").read_text().splitlines()[1:]]
    by_path = {r[0]: (r[2], np.array(r[3:], float)) for r in rows}
    for path, row in zip(test["paths"], got):
        label, stage5 = by_path[str(path)]
        assert bundle.classes[int(row.argmax())] == label
        assert np.allclose(row, stage5, rtol=1e-5, atol=1e-4)


def test_bundle_describes_itself(pipeline: tuple[Path, Path]) -> None:
    data_dir, bundle_dir = pipeline
    info = json.loads((bundle_dir / "bundle.json").read_text())
    metrics = json.loads((data_dir / "results" / DS / "svm" / "metrics.json").read_text())
    assert info["classes"] == ["dotted", "leopard", "striped"] == metrics["classes"]
    assert info["metrics"] == metrics and info["classifier"] == "svm" and info["score_kind"] == "svm_decision"
    pre = info["preprocessing"]
    assert (pre["resolution"], pre["resize_mode"], pre["flip_average"]) == (64, "crop", False)  # the defaults of PARAMETERS.py
    assert pre["mean"] == [0.5, 0.5, 0.5] and pre["std"] == [0.5, 0.5, 0.5]
    assert len(info["model_version"]) == 16 and info["export_check_max_abs_error"] < 1e-4
    assert not list(bundle_dir.glob(".*.tmp"))


def _copy_of(data_dir: Path, tmp_path: Path) -> Path:
    """The pipeline's DATA_DIR copied (without its bundles), for a test that reruns stages in it."""
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy, ignore=lambda folder, names: ["deploy"] if Path(folder) == data_dir else [])
    return copy


def test_stage4_rerun_without_stage5_leaves_the_old_metrics_out(pipeline: tuple[Path, Path], tmp_path: Path) -> None:
    # A new SVM (another C) and no stage 5: metrics.json still holds the old SVM's test accuracy,
    # which the bundle and the web page would show as the new one's.
    data = _copy_of(pipeline[0], tmp_path)
    metrics_file = data / "results" / DS / "svm" / "metrics.json"
    old = json.loads(metrics_file.read_text())
    assert old["provenance"]["svm_file_hash"] and old["provenance"]["features_source"]
    other_c = 100.0 if old["svm_C"] != 100.0 else 1e-4
    again = ("--set", f"svm_CVals=[{other_c}]")  # as stage 4 had it: stages 5 and 6 refuse an SVM of other settings
    run_script("4_trainSVM.py", *SMALL, *again, data_dir=data)
    assert LinearSvm.load(data / "proc" / DS / "svm_fixed.npz").C_ == other_c
    out = run_script("6_deploy.py", *SMALL, *again, "--no-serve", data_dir=data).stdout
    info = json.loads((data / "deploy" / DS / "svm" / "bundle.json").read_text())
    assert info["metrics"] is None, "the bundle carries the metrics of an earlier SVM"
    assert "metrics.json evaluated an earlier svm_fixed.npz" in info["metrics_left_out"]
    assert "test metrics left out" in out and "run scripts/5_evaluate.py" in out
    # Stage 5 on the new SVM: its metrics go in again.
    run_script("5_evaluate.py", *SMALL, *again, data_dir=data)
    run_script("6_deploy.py", *SMALL, *again, "--no-serve", data_dir=data)
    info = json.loads((data / "deploy" / DS / "svm" / "bundle.json").read_text())
    assert info["metrics"] == json.loads(metrics_file.read_text()) and info["metrics"]["svm_C"] == other_c


def test_metrics_of_other_classes_or_older_than_the_files_are_left_out(pipeline: tuple[Path, Path], tmp_path: Path) -> None:
    data_dir, _ = pipeline
    proc = data_dir / "proc" / DS
    model, svm = tmp_path / "model_fixed.pt", tmp_path / "svm_fixed.npz"
    for f, age in ((model, 600), (svm, 0)):  # the model file made 10 minutes before the SVM file
        shutil.copy(proc / f.name, f)
        os.utime(f, (os.path.getmtime(f) - age,) * 2)
    metrics = json.loads((data_dir / "results" / DS / "svm" / "metrics.json").read_text())
    path = tmp_path / "metrics.json"
    classes = ["dotted", "leopard", "striped"]

    def write(m: dict, age_s: float) -> None:  # a metrics.json written `age_s` seconds before the SVM file
        path.write_text(json.dumps(m))
        t = svm.stat().st_mtime - age_s
        os.utime(path, (t, t))

    # A metrics.json of stage 5 before it recorded provenance, written before the SVM file: left out.
    legacy = {k: v for k, v in metrics.items() if k != "provenance"}
    write(legacy, 60)
    bundle = export_bundle(model, tmp_path / "bundle", "svm", svm_path=svm, flip_average=False, metrics_path=path)
    assert bundle.metrics is None and bundle.info["metrics_left_out"] == "metrics.json is older than svm_fixed.npz"

    from imgclass.export import stage5_metrics

    write(legacy, -60)  # written after both files: kept
    assert stage5_metrics(path, classes, model, svm, False) == (legacy, "")
    # Other classes: left out whatever the times or provenance say.
    write({**metrics, "classes": ["dotted", "striped"]}, -60)
    assert stage5_metrics(path, classes, model, svm, False) == (
        None, "metrics.json is for the classes dotted, striped, the bundle's are dotted, leopard, striped")
    # With provenance, the files' contents decide, not their times.
    write(metrics, 60)
    assert stage5_metrics(path, classes, model, svm, False) == (metrics, "")
    assert stage5_metrics(path, classes, model, svm, True)[0] is None  # other mirror averaging: other features
    write({**metrics, "provenance": {**metrics["provenance"], "svm_file_hash": "0" * 32}}, -60)
    assert stage5_metrics(path, classes, model, svm, False)[1] == "metrics.json evaluated an earlier svm_fixed.npz (or other features)"
    assert stage5_metrics(tmp_path / "none.json", classes, model, svm, False) == (None, "no none.json")


def test_bundle_keeps_the_mirror_averaging_stage_3_used(pipeline: tuple[Path, Path]) -> None:
    # Stage 3 ran without mirror averaging; asking for it only at stage 6 would score images unlike
    # the features the SVM was trained and evaluated on, and the run history would record it as used:
    # refused, naming the stage to rerun; the bundle there is left as it was.
    data_dir, bundle_dir = pipeline
    assert not bool(load_npz(data_dir / "proc" / DS / "features_fixed_train.npz")["flip_average"])
    before = (bundle_dir / "bundle.json").read_bytes()
    proc = run_script("6_deploy.py", *SMALL, "--set", "run_boFlipAverage=True", "--no-serve", data_dir=data_dir,
                      check=False)
    assert proc.returncode == 1 and "stage 3 featurized with" not in proc.stdout, proc.stdout
    assert ("features_fixed_train.npz was made with run_boFlipAverage = False, but the parameters now say True"
            in proc.stderr and "rerun scripts/3_runDNN.py" in proc.stderr), proc.stderr
    assert (bundle_dir / "bundle.json").read_bytes() == before
    assert json.loads(before)["preprocessing"]["flip_average"] is False


def test_a_changed_model_file_is_refused(pipeline: tuple[Path, Path], tmp_path: Path) -> None:
    _, bundle_dir = pipeline
    copy = tmp_path / "b"
    copy.mkdir()
    (copy / "bundle.json").write_bytes((bundle_dir / "bundle.json").read_bytes())
    data = bytearray((bundle_dir / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match bundle.json"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path / "nothing")
    # (on a free port: the port is checked first, and 8000 may be taken on the machine running the tests)
    proc = run_script("6_deploy.py", "--bundle", str(copy), "--port", str(free_port()), data_dir=tmp_path, check=False)
    assert proc.returncode == 1 and "does not match bundle.json" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("text", ["[1, 2]", "null", '"a bundle"', "3"])
def test_a_bundle_json_that_is_not_an_object_is_refused(tmp_path: Path, text: str) -> None:
    (tmp_path / "bundle.json").write_text(text)
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    with pytest.raises(BundleError, match=r"bundle\.json: damaged bundle description \(a JSON \w+, not an object\)"):
        load_bundle(tmp_path)


def _tiny_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_onnx_threads_follow_cpu_affinity_and_processes(tmp_path: Path) -> None:
    model = _tiny_onnx(tmp_path / "relu.onnx")
    # A process pinned to one core (taskset, a container's cpuset): os.cpu_count() still says all.
    code = ("import os, sys; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from imgclass.export import cpu_session; "
            "print(os.cpu_count(), cpu_session(sys.argv[1]).get_session_options().intra_op_num_threads)")
    proc = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr  # (exit 1 on a gVisor GPU machine, 2026-12-01: cause unseen)
    out = proc.stdout
    assert out.split()[1] == "1", f"os.cpu_count(), ONNX Runtime threads: {out}"

    from imgclass.cpus import usable_cpus
    from imgclass.export import cpu_session

    from imgclass.cpus import cgroup_cpu_limit

    quota = cgroup_cpu_limit()  # a container's CPU limit bounds it too (tests/test_cpus.py)
    cores = len(os.sched_getaffinity(0)) if quota is None else max(1, min(len(os.sched_getaffinity(0)), int(quota)))
    assert usable_cpus() == cores

    def threads(session) -> int:
        return session.get_session_options().intra_op_num_threads

    assert threads(cpu_session(model)) == cores
    assert threads(cpu_session(model, processes=2)) == max(1, cores // 2)  # two workers share the cores
    assert threads(cpu_session(model, threads=3, processes=2)) == 3  # a number given is used as given


def test_deploy_without_a_trained_model_says_what_to_run(tmp_path: Path) -> None:
    proc = run_script("6_deploy.py", "--no-serve", data_dir=tmp_path, check=False)
    assert proc.returncode == 1 and "2_refineDNN.py" in proc.stderr and "Traceback" not in proc.stderr


def test_refined_models_export_for_dnn_and_svm_dnn_refined(tmp_path: Path) -> None:
    from imgclass.features import Featurizer
    from imgclass.modelfile import ModelSpec, build_model, save_model

    classes = ("dotted", "leopard", "striped")
    spec = ModelSpec("efficientnet_lite0", 64, kind="refined", classes=classes)
    model = build_model(spec)
    model_path = save_model(tmp_path / "model_refined.pt", model, spec)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    ref = Featurizer(model, spec, batch_size=6, flip_average=True, workers=0, export_dir=tmp_path).featurize_arrays(images)

    dnn = export_bundle(model_path, tmp_path / "dnn", "dnn", flip_average=True)
    assert dnn.classes == classes and dnn.score_kind == "probability"
    scorer = Scorer(dnn, threads=1)
    probs = scorer.run(images)
    scorer.close()
    assert np.abs(probs - ref.probs).max() < 1e-4 and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)

    svm = LinearSvm([1.0], cv_folds=2).fit(ref.features, np.array([0, 1, 2, 0, 1, 2]))
    svm_path = svm.save(tmp_path / "svm_refined.npz", classes)
    both = export_bundle(model_path, tmp_path / "svmDnnRefined", "svmDnnRefined", svm_path=svm_path, flip_average=True)
    scorer = Scorer(both, threads=1)
    scores = scorer.run(images)
    scorer.close()
    assert np.abs(scores - svm.decision_function(ref.features)).max() < 1e-4
    assert both.version != dnn.version

    with pytest.raises(ValueError, match="fixed"):
        export_bundle(model_path, tmp_path / "bad", "svm", svm_path=svm_path)
