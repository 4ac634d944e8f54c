from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from conftest import run_script
from imgclass.params import SCHEMA, ParameterError, load_params, parse_overrides, parse_value

ROOT = Path(__file__).resolve().parents[1]


def test_project_parameters_load_and_every_parameter_is_documented() -> None:
    p = load_params(ROOT / "PARAMETERS.py")
    assert set(p) == set(SCHEMA)
    text = (ROOT / "PARAMETERS.py").read_text()
    for name in SCHEMA:
        line = next(line for line in text.splitlines() if line.startswith(f"{name} ="))
        assert "#" in line and len(line.split("#", 1)[1].strip()) > 10, f"{name} lacks a one-line explanation"


def test_tutorial_defaults() -> None:
    p = load_params(ROOT / "PARAMETERS.py")
    assert p.ratioTrainTest == 0.75 and p.rf_inputResolution == 320 and p.classifier == "svm"
    assert p.svm_boL2Normalize is True and min(p.svm_CVals) == 1e-4 and max(p.svm_CVals) == 100


def test_env_overrides_data_dir_and_paths_follow(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMGCLASS_DATA_DIR", str(tmp_path))
    p = load_params(ROOT / "PARAMETERS.py", {"datasetName": "shirts", "classifier": "svm"})
    assert p.images_dir == tmp_path / "images" / "shirts"
    assert p.proc_dir == tmp_path / "proc" / "shirts"
    assert p.results_dir == tmp_path / "results" / "shirts" / "svm"
    assert p.features_path("train") == tmp_path / "proc" / "shirts" / "features_fixed_train.npz"
    assert p.replace(classifier="dnn").model_path.name == "model_refined.pt"


def test_parse_value_literal_else_string() -> None:
    assert parse_value("0.5") == 0.5
    assert parse_value("[1, 10]") == [1, 10]
    assert parse_value("True") is True
    assert parse_value("myPhotos") == "myPhotos"


def test_text_parameters_take_the_text_as_typed() -> None:
    # A data set named 2024 or 1e3, a port given as text elsewhere: quotes are needed nowhere for text.
    assert parse_overrides(["datasetName=2024", "urlsFile=1e3", "dep_rootPath=", "classifier='dnn'"]) == {
        "datasetName": "2024", "urlsFile": "1e3", "dep_rootPath": "", "classifier": "dnn"}
    assert parse_overrides(['datasetName="2024"'])["datasetName"] == "2024"
    assert parse_overrides(["dep_port=8080", "run_boFlipAverage=True"]) == {"dep_port": 8080, "run_boFlipAverage": True}
    assert load_params(overrides=parse_overrides(["datasetName=2024"])).datasetName == "2024"
    for typo in ("track_uri=None", "datasetName=['a', 'b']", "dep_host=True"):  # still refused, not made text
        with pytest.raises(ParameterError, match=r" = (None|\['a', 'b'\]|True): expected .*to mean the text: "):
            load_params(overrides=parse_overrides([typo]))
    with pytest.raises(ParameterError) as refused:
        load_params(overrides=parse_overrides(["datasetName=True"]))
    hint = str(refused.value).split("--set ")[1].split(" in a shell")[0]
    assert hint == "'datasetName=\"True\"'"
    import shlex  # what the shell passes on for that hint is taken as the text
    assert load_params(overrides=parse_overrides(shlex.split(hint))).datasetName == "True"


def test_a_negative_gradient_bound_is_refused_by_name() -> None:
    with pytest.raises(ParameterError, match=r"rf_maxGradNorm = -1.0: must be >= 0"):
        load_params(overrides=parse_overrides(["rf_maxGradNorm=-1"]))


def test_unknown_override_suggests_nearest_name() -> None:
    with pytest.raises(ParameterError, match="did you mean 'ratioTrainTest'"):
        parse_overrides(["ratioTrainTset=0.5"])
    with pytest.raises(ParameterError, match="NAME=VALUE"):
        parse_overrides(["classifier"])


@pytest.mark.parametrize(("name", "meant"), [
    ("rootDir", "DATA_DIR"),  # difflib's nearest was rf_weightsDir
    ("boEvalOnTrainingSet", 'eval_set = "train"'),  # difflib's nearest was rf_boBalanceTrainingSet
    ("rf_pretrainedModelFilename", "rf_pretrainedModel"),
    ("rf_inputResoluton", "rf_inputResolution"),
    ("al_selectionCriteria", "al_criterion"),
])
def test_the_cntk_tutorials_parameter_names_point_to_ours(name: str, meant: str, tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match=f"'{name}': that is the CNTK tutorial's name; here it is {meant}"):
        parse_overrides([f"{name}=1"])
    # In a parameters file (a tutorial user's own, say) too.
    own = tmp_path / "mine.py"
    own.write_text(f"{name} = 1\n")
    with pytest.raises(ParameterError, match=f"mine.py: unknown parameter '{name}': that is the CNTK tutorial's name"):
        load_params(own)


def test_tutorial_spellings_of_values_are_named() -> None:
    # The tutorial named its networks by file ("ResNet_18.model") and wrote "all images" as float('inf').
    with pytest.raises(ParameterError, match=r"allowed values are .*\(did you mean 'resnet18'\?\)"):
        load_params(overrides=parse_overrides(["rf_pretrainedModel=ResNet_18.model"]))
    with pytest.raises(ParameterError, match=r"\(did you mean 'svmDnnRefined'\?\)"):
        load_params(overrides=parse_overrides(["classifier=svm_dnn_refined"]))
    with pytest.raises(ParameterError, match=r"rf_maxTrainImages = inf: must be a finite number \(0 means no limit\)"):
        load_params(overrides={"rf_maxTrainImages": float("inf")})
    with pytest.raises(ParameterError, match=r"allowed values are [^(]*$"):  # no guess for a value like none
        load_params(overrides=parse_overrides(["rf_pretrainedModel=foo"]))


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("classifier", "knn", "allowed values are 'svm', 'dnn', 'svmDnnRefined'"),
        ("ratioTrainTest", 1.5, "strictly between 0 and 1"),
        ("rf_inputResolution", "big", "expected int"),
        ("rf_inputResolution", 8, "between 32 and 1024"),
        ("svm_CVals", [], "at least one value"),
        ("svm_CVals", [1, -1], "positive numbers"),
        ("svm_CVals", [1, float("inf")], "positive numbers"),
        ("imagesSplitBy", "random", "'filename', 'subdir'"),
        ("rf_pretrainedModel", "vgg16", "efficientnet_lite0"),
        ("svm_boL2Normalize", 1, "expected bool"),
        ("datasetName", "../x", "no slashes"),
        ("datasetName", "shirts ", r"must not start or end with a space \(did you mean 'shirts'\?\)"),
        ("datasetName", " ", "must be a folder name"),
        # Names Windows refuses: a DATA_DIR made on Linux would not copy there.
        ("datasetName", "run:1", r"must be a folder name on every system; 'run:1' contains ':'"),
        ("datasetName", "shirts.", "ends with a dot"),
        ("datasetName", "nul", "reserves for a device"),
        ("rf_averageLastEpochs", -1, "must be >= 0"),
        ("randomSeed", 2**32, "between 0 and 4294967295"),  # numpy and scikit-learn refuse larger seeds
        ("dep_rootPath", "classifier", 'must be "" or a path like "/classifier"'),
        ("dep_rootPath", "/classifier/", "no trailing /"),
        ("rf_lrPerMb", 0.001, r"one per epoch \(in brackets, even for one: \[0\.001\]\)"),
        ("svm_boL2Normalize", "true", r"expected bool \(True or False, capitalised: True\)"),
        # 1e999 reads as inf: it crashed socket.settimeout (stage 0) or trained to NaN (stage 2).
        ("dl_timeoutSec", float("inf"), "must be a finite number"),
        ("rf_headLrFactor", float("inf"), "must be a finite number"),
        ("rf_lrPerMb", [0.001, float("inf")], "positive numbers"),
        ("rf_l2RegWeight", 10**400, "too large for a number"),
        ("dl_timeoutSec", 1e12, r"at most 86400 \(a day\)"),  # finite, and still an OverflowError in a socket
        ("scrape_pauseSec", 1e12, r"between 0 and 86400"),
        ("scrape_attributes", ["striped", "dotted", "striped "], r"lists 'striped' more than once"),
    ],
)
def test_bad_values_say_what_is_allowed(name: str, value: object, message: str) -> None:
    with pytest.raises(ParameterError, match=message) as e:
        load_params(ROOT / "PARAMETERS.py", {name: value})
    assert name in str(e.value)


