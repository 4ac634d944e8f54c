"""The Part-1 pipeline as a user runs it: stage scripts as subprocesses on a small generated data set."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import SCRIPTS, run_script

SMALL = ["--set", "demoImagesPerClass=8", "--set", "rf_inputResolution=96", "--set", "run_mbSize=8",
         "--set", "svm_cvFolds=3"]


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("data")
    for script in ("0_downloadData.py", "1_prepareData.py", "2_refineDNN.py", "3_runDNN.py", "4_trainSVM.py", "5_evaluate.py"):
        run_script(script, *SMALL, data_dir=data_dir)
    return data_dir


def test_demo_pipeline_writes_every_output(pipeline_dir: Path) -> None:
    ds = "fashionTextureDemo"
    images = pipeline_dir / "images" / ds
    assert sorted(p.name for p in images.iterdir() if p.is_dir()) == ["dotted", "leopard", "striped"]
    assert "synthetic" in (images / "README.txt").read_text().lower()
    proc = pipeline_dir / "proc" / ds
    for name in ("split.json", "model_fixed.pt", "features_fixed_train.npz", "features_fixed_test.npz", "svm_fixed.npz"):
        assert (proc / name).is_file(), name
    results = pipeline_dir / "results" / ds / "svm"
    for name in ("metrics.json", "roc.png", "confusion.png", "predictions.tsv", "browser.html"):
        assert (results / name).is_file(), name
    m = json.loads((results / "metrics.json").read_text())
    for key in ("dataset", "classifier", "n_train", "n_test", "classes", "overall_accuracy",
                "class_averaged_accuracy", "per_class", "confusion_matrix"):
        assert key in m, key
    assert m["dataset"] == ds and m["classifier"] == "svm" and m["classes"] == ["dotted", "leopard", "striped"]
    assert m["n_train"] + m["n_test"] == 24 and m["n_test"] == 6
    assert sum(map(sum, m["confusion_matrix"])) == m["n_test"]
    assert 0.0 <= m["overall_accuracy"] <= 1.0 and set(m["per_class"]["dotted"]) == {"accuracy", "precision", "auc", "n"}
    # no temp files left behind by the atomic writes
    assert not list(pipeline_dir.rglob(".*.tmp"))


def test_stage0_reports_an_existing_data_set_and_changes_nothing(pipeline_dir: Path) -> None:
    images = pipeline_dir / "images" / "fashionTextureDemo"
    before = {p: p.stat().st_mtime_ns for p in images.rglob("*.jpg")}
    out = run_script("0_downloadData.py", *SMALL, data_dir=pipeline_dir).stdout
    assert "already holds 3 class folders" in out and "dotted" in out
    assert {p: p.stat().st_mtime_ns for p in images.rglob("*.jpg")} == before


def test_stage5_on_the_training_set(pipeline_dir: Path) -> None:
    out = run_script("5_evaluate.py", *SMALL, "--on", "train", data_dir=pipeline_dir).stdout
    assert "overall" in out and "class-avg" in out
    m = json.loads((pipeline_dir / "results" / "fashionTextureDemo" / "svm" / "metrics_train.json").read_text())
    assert m["eval_set"] == "train" and sum(map(sum, m["confusion_matrix"])) == 18


def test_stage5_says_the_other_sides_results_are_of_an_earlier_svm(pipeline_dir: Path, tmp_path: Path) -> None:
    import shutil

    data_dir = tmp_path / "data"
    shutil.copytree(pipeline_dir, data_dir)
    out = run_script("5_evaluate.py", *SMALL, "--on", "train", data_dir=data_dir).stdout
    assert "side's results" not in out  # of the same SVM as the test side's
    other = [*SMALL, "--set", "svm_CVals=[0.5]"]  # stage 4 again: another SVM
    run_script("4_trainSVM.py", *other, data_dir=data_dir)
    out = run_script("5_evaluate.py", *other, data_dir=data_dir).stdout
    assert "note: the train side's results in " in out and "(metrics_train.json, predictions_train.tsv, " \
        "browser_train.html, ...) are of an earlier model or SVM: rerun this stage with --on train" in out, out
    out = run_script("5_evaluate.py", *other, "--on", "train", data_dir=data_dir).stdout
    assert "side's results" not in out


def test_help_says_what_each_stage_reads_and_writes(tmp_path: Path) -> None:
    for script in ("0_downloadData.py", "1_prepareData.py", "2_refineDNN.py", "3_runDNN.py", "4_trainSVM.py", "5_evaluate.py"):
        out = run_script(script, "--help", data_dir=tmp_path).stdout
        assert "reads:" in out and "writes:" in out and "--set NAME=VALUE" in out, script


def test_resume_with_classifier_svm_says_it_does_nothing(tmp_path: Path) -> None:
    # Stage 2 of svm only writes the backbone: --resume went unsaid, as if a refinement had continued.
    out = run_script("2_refineDNN.py", "--resume", "--set", "classifier=svm", "--set", "rf_inputResolution=64",
                     data_dir=tmp_path).stdout
    assert 'note: --resume does nothing with classifier = "svm"' in out, out


def test_bad_parameter_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_script("1_prepareData.py", "--set", "ratioTrainTest=2", data_dir=tmp_path, check=False)
    assert proc.returncode == 2 and "ratioTrainTest = 2" in proc.stderr and "between 0 and 1" in proc.stderr
    proc = run_script("1_prepareData.py", "--set", "clasifier=svm", data_dir=tmp_path, check=False)
    assert proc.returncode == 2 and "did you mean 'classifier'" in proc.stderr
    # scoreImages writes its page beside the TSV as .html: an --out ending in .html would overwrite it.
    (tmp_path / "photos").mkdir()
    proc = run_script("scoreImages.py", str(tmp_path / "photos"), "--out", str(tmp_path / "scores.html"),
                      data_dir=tmp_path, check=False)
    assert proc.returncode == 2 and "--out" in proc.stderr and "name the TSV" in proc.stderr


def test_score_images_out_naming_a_folder_is_refused_before_scoring(tmp_path: Path) -> None:
    """--out results/ (a folder): the photos were scored, then the TSV's rename onto the folder ended
    in an IsADirectoryError traceback. Said at once, as an .html --out is (no model needed to say it)."""
    (tmp_path / "photos").mkdir()
    (tmp_path / "results").mkdir()
    proc = run_script("scoreImages.py", str(tmp_path / "photos"), "--out", str(tmp_path / "results"),
                      data_dir=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"--out {tmp_path / 'results'}: a folder; name the TSV to write in it" in proc.stderr
    assert list((tmp_path / "results").iterdir()) == []


def test_score_images_out_in_a_folder_not_writable_is_refused_before_scoring(tmp_path: Path) -> None:
    """--out in a read-only folder was found out only when the TSV was written, after every photo
    had been scored (an hour for a big folder)."""
    (tmp_path / "photos").mkdir()
    ro = tmp_path / "read-only"
    ro.mkdir(mode=0o555)
    prefix = []
    if os.geteuid() == 0:  # root writes anywhere unless it gives up the capability to override permissions
        if shutil.which("setpriv") is None:
            pytest.skip("root, and no setpriv to drop the capability to override permissions")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
    env = {**os.environ, "IMGCLASS_DATA_DIR": str(tmp_path), "IMGCLASS_OFFLINE": "1", "IMGCLASS_TRACKING": "0"}
    try:
        proc = subprocess.run([*prefix, sys.executable, str(SCRIPTS / "scoreImages.py"), str(tmp_path / "photos"),
                               "--out", str(ro / "scores.tsv")], capture_output=True, text=True, env=env, timeout=600)
    finally:
        ro.chmod(0o755)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"the folder {ro} is not writable by this user" in proc.stderr, proc.stderr


def test_missing_inputs_and_bad_data_keep_earlier_outputs(pipeline_dir: Path, tmp_path: Path) -> None:
    # A stage whose input is missing says which stage makes it.
    proc = run_script("3_runDNN.py", "--set", "datasetName=nothingHere", data_dir=pipeline_dir, check=False)
    assert proc.returncode == 1 and "1_prepareData.py" in proc.stderr and "Traceback" not in proc.stderr
    # A data set that became unusable (one class left) fails clearly and leaves the old split intact.
    split = pipeline_dir / "proc" / "fashionTextureDemo" / "split.json"
    before = split.read_bytes()
    bad = pipeline_dir / "images" / "oneClass" / "dotted"
    bad.mkdir(parents=True)
    (bad / "x.jpg").write_bytes((next((pipeline_dir / "images" / "fashionTextureDemo" / "dotted").iterdir())).read_bytes())
    proc = run_script("1_prepareData.py", "--set", "datasetName=oneClass", data_dir=pipeline_dir, check=False)
    assert proc.returncode == 1 and "at least two class folders" in proc.stderr
    assert split.read_bytes() == before
    # Own photos that do not exist yet: stage 0 explains where to put them.
    proc = run_script("0_downloadData.py", "--set", "datasetName=myPhotos", data_dir=tmp_path, check=False)
    assert proc.returncode == 1 and "myPhotos" in proc.stderr and "--urls" in proc.stderr


REFINE = ["--set", "rf_inputResolution=64", "--set", "rf_mbSize=6", "--set", "run_mbSize=6"]


def test_refined_classifiers_run_stages_2_to_5_without_overwriting_each_other(pipeline_dir: Path, tmp_path: Path) -> None:
    ds = "fashionTextureDemo"
    results = pipeline_dir / "results" / ds
    svm_metrics = (results / "svm" / "metrics.json").read_bytes()
    dnn = [*SMALL, *REFINE, "--set", "classifier=dnn", "--set", "rf_maxEpochs=2"]
    out = run_script("2_refineDNN.py", *dnn, data_dir=pipeline_dir).stdout
    # Where it ran, by name: the GPU on a CUDA machine, else the CPU with its thread count.
    where = f"on cuda:0 ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "on cpu ("
    assert where in out and "epoch   2/2" in out and "test error" in out
    assert "to go)" in out.split("epoch   1/2")[1].splitlines()[0]  # time left, after every epoch but the last
    proc = pipeline_dir / "proc" / ds
    assert (proc / "model_refined.pt").is_file() and not (proc / "refine_checkpoint.pt").exists()
    curves = json.loads((results / "dnn" / "training_curves.json").read_text())
    assert curves["epoch"] == [1, 2]
    for key in ("train_loss", "train_error", "test_error"):
        assert len(curves[key]) == 2 and all(isinstance(v, float) for v in curves[key]), key
    # The model as saved (averaged over both epochs, last layer refit) is what stage 5 evaluates.
    assert curves["saved_as"] == "weights averaged over epochs 1-2, last layer refit"
    assert f"saved model ({curves['saved_as']}): test error" in out
    assert (results / "dnn" / "training_curves.png").stat().st_size > 5000
    from imgclass.modelfile import load_model_extra

    # Stage 2's verdict on the refined features is kept with the model, and stage 3 repeats a warning.
    warned = load_model_extra(proc / "model_refined.pt")["collapse_note"]
    out = run_script("3_runDNN.py", *dnn, data_dir=pipeline_dir).stdout
    assert (f"warning: stage 2 said: {warned}" in out) if warned else ("warning: stage 2 said" not in out), out
    assert (f"engine torch {where}" if torch.cuda.is_available() else "engine onnx on cpu,") in out
    assert "no SVM to train" in run_script("4_trainSVM.py", *dnn, data_dir=pipeline_dir).stdout
    run_script("5_evaluate.py", *dnn, data_dir=pipeline_dir)
    m = json.loads((results / "dnn" / "metrics.json").read_text())
    assert m["classifier"] == "dnn" and m["n_test"] == 6 and sum(map(sum, m["confusion_matrix"])) == 6
    assert m["overall_accuracy"] == pytest.approx(1 - curves["saved_test_error"])  # the star on the curves
    rows = (results / "dnn" / "predictions.tsv").read_text().strip().splitlines()
    probs = [sum(float(v) for v in r.split("\t")[-3:]) for r in rows[1:]]
    assert len(probs) == 6 and all(abs(s - 1.0) < 1e-4 for s in probs)  # the network's class probabilities

    # svmDnnRefined with dnn's settings: the same network, kept. Refined again, the file changed under
    # dnn's results (stage 6 then left dnn's metrics out of its bundle, as of another model).
    model_bytes = (proc / "model_refined.pt").read_bytes()
    same = [*SMALL, *REFINE, "--set", "classifier=svmDnnRefined", "--set", "rf_maxEpochs=2"]
    out = run_script("2_refineDNN.py", *same, data_dir=pipeline_dir).stdout
    assert "model_refined.pt is refined already with these settings on this split" in out, out
    assert "epoch   1/2" not in out and (proc / "model_refined.pt").read_bytes() == model_bytes
    copied = json.loads((results / "svmDnnRefined" / "training_curves.json").read_text())
    assert copied["epoch"] == [1, 2] and copied["saved_test_error"] == curves["saved_test_error"]

    # svmDnnRefined: refine again (1 epoch), then an SVM on the refined features.
    sdr = [*SMALL, *REFINE, "--set", "classifier=svmDnnRefined", "--set", "rf_maxEpochs=1"]
    for script in ("2_refineDNN.py", "3_runDNN.py", "4_trainSVM.py", "5_evaluate.py"):
        out = run_script(script, *sdr, data_dir=pipeline_dir).stdout
        if script == "2_refineDNN.py":  # dnn's network, of 2 epochs, is replaced: said before it happens
            assert ("note: this replaces model_refined.pt (rf_maxEpochs = 2 there), the refined network of both "
                    "dnn and svmDnnRefined") in out, out
    assert (proc / "svm_refined.npz").is_file()
    m2 = json.loads((results / "svmDnnRefined" / "metrics.json").read_text())
    assert m2["classifier"] == "svmDnnRefined" and "svm_C" in m2
    assert json.loads((results / "svmDnnRefined" / "training_curves.json").read_text())["epoch"] == [1]
    # Each classifier's results stay where they were.
    assert (results / "svm" / "metrics.json").read_bytes() == svm_metrics
    assert json.loads((results / "dnn" / "metrics.json").read_text()) == m
    assert not list(pipeline_dir.rglob(".*.tmp"))
    # dnn and svmDnnRefined share the refined network: svmDnnRefined's stage 2 replaced dnn's 2-epoch
    # network with a 1-epoch one, so dnn's stages 3 and 5 refuse to credit it to rf_maxEpochs = 2.
    for script, args in (("3_runDNN.py", dnn), ("5_evaluate.py", [*sdr, "--set", "rf_maxEpochs=2"])):
        stale = run_script(script, *args, data_dir=pipeline_dir, check=False)
        assert stale.returncode == 1 and "Traceback" not in stale.stderr, stale.stderr
        assert "was made with rf_maxEpochs = 1, but the parameters now say 2: give the same values again " \
               "(--set rf_maxEpochs=1" in stale.stderr, stale.stderr
    assert json.loads((results / "dnn" / "metrics.json").read_text()) == m
    # Back to dnn with the network as it is now: stage 3 writes dnn's curves anew, of that network (the
    # 2-epoch curves stayed beside results of the 1-epoch network, and nothing said so).
    assert json.loads((results / "dnn" / "training_curves.json").read_text())["epoch"] == [1, 2]
    out = run_script("3_runDNN.py", *dnn, "--set", "rf_maxEpochs=1", data_dir=pipeline_dir).stdout
    assert "training_curves.png (the refined network's training curves)" in out, out
    assert json.loads((results / "dnn" / "training_curves.json").read_text())["epoch"] == [1]
    # --resume of a checkpoint it cannot continue: refused, and no "this replaces" said before the refusal.
    (proc / "refine_checkpoint.pt").write_bytes(b"not a checkpoint")
    refused = run_script("2_refineDNN.py", *dnn, "--resume", data_dir=pipeline_dir, check=False)
    assert refused.returncode == 1 and "refine_checkpoint.pt: not a refinement checkpoint" in refused.stderr, refused.stderr
    assert "this replaces" not in refused.stdout, refused.stdout
    (proc / "refine_checkpoint.pt").unlink()

    # Stage 1 again with another seed: some images the network was refined on are now test images,
    # and stage 3 refuses to featurize the new split with it (a copy: later tests use the original).
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(pipeline_dir, copy)
    run_script("1_prepareData.py", *sdr, "--set", "randomSeed=7", data_dir=copy)
    stale = run_script("3_runDNN.py", *sdr, "--set", "randomSeed=7", data_dir=copy, check=False)
    assert stale.returncode == 1 and "Traceback" not in stale.stderr, stale.stderr
    assert ("model_refined.pt was refined on the training images of an earlier split.json (stage 1 ran again "
            "since), some of which may now be test images: rerun scripts/2_refineDNN.py") in stale.stderr


def test_results_are_not_credited_to_a_network_that_was_not_used(pipeline_dir: Path) -> None:
    """PARAMETERS.py changed (another resolution or backbone) and stage 2 forgotten: stages 3, 4 and 5
    refuse, naming what the files were made with, instead of reporting the new settings' name."""
    metrics = pipeline_dir / "results" / "fashionTextureDemo" / "svm" / "metrics.json"
    before = metrics.read_bytes()
    proc = run_script("3_runDNN.py", *SMALL, "--set", "rf_inputResolution=128", data_dir=pipeline_dir, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert ("model_fixed.pt was made with rf_inputResolution = 96, but the parameters now say 128: give the same "
            "values again (--set rf_inputResolution=96, or put them in PARAMETERS.py or a --params file for every "
            "stage), or, to change them, rerun scripts/2_refineDNN.py, then the stages after it") in proc.stderr
    proc = run_script("5_evaluate.py", *SMALL, "--set", "rf_pretrainedModel=efficientnet_lite1", data_dir=pipeline_dir, check=False)
    assert proc.returncode == 1 and "features_fixed_test.npz was made with rf_pretrainedModel = 'efficientnet_lite0'" in proc.stderr
    svm = pipeline_dir / "proc" / "fashionTextureDemo" / "svm_fixed.npz"
    svm_before = svm.read_bytes()
    proc = run_script("4_trainSVM.py", *SMALL, "--set", "rf_resizeMode=pad", data_dir=pipeline_dir, check=False)
    assert proc.returncode == 1 and "features_fixed_train.npz was made with rf_resizeMode = 'crop'" in proc.stderr
    assert svm.read_bytes() == svm_before  # refused before an SVM was written
    # Stage 6 too: it exported the 96 px model, and the run history credited it to 128 px.
    proc = run_script("6_deploy.py", *SMALL, "--no-serve", "--set", "rf_inputResolution=128", data_dir=pipeline_dir,
                      check=False)
    assert proc.returncode == 1 and "model_fixed.pt was made with rf_inputResolution = 96" in proc.stderr, proc.stderr
    assert "exporting" not in proc.stdout
    proc = run_script("6_deploy.py", *SMALL, "--no-serve", "--set", "svm_cvFolds=4", data_dir=pipeline_dir, check=False)
    assert proc.returncode == 1 and "svm_fixed.npz was made with svm_cvFolds = 3" in proc.stderr, proc.stderr
    assert metrics.read_bytes() == before
    m = json.loads(before)
    assert (m["backbone"], m["resolution"]) == ("efficientnet_lite0", 96)


def test_results_are_not_credited_to_a_split_or_mirror_averaging_that_was_not_used(pipeline_dir: Path) -> None:
    """The split's settings and stage 3's mirror averaging, given to a later stage and not to the one
    that used them: refused as the network's settings are (the run history would record them as used)."""
    metrics = pipeline_dir / "results" / "fashionTextureDemo" / "svm" / "metrics.json"
    before = metrics.read_bytes()
    for script in ("3_runDNN.py", "4_trainSVM.py", "5_evaluate.py", "6_deploy.py"):
        extra = ["--no-serve"] if script == "6_deploy.py" else []
        proc = run_script(script, *SMALL, *extra, "--set", "randomSeed=3", "--set", "ratioTrainTest=0.5",
                          data_dir=pipeline_dir, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, (script, proc.stderr)
        assert ("split.json was made with randomSeed = 0, ratioTrainTest = 0.75, but the parameters now say 3, 0.5: give "
                "the same values again (--set randomSeed=0 --set ratioTrainTest=0.75") in proc.stderr, (script, proc.stderr)
        assert "rerun scripts/1_prepareData.py, then the stages after it" in proc.stderr
    for script in ("4_trainSVM.py", "5_evaluate.py", "6_deploy.py"):
        extra = ["--no-serve"] if script == "6_deploy.py" else []
        proc = run_script(script, *SMALL, *extra, "--set", "run_boFlipAverage=True", data_dir=pipeline_dir, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, (script, proc.stderr)
        features = "features_fixed_test.npz" if script == "5_evaluate.py" else "features_fixed_train.npz"
        assert (f"{features} was made with run_boFlipAverage = False, but the parameters now say True: give the same "
                "values again (--set run_boFlipAverage=False") in proc.stderr, (script, proc.stderr)
        assert "rerun scripts/3_runDNN.py, then the stages after it" in proc.stderr, proc.stderr
    assert metrics.read_bytes() == before


def test_refinement_refuses_a_split_made_with_other_settings_in_one_line(tmp_path: Path) -> None:
    """Stage 2 refining checks the split's settings as stages 3-6 do: a refusal, not a traceback."""
    tiny = ["--set", "demoImagesPerClass=4", "--set", "rf_inputResolution=64"]
    run_script("0_downloadData.py", *tiny, data_dir=tmp_path)
    run_script("1_prepareData.py", *tiny, data_dir=tmp_path)
    proc = run_script("2_refineDNN.py", *tiny, "--set", "classifier=dnn", "--set", "randomSeed=3",
                      data_dir=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "error: split.json was made with randomSeed = 0, but the parameters now say 3" in proc.stderr, proc.stderr
    assert not (tmp_path / "proc" / "fashionTextureDemo" / "model_refined.pt").exists()


def test_refinement_resume_without_checkpoint_and_bad_values(pipeline_dir: Path) -> None:
    proc = run_script("2_refineDNN.py", *SMALL, "--set", "classifier=dnn", "--set", "rf_lrPerMb=[]",
                      data_dir=pipeline_dir, check=False)
    assert proc.returncode == 2 and "rf_lrPerMb" in proc.stderr
    proc = run_script("2_refineDNN.py", *SMALL, "--set", "classifier=dnn", "--set", "datasetName=noSplit",
                      "--resume", data_dir=pipeline_dir, check=False)
    assert proc.returncode == 1 and "1_prepareData.py" in proc.stderr and "Traceback" not in proc.stderr


def test_files_of_different_origins_are_not_combined(pipeline_dir: Path, tmp_path: Path) -> None:
    import shutil

    data_dir = tmp_path / "data"
    shutil.copytree(pipeline_dir, data_dir)
    # Another backbone with the same 1280 features: stage 2 and 3 rerun, stage 4 forgotten.
    lite1 = [*SMALL, "--set", "rf_pretrainedModel=efficientnet_lite1"]
    run_script("2_refineDNN.py", *lite1, data_dir=data_dir)
    proc = run_script("5_evaluate.py", *lite1, data_dir=data_dir, check=False)
    assert proc.returncode == 1 and "rerun scripts/3_runDNN.py, then scripts/4_trainSVM.py" in proc.stderr, proc.stderr
    run_script("3_runDNN.py", *lite1, data_dir=data_dir)
    metrics = data_dir / "results" / "fashionTextureDemo" / "svm" / "metrics.json"
    before = metrics.read_bytes()
    for script, extra in (("5_evaluate.py", ()), ("6_deploy.py", ("--no-serve",))):
        proc = run_script(script, *lite1, *extra, data_dir=data_dir, check=False)
        assert proc.returncode == 1 and "svm_fixed.npz was trained on features of another model" in proc.stderr, proc.stderr
        assert "rerun scripts/4_trainSVM.py" in proc.stderr and "Traceback" not in proc.stderr
    assert metrics.read_bytes() == before  # the refused evaluation left the earlier results as they were
    run_script("4_trainSVM.py", *lite1, data_dir=data_dir)
    out = run_script("5_evaluate.py", *lite1, data_dir=data_dir).stdout
    assert json.loads(metrics.read_text())["backbone"] == "efficientnet_lite1" and "overall" in out
    # Stage 1 again with another seed (given to every stage after it): the features are those of the old split.
    lite7 = [*lite1, "--set", "randomSeed=7"]
    run_script("1_prepareData.py", *lite7, data_dir=data_dir)
    proc = run_script("4_trainSVM.py", *lite7, data_dir=data_dir, check=False)
    assert proc.returncode == 1 and "earlier split.json (stage 1 ran again since): rerun scripts/3_runDNN.py" in proc.stderr
    # Deploying now would export the classifier of the earlier split under parameters of this one.
    proc = run_script("6_deploy.py", *lite7, "--no-serve", data_dir=data_dir, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert ("the svm classifier of 'fashionTextureDemo' learned from the training images of an earlier split.json "
            "(stage 1 ran again since): rerun 3_runDNN.py, 4_trainSVM.py and 5_evaluate.py") in proc.stderr
    run_script("3_runDNN.py", *lite7, data_dir=data_dir)
    # ... and stage 4 forgotten: the fixed network is the same, but the SVM learned from the old split's
    # training images, some of which are test images now (its test accuracy would be flattered).
    for script, extra in (("5_evaluate.py", ()), ("6_deploy.py", ("--no-serve",))):
        proc = run_script(script, *lite7, *extra, data_dir=data_dir, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert ("svm_fixed.npz was trained on the training images of another split than features_fixed_" in proc.stderr
                and "rerun scripts/4_trainSVM.py" in proc.stderr), proc.stderr
    run_script("4_trainSVM.py", *lite7, data_dir=data_dir)
    assert "overall" in run_script("5_evaluate.py", *lite7, data_dir=data_dir).stdout


def test_an_interrupted_refinement_is_not_overwritten_by_a_plain_rerun(pipeline_dir: Path, tmp_path: Path) -> None:
    """Ctrl-C leaves refine_checkpoint.pt; the same command again would have overwritten it after its
    first epoch. Stage 2 asks for --resume (continue) or --restart (start afresh) instead."""
    import shutil

    data_dir = tmp_path / "data"
    shutil.copytree(pipeline_dir, data_dir)
    ckpt = data_dir / "proc" / "fashionTextureDemo" / "refine_checkpoint.pt"
    ckpt.write_bytes(b"the interrupted run's progress")
    dnn = [*SMALL, *REFINE, "--set", "classifier=dnn", "--set", "rf_maxEpochs=1"]
    proc = run_script("2_refineDNN.py", *dnn, data_dir=data_dir, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "holds an interrupted refinement (stopped or failed): add --resume to continue it, or --restart" in proc.stderr
    assert ckpt.read_bytes() == b"the interrupted run's progress"
    assert "refining" not in proc.stdout, proc.stdout  # the refusal alone, not after a description of a run
    both = run_script("2_refineDNN.py", *dnn, "--resume", "--restart", data_dir=data_dir, check=False)
    assert both.returncode == 2 and "--resume and --restart: choose one" in both.stderr, both.stderr
    out = run_script("2_refineDNN.py", *dnn, "--restart", data_dir=data_dir).stdout
    assert "epoch   1/1" in out and not ckpt.exists()


def test_an_interrupted_refinement_leaves_the_finished_runs_curves(pipeline_dir: Path, tmp_path: Path) -> None:
    """Ctrl-C after an epoch: the curves of the finished run, whose model stages 3-5 still use, stay;
    the interrupted run's are in training_curves_running.* (they replaced the finished run's)."""
    import os
    import shutil
    import signal
    import subprocess
    import sys

    from conftest import ROOT, SCRIPTS

    data = tmp_path / "data"
    shutil.copytree(pipeline_dir, data, ignore=shutil.ignore_patterns("featcache"))
    dnn = [*SMALL, *REFINE, "--set", "classifier=dnn", "--set", "rf_averageLastEpochs=0"]
    run_script("2_refineDNN.py", *dnn, "--set", "rf_maxEpochs=1", "--restart", data_dir=data)
    results = data / "results" / "fashionTextureDemo" / "dnn"
    finished = (results / "training_curves.json").read_bytes()
    assert json.loads(finished)["epoch"] == [1] and not list(results.glob("training_curves_running.*"))
    env = {**os.environ, "IMGCLASS_DATA_DIR": str(data), "IMGCLASS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "IMGCLASS_TRACKING": "0"}
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal starts it (see test_download)
    try:
        proc = subprocess.Popen([sys.executable, str(SCRIPTS / "2_refineDNN.py"), *dnn, "--set", "rf_maxEpochs=4"],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert proc.stdout is not None
    for line in proc.stdout:  # by the second epoch's line the first epoch's curves are written
        if line.startswith("epoch   2/4"):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted: files already written are complete" in err, err
    assert (results / "training_curves.json").read_bytes() == finished
    assert json.loads((results / "training_curves_running.json").read_text())["epoch"][0] == 1
    assert (results / "training_curves_running.png").is_file()
    assert (data / "proc" / "fashionTextureDemo" / "refine_checkpoint.pt").is_file()
    # Stage 3 now featurizes with the finished run's network: said, with the way to the new one.
    out = run_script("3_runDNN.py", *dnn, "--set", "rf_maxEpochs=1", data_dir=data).stdout
    assert ("note: refine_checkpoint.pt holds an interrupted refinement; this uses the last finished one, "
            "model_refined.pt: to use the new one, finish it first (scripts/2_refineDNN.py --resume)") in out, out
    # A --resume with a setting the interrupted run did not have: refused, before the run is described.
    refused = run_script("2_refineDNN.py", *dnn, "--set", "rf_maxEpochs=3", "--set", "aug_colorJitter=0.05",
                         "--resume", data_dir=data, check=False)
    assert refused.returncode == 1 and "was written with other settings (aug_colorJitter = " in refused.stderr, refused.stderr
    assert "refining the whole network" not in refused.stdout and "note:" not in refused.stdout, refused.stdout
    # Resumed to 3 epochs: the time reported and recorded counts the interrupted run's epochs too.
    import re

    out = run_script("2_refineDNN.py", *dnn, "--set", "rf_maxEpochs=3", "--resume", data_dir=data).stdout
    after = int(re.search(r"resuming from \S+ after epoch (\d)", out)[1])  # 2, unless epoch 3 ended before the signal
    took = re.search(rf"refined in (\d+) s \((\d+) s in this run, resumed after epoch {after}\)", out)
    curves = json.loads((results / "training_curves.json").read_text())
    assert took and curves["epoch"] == [1, 2, 3], (out, curves)
    assert abs(int(took[1]) - int(took[2]) - sum(curves["seconds"][:after])) <= 1.5, (out, curves)  # rounding


def test_the_interrupt_message_says_how_to_continue(capsys: pytest.CaptureFixture[str]) -> None:
    from imgclass.cli import run_stage

    def interrupted() -> int:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as e:
        run_stage(interrupted, on_interrupt="files already written are complete; rerun it with --resume to continue "
                                            "the refinement")
    assert e.value.code == 130
    assert "interrupted: files already written are complete; rerun it with --resume" in capsys.readouterr().err


def test_ctrl_c_while_the_stage_is_being_recorded_is_one_line_not_a_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Recording in MLflow takes seconds after a stage's work: a Ctrl-C then printed ~70 lines."""
    import imgclass.cli as cli
    import imgclass.tracking as tracking
    from imgclass.params import load_params

    def recording(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(tracking, "track_stage", recording)
    monkeypatch.setattr(cli, "_parsed", load_params())
    monkeypatch.setattr(cli, "_tracked", False)
    with pytest.raises(SystemExit) as e:
        cli.run_stage(lambda: 0)
    assert e.value.code == 130
    assert capsys.readouterr().err == ("interrupted while recording the stage in the run history: its outputs are "
                                       "written and complete; the run history may lack this stage (compareRuns.py)\n")


def test_stage5_refuses_svm_settings_other_than_stage4s(pipeline_dir: Path, tmp_path: Path) -> None:
    """A --set given to stage 4 and forgotten at stage 5 recorded a run whose svm_CVals did not hold
    the C it reported (the run history credited 94.67% at C = 300 to the default grid)."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(pipeline_dir, data)
    out = run_script("4_trainSVM.py", *SMALL, "--set", "svm_CVals=[0.1,1]", data_dir=data).stdout
    assert "cross-validation accuracy on the training set (3 folds):" in out
    stale = run_script("5_evaluate.py", *SMALL, data_dir=data, check=False)
    assert stale.returncode == 1 and "Traceback" not in stale.stderr, stale.stderr
    assert ("svm_fixed.npz was made with svm_CVals = [0.1, 1.0], but the parameters now say "
            "[0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0]: give the same values again (--set svm_CVals=[0.1,1.0]") \
        in stale.stderr, stale.stderr
    assert "rerun scripts/4_trainSVM.py" in stale.stderr
    # A photo added since stage 1 is in no result: stage 5 says so (and stage 3 would).
    images = data / "images" / "fashionTextureDemo"
    shutil.copy(next((images / "dotted").iterdir()), images / "dotted" / "added_later.jpg")
    out = run_script("5_evaluate.py", *SMALL, "--set", "svm_CVals=[0.1,1]", data_dir=data).stdout  # as typed at stage 4
    assert "note: 1 image file(s) in " in out and "dotted/added_later.jpg" in out, out
    assert "changed since scripts/3_runDNN.py" not in out
    # A test photo replaced by another under its name: its features (and score) are of the old file.
    test_image = json.loads((data / "proc" / "fashionTextureDemo" / "split.json").read_text())["test"][0][0]
    other = next(f for f in (images / "striped").iterdir() if f.name != Path(test_image).name)
    shutil.copy(other, images / test_image)
    out = run_script("5_evaluate.py", *SMALL, "--set", "svm_CVals=[0.1,1]", data_dir=data).stdout
    assert (f"note: 1 test image file(s) changed since scripts/3_runDNN.py computed their features ({test_image}: "
            "edited or replaced): the features are of the files as they were; rerun "
            "scripts/3_runDNN.py, then the stages after it") in out, out


def test_files_of_an_earlier_version_that_record_no_settings_are_named(pipeline_dir: Path, tmp_path: Path) -> None:
    """Upgraded in place: split.json and features written before they recorded their settings pass
    every settings check (a --set rf_inputResolution=128 was credited to features made at 64 px);
    the stages say they cannot check them, and how to have them recorded."""
    import shutil

    import numpy as np

    from imgclass.fileio import load_npz, save_npz
    from imgclass.provenance import MODEL_SETTINGS

    data = Path(shutil.copytree(pipeline_dir, tmp_path / "data"))
    proc = data / "proc" / "fashionTextureDemo"
    split = json.loads((proc / "split.json").read_text())
    (proc / "split.json").write_text(json.dumps({k: v for k, v in split.items()
                                                 if k not in ("settings", "moved", "sizes")}, indent=2) + "\n")
    for side in ("train", "test"):  # as stage 3 wrote them before 2026-11-30
        path = proc / f"features_fixed_{side}.npz"
        arrays = {k: np.asarray(v) for k, v in load_npz(path).items()
                  if k not in (*MODEL_SETTINGS, "file_stats", "file_hashes")}
        save_npz(path, **arrays)
    out = run_script("5_evaluate.py", *SMALL, data_dir=data).stdout
    assert ("note: split.json was written by an earlier version, which did not record the settings it was made "
            "with: they cannot be checked against the parameters now (rerun scripts/1_prepareData.py to record them; "
            "it keeps the split's sides where the parameters' randomSeed, ratioTrainTest and imagesSplitBy make "
            "them)") in out, out
    assert ("note: features_fixed_test.npz was written by an earlier version, which did not record the settings it "
            "was made with: they cannot be checked against the parameters now (rerun scripts/3_runDNN.py to record "
            "them)") in out, out
    # Stage 1 again: the same split (its settings make it), now recorded; the split's note is gone.
    out = run_script("1_prepareData.py", *SMALL, data_dir=data).stdout
    assert "note: the same split as the earlier split.json" in out, out
    assert json.loads((proc / "split.json").read_text())["settings"]["randomSeed"] == 0