def test_int_accepted_for_float_and_params_are_read_only() -> None:
    p = load_params(ROOT / "PARAMETERS.py", {"ratioTrainTest": 0.5, "dl_timeoutSec": 3})
    assert p.dl_timeoutSec == 3.0 and isinstance(p.dl_timeoutSec, float)
    with pytest.raises(AttributeError, match="read-only"):
        p.classifier = "dnn"  # type: ignore[misc]
    with pytest.raises(AttributeError, match="did you mean"):
        p.clasifier  # noqa: B018


def test_unknown_name_in_parameters_file_is_an_error(tmp_path: Path) -> None:
    text = (ROOT / "PARAMETERS.py").read_text() + "\nsvm_Cvals = [1.0]\n"
    f = tmp_path / "PARAMETERS.py"
    f.write_text(text)
    with pytest.raises(ParameterError, match=r"PARAMETERS.py: unknown parameter 'svm_Cvals'; did you mean 'svm_CVals'"):
        load_params(f)


def test_a_parameters_file_of_ones_own_needs_only_what_it_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "shirts.py"
    f.write_text('datasetName = "shirts"\nclassifier = "dnn"\nrf_maxEpochs = 2\n')
    p = load_params(f)
    project = load_params(ROOT / "PARAMETERS.py")
    assert (p.datasetName, p.classifier, p.rf_maxEpochs) == ("shirts", "dnn", 2)
    assert p.as_dict() == {**project.as_dict(), "datasetName": "shirts", "classifier": "dnn", "rf_maxEpochs": 2}
    assert p.source == f
    # The project's own file must still define everything: it is where the defaults are.
    own = tmp_path / "project" / "PARAMETERS.py"
    own.parent.mkdir()
    own.write_text('datasetName = "shirts"\n')
    monkeypatch.setattr("imgclass.params.project_params_file", lambda: own)
    with pytest.raises(ParameterError, match=r"PARAMETERS\.py: missing parameter\(s\) DATA_DIR, urlsFile"):
        load_params(own)


@pytest.mark.parametrize("text, words", [
    ('datasetName = "photos"\nclassifier = dnn\n', r'bad\.py, line 2: NameError: name \'dnn\' is not defined \(text values go in quotes'),
    ('DATA_DIR = os.path.join("a", "b")\n', r"bad\.py, line 1: NameError: .*'os'.* \(import os at the top of the file\)"),
    ('randomSeed = randomSeed + 1\n', r"bad\.py, line 1: NameError: .*\(a --params file does not see PARAMETERS\.py's values"),
    ('import numpyy\n', r"bad\.py, line 1: ModuleNotFoundError: No module named 'numpyy'$"),
    ('x = (\n', r"bad\.py, line 1: SyntaxError"),
])
def test_python_errors_in_a_parameters_file_are_one_line_naming_it(tmp_path: Path, text: str, words: str) -> None:
    f = tmp_path / "bad.py"
    f.write_text(text)
    with pytest.raises(ParameterError, match=words):
        load_params(f)


def test_a_parameters_file_that_imports_parameters_py_is_told_it_need_not(tmp_path: Path) -> None:
    """The habit of config files elsewhere; a stage script cannot import PARAMETERS (not on its path)."""
    f = tmp_path / "mine.py"
    f.write_text('from PARAMETERS import *\nclassifier = "dnn"\n')
    proc = run_script("4_trainSVM.py", "--params", str(f), data_dir=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "mine.py, line 1: ModuleNotFoundError: No module named 'PARAMETERS' (a parameters file of your own " \
           "needs only the values it changes" in proc.stderr


def test_the_projects_own_file_is_blamed_for_its_own_mistakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "mine.py"
    mine.write_text('datasetName = "shirts"\n')
    project = tmp_path / "project" / "PARAMETERS.py"
    project.parent.mkdir()
    monkeypatch.setattr("imgclass.params.project_params_file", lambda: project)
    with pytest.raises(ParameterError, match=r"mine\.py sets 1 of the \d+ parameters, and the project's PARAMETERS\.py, "
                                             r"which gives the others, is not at .*project/PARAMETERS\.py"):
        load_params(mine)
    full = (ROOT / "PARAMETERS.py").read_text()
    project.write_text(full + "\nmyHelper = 3\n")
    with pytest.raises(ParameterError, match=r"project/PARAMETERS\.py: unknown parameter 'myHelper'"):
        load_params(mine)
    project.write_text(full.replace("svm_CVals =", "svm_Cvals_typo ="))
    with pytest.raises(ParameterError, match=r"project/PARAMETERS\.py: unknown parameter 'svm_Cvals_typo'"):
        load_params(mine)
    project.write_text(full.replace("\nsvm_CVals =", "\n# svm_CVals ="))
    with pytest.raises(ParameterError, match=r"missing parameter\(s\) svm_CVals: in neither .*mine\.py nor .*PARAMETERS\.py"):
        load_params(mine)
    # A full copy of its own reads nothing else: a broken project file does not matter to it.
    project.write_text("x = (\n")
    copy = tmp_path / "copy.py"
    copy.write_text(full.replace('datasetName = "fashionTextureDemo"', 'datasetName = "copied"'))
    assert load_params(copy).datasetName == "copied"


def test_a_missing_parameters_file_says_where_its_name_came_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ParameterError, match=r"parameters file not found: .*nope\.py \(--params\)"):
        load_params(tmp_path / "nope.py")
    (tmp_path / "mine.py").mkdir()
    with pytest.raises(ParameterError, match=r"parameters file .*mine\.py \(--params\) is a folder: name a \.py file"):
        load_params(tmp_path / "mine.py")
    monkeypatch.setenv("IMGCLASS_PARAMS", str(tmp_path / "env.py"))
    with pytest.raises(ParameterError, match=r"parameters file not found: .*env\.py \(IMGCLASS_PARAMS names it\)"):
        load_params()


def test_a_missing_model_says_which_classifier_stage_2_must_run_with(tmp_path: Path) -> None:
    for classifier, how in (("svm", r"scripts/2_refineDNN\.py first"),
                            ("svmDnnRefined", r"scripts/2_refineDNN\.py with classifier = 'svmDnnRefined' first")):
        p = load_params(overrides={"DATA_DIR": str(tmp_path), "classifier": classifier})
        with pytest.raises(FileNotFoundError, match=rf"model_(fixed|refined)\.pt not found: run {how}"):
            p.require_model()
    (tmp_path / "proc" / "fashionTextureDemo").mkdir(parents=True)
    (tmp_path / "proc" / "fashionTextureDemo" / "model_refined.pt").write_bytes(b"")
    assert load_params(overrides={"DATA_DIR": str(tmp_path), "classifier": "dnn"}).require_model().name == "model_refined.pt"


def test_a_missing_input_names_every_stage_still_to_run(tmp_path: Path) -> None:
    """Stage 5 before stages 3 and 4 said "run stage 3" and, that done, "run stage 4": both at once."""
    p = load_params(overrides={"DATA_DIR": str(tmp_path), "classifier": "svmDnnRefined"})
    p.proc_dir.mkdir(parents=True)
    needs = {"features": ["test", "train"], "svm": True}
    with pytest.raises(FileNotFoundError, match=r"model_refined\.pt not found: run scripts/1_prepareData\.py, then "
                       r"scripts/2_refineDNN\.py with classifier = 'svmDnnRefined', then scripts/3_runDNN\.py"):
        p.require_stage_outputs(**needs)  # no split yet: stage 1 first
    p.split_path.write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"model_refined\.pt not found: run scripts/2_refineDNN\.py with "
                       r"classifier = 'svmDnnRefined', then scripts/3_runDNN\.py, then scripts/4_trainSVM\.py first$"):
        p.require_stage_outputs(**needs)
    p.model_path.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"features_refined_test\.npz not found: run scripts/3_runDNN\.py, "
                       r"then scripts/4_trainSVM\.py first$"):
        p.require_stage_outputs(**needs)
    for side in ("test", "train"):
        p.features_path(side).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"svm_refined\.npz not found: run scripts/4_trainSVM\.py first$"):
        p.require_stage_outputs(**needs)
    p.svm_path.write_bytes(b"")
    p.require_stage_outputs(**needs)  # all there: no error


def test_the_service_grace_and_cors_parameters_are_checked_when_loaded() -> None:
    with pytest.raises(ParameterError, match=r"dep_graceSec = -1"):
        load_params(overrides={"dep_graceSec": -1})
    with pytest.raises(ParameterError, match=r"'https://App.example': a browser sends it as \"https://app.example\""):
        load_params(overrides={"dep_corsOrigins": ["https://App.example"]})
    assert load_params(overrides={"dep_graceSec": 0, "dep_corsOrigins": ["*"]}).dep_graceSec == 0


def test_the_service_refuses_a_negative_grace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from imgclass.serve import main

    assert main([str(tmp_path), "--grace", "-1"]) == 1  # said before the bundle is even looked at
    assert "error: --grace -1.0: must be >= 0" in capsys.readouterr().out


def test_a_data_dir_that_is_a_file_or_empty_is_a_parameter_error(tmp_path: Path) -> None:
    """Not a NotADirectoryError traceback deep in stage 0 (IMGCLASS_DATA_DIR=~/photos.zip, a slip)."""
    a_file = tmp_path / "photos.zip"
    a_file.write_bytes(b"PK")
    with pytest.raises(ParameterError, match=r"DATA_DIR = .*photos\.zip'?: .*photos\.zip is a file, not a folder"):
        load_params(ROOT / "PARAMETERS.py", {"DATA_DIR": str(a_file)})
    with pytest.raises(ParameterError, match=r"photos\.zip is a file, so no folder can be made below it"):
        load_params(ROOT / "PARAMETERS.py", {"DATA_DIR": str(a_file / "data")})
    with pytest.raises(ParameterError, match=r"DATA_DIR = '': must be a folder path"):
        load_params(ROOT / "PARAMETERS.py", {"DATA_DIR": ""})
    # a folder that does not exist yet is fine (stage 0 makes it), as is one that does
    assert load_params(ROOT / "PARAMETERS.py", {"DATA_DIR": str(tmp_path / "new" / "data")}).data_dir == tmp_path / "new" / "data"
    assert load_params(ROOT / "PARAMETERS.py", {"DATA_DIR": str(tmp_path)}).data_dir == tmp_path


def test_a_data_dir_of_no_users_home_or_too_long_a_name_is_a_parameter_error(tmp_path: Path) -> None:
    """Not a RuntimeError from pathlib's expanduser (DATA_DIR = "~imgclass_data", its slash left out)
    or an OSError from stat (a name longer than the file system allows) in a traceback."""
    with pytest.raises(ParameterError, match=r"DATA_DIR = '~no_such_user_imgclass/data': ~no_such_user_imgclass names "
                                             r"no user's home folder here \(did you mean ~/no_such_user_imgclass/data\?\)"):
        load_params(ROOT / "PARAMETERS.py", {"DATA_DIR": "~no_such_user_imgclass/data"})
    with pytest.raises(ParameterError, match=r"DATA_DIR = '.*xxxx': cannot be a folder: File name too long"):
        load_params(ROOT / "PARAMETERS.py", {"DATA_DIR": str(tmp_path / ("x" * 300))})
    # The other paths a user types, expanded as DATA_DIR is (urlsFile's RuntimeError came from stage 0).
    for name in ("urlsFile", "rf_weightsDir"):
        with pytest.raises(ParameterError, match=rf"{name} = '~no_such_user_imgclass/x': ~no_such_user_imgclass names "
                                                 r"no user's home folder here"):
            load_params(ROOT / "PARAMETERS.py", {name: "~no_such_user_imgclass/x"})
    proc = run_script("0_downloadData.py", "--urls", "~no_such_user_imgclass/urls.tsv", data_dir=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--urls ~no_such_user_imgclass/urls.tsv: ~no_such_user_imgclass names no user's home folder here" in proc.stderr



@pytest.mark.skipif(sys.platform == "win32", reason="the POSIX user database")
def test_a_home_folder_that_is_unknown_is_not_said_to_be_a_missing_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """With HOME unset and a user id the user database lacks (a container started with --user 12345),
    PARAMETERS.py's DATA_DIR is '~/imgclass_data' unexpanded: it was called a '~' of no user, and
    '~//imgclass_data' offered in its place. (In this process, as such a user: running as another user
    id needs the checkout readable by it, which a private temp folder or /root is not.)"""
    import pwd

    def no_entry(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv("IMGCLASS_DATA_DIR", raising=False)
    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    with pytest.raises(ParameterError) as e:
        load_params(ROOT / "PARAMETERS.py")
    assert ("DATA_DIR = '~/imgclass_data': ~, this user's home folder, is unknown here (HOME is not set, and the user "
            "database has no entry for this user): set HOME, or give a full path") in str(e.value), str(e.value)


@pytest.mark.parametrize("origin", ["http://[::1", "http://[zz]"])
def test_a_cors_origin_python_cannot_split_names_the_parameter(origin: str) -> None:
    """urlsplit's ValueError ("Invalid IPv6 URL") reached the terminal alone, naming no parameter."""
    with pytest.raises(ParameterError, match=re.escape(f"dep_corsOrigins = [{origin!r}]: {origin!r}: not an address (")):
        load_params(overrides={"dep_corsOrigins": [origin]})


def test_a_set_value_cut_at_a_space_by_the_shell_says_to_quote_it(capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`--set svm_CVals=[1, 10]` unquoted reached argparse as "--set svm_CVals=[1," and "10]": its
    "unrecognized arguments: 10]" did not say why."""
    from imgclass import cli
    from imgclass.cli import parse_stage, stage_parser

    monkeypatch.setattr(cli, "_parsed", None)  # parse_stage records the stage's parameters; not for later tests

    for argv, said in ((["--set", "svm_CVals=[1,", "10]"], "--set svm_CVals=[1, is cut short by the shell at a space "
                        "(then: 10]): quote the value, --set 'svm_CVals=[1, 10]', or write it without spaces"),
                       (["--set", "classifier=dnn", "stray"], "unrecognized arguments: stray")):
        with pytest.raises(SystemExit) as e:
            parse_stage(stage_parser("a stage", reads="x", writes="y"), argv)
        assert e.value.code == 2 and said in capsys.readouterr().err
    args, p = parse_stage(stage_parser("a stage", reads="x", writes="y"), ["--set", "svm_CVals=[1,10]"])
    assert p.svm_CVals == [1, 10]
