"""Run history in MLflow: every execution of the pipeline on a data set is one MLflow run.

Stages are separate processes, so the run they belong to is remembered in
`proc/<datasetName>/tracking_<classifier>.json`. A stage joins that *pipeline run* (as a nested
child run of its own) unless it starts a new execution, which is the case when

- no pipeline run is remembered, or it was deleted, or it lives in another store / experiment;
- the parameters differ from the pipeline run's (every run's params describe all of its stages);
- the stage comes before the last stage recorded (e.g. stage 0 or 1 after stage 5: a rerun).

The pipeline run holds what a comparison needs: params = all of PARAMETERS.py; metrics = the
accuracies and AUCs of `metrics.json` (plus per-epoch curves of `training_curves.json`); artifacts =
the plots and metrics files the stages wrote; tags = data set, classifier, git commit. Each stage's
child run records its command line and duration.

Tracking runs after a stage has written its outputs, and its failures are warnings: a broken or
unreachable store never costs a stage its results. `mlflow` is imported only when a stage is
recorded (the import alone takes seconds).
"""

from __future__ import annotations

import ast
import configparser
import contextlib
import hashlib
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from imgclass.fileio import DamagedFileError, read_json, write_json
from imgclass.params import Params
from imgclass.provenance import MODEL_SETTINGS, same_setting, setting_value, split_hash, test_set_hash
from imgclass.terminal import NAME_COLUMNS, auc_text, first_few, ljust, name_column, percent_text

ENV_SWITCH = "IMGCLASS_TRACKING"  # "0", "off" or "false" turns tracking off whatever track_enabled says
PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_FILE = PROJECT_ROOT / "aml_config" / "tracking.ini"
DEFAULT_DB = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
LEVEL_TAG = "imgclass.level"  # "pipeline" for a pipeline run, "stage" for a stage's child run
SPLIT_TAG = "split"  # provenance.split_hash of split.json when the run's stages ran: which images it used
TEST_TAG = "test_set"  # provenance.test_set_hash: the test images and their labels, which the figures are of
SAVED_AS_TAG = "saved_as"  # training_curves.json's saved_as: what stage 2 saved (the pretrained network if it diverged)
COMMITS_TAG = "git_commits"  # every commit the run's stages ran at, in order, where they were more than one
# Files of results/<ds>/<classifier>/ that become artifacts of the pipeline run when a stage writes them.
ARTIFACT_PATTERNS = ("*.png", "metrics*.json", "training_curves.json", "predictions*.tsv", "label_suspects.tsv")
_STAGE_SCRIPT = re.compile(r"^(\d+)_(\w+)$")
# Numbered like a stage, but a client of the deployed service, not a step of the pipeline: recorded, it
# would start a pipeline run of its own (with no results) each time a photo is sent.
_NOT_STAGES = {"6_callWebservice"}


class TrackingError(RuntimeError):
    """The tracking store cannot be used as configured."""


def tracking_enabled(p: Params) -> bool:
    return bool(p.track_enabled) and os.environ.get(ENV_SWITCH, "").strip().lower() not in ("0", "off", "false", "no")


def _config(path: Path | None = None) -> dict[str, str]:
    """The [mlflow] section of aml_config/tracking.ini ({} when the file is absent)."""
    path = path or CONFIG_FILE
    if not path.is_file():
        return {}
    cp = configparser.ConfigParser()
    try:
        cp.read(path, encoding="utf-8")
    except configparser.Error as e:
        raise TrackingError(f"{path}: {e}") from e
    return {k: v.strip() for k, v in cp["mlflow"].items()} if cp.has_section("mlflow") else {}


def default_uri(p: Params) -> str:
    return "sqlite:///" + (p.data_dir.resolve() / DEFAULT_DB).as_posix()


def resolve_uri(p: Params) -> str:
    """track_uri, else $MLFLOW_TRACKING_URI, else aml_config/tracking.ini, else SQLite in DATA_DIR."""
    return (p.track_uri or os.environ.get("MLFLOW_TRACKING_URI", "").strip()
            or _config().get("tracking_uri", "") or default_uri(p))


def resolve_experiment(p: Params) -> str:
    return p.track_experiment or _config().get("experiment", "") or f"imgclass-{p.datasetName}"


def ui_command(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    # Quoted for the shell it will be pasted into: a DATA_DIR under C:\Users\John Smith or
    # ~/my data would otherwise split into two arguments.
    quoted = (f'"{uri}"' if " " in uri else uri) if os.name == "nt" else shlex.quote(uri)
    return f"mlflow ui --backend-store-uri {quoted}"


def stage_of(script: str | Path) -> tuple[int, str] | None:
    """(2, "refineDNN") for scripts/2_refineDNN.py; None for scripts that are not pipeline stages."""
    stem = Path(script).stem
    m = _STAGE_SCRIPT.match(stem)
    return (int(m.group(1)), m.group(2)) if m and stem not in _NOT_STAGES else None


def affects_results(name: str) -> bool:
    """Whether a parameter can change what the stages compute: not where the service listens or how
    many processes do the work (dep_*, *workers, run_boCache), nor where runs are recorded (track_*),
    nor active learning's choices (al_*), nor how stage 0 or scrapeImages.py fetch or make the images
    (dl_*, scrape_*, urlsFile, demoImagesPerClass: the images themselves are what split.json holds,
    and stage 0 run again starts a new run anyway), nor which side stage 5 scores (eval_set: as
    `--on train`, its figures are recorded under their own names, train_*), nor how many images
    stage 3 runs through the network at once (run_mbSize: the features are the same to the bit, and
    lowering it is the advice when stage 3 runs out of memory). Only these split a pipeline run in two
    (moving the service to another port started a new run, and the stages after it looked like a
    rerun; eval_set = "train" started one holding stage 5 alone)."""
    return not (name.startswith(("dep_", "track_", "al_", "dl_", "scrape_")) or name.endswith("workers")
                or name in ("run_boCache", "run_mbSize", "urlsFile", "demoImagesPerClass", "eval_set"))


# Parameters only stage 1 uses (its leakage check): their effect is split.json, whose hash the run records
# (SPLIT_TAG). Given to stage 1 alone they are no difference at a later stage: the run it started is
# continued, with the values stage 1 used recorded, rather than a second run recording the defaults.
SPLIT_ONLY_PARAMS = ("leakageCheck", "dedup_threshold")


def params_digest(p: Params, results_only: bool = False) -> str:
    """A hash of the parameters (with `results_only`, of those that can change a result of the
    run's classifier, numbers compared by value: `svm_CVals = [1, 10]` is `[1.0, 10.0]`; not
    SPLIT_ONLY_PARAMS, which _join_or_start compares at stage 1 only)."""
    if not results_only:
        values = p.as_dict()
    else:
        values = {k: _canonical(setting_value(k, v)) for k, v in p.as_dict().items()
                  if affects_results(k) and _applies(k, p.classifier) and k not in SPLIT_ONLY_PARAMS}
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


# The results digest of a state file written before it compared values as _canonical does (and only
# the classifier's parameters, or with eval_set in it) is not comparable: such a state is judged by the
# recorded values alone.
DIGEST_VERSION = 5


def _canonical(value: Any) -> Any:
    """A parameter's value with numbers as floats (a bool is left a bool; parameters are typed, so a
    bool is never compared with a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, list, tuple, dict)):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    return [_canonical(v) for v in value]


def _same_value(name: str, recorded: str | None, value: Any) -> bool:
    """Whether the value of parameter `name` recorded in MLflow (its str, at most 6000 characters) is `value`."""
    now = str(value)[:6000]
    if recorded is None or recorded == now:
        return recorded == now
    try:  # compared as the stages' own checks compare them (provenance.same_setting)
        return same_setting(name, ast.literal_eval(recorded), ast.literal_eval(now))
    except (ValueError, SyntaxError, MemoryError, RecursionError):  # text, or cut at 6000 characters
        return False


def state_path(p: Params) -> Path:
    return p.proc_dir / f"tracking_{p.classifier}.json"


def git_commit(root: Path = PROJECT_ROOT) -> tuple[str, bool]:
    """(commit, has uncommitted changes) of the project, ("unknown", False) outside a git checkout.
    PARAMETERS.py and the notebooks do not count: a user edits the one and runs the others (which
    saves them), the parameters are recorded anyway, and the code of the stages is what a commit pins."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown", False
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)PARAMETERS.py", ":(exclude)notebooks/*.ipynb"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def metric_key(name: str) -> str:
    """MLflow keys allow letters, digits, _ - . space / :; anything else (e.g. in a class name) becomes _."""
    return re.sub(r"[^\w\-. /:]", "_", name)


CLASS_NAMES_TAG = "class_names"  # {metric key of a class: its real name}, for classes whose key differs


def class_key(name: str) -> str:
    """A class name as part of a metric key. One that metric_key changes ("a+b", "T-Shirt (XL)")
    also gets a short hash of its real name, so that it cannot take the key of another class
    ("a_b") and have one class's figures shown under the other's name."""
    key = metric_key(name)
    return key if key == name else f"{key}_{hashlib.sha1(name.encode()).hexdigest()[:6]}"


def metrics_from_json(m: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a stage-5 metrics.json as flat MLflow metrics (accuracies as fractions)."""
    out: dict[str, float] = {}

    def put(key: str, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[prefix + metric_key(key)] = float(value)

    put("overall_accuracy", m.get("overall_accuracy"))
    put("class_averaged_accuracy", m.get("class_averaged_accuracy"))
    aucs = [v["auc"] for v in m.get("per_class", {}).values() if v.get("auc") is not None]
    if aucs:
        put("class_averaged_auc", sum(aucs) / len(aucs))
    for c, v in m.get("per_class", {}).items():
        put(f"accuracy_{class_key(c)}", v.get("accuracy"))
        put(f"precision_{class_key(c)}", v.get("precision"))
        put(f"auc_{class_key(c)}", v.get("auc"))
    for key in ("n_train", "n_test", "svm_C"):
        put(key, m.get(key))
    return out


def curves_from_json(curves: dict[str, Any]) -> list[tuple[str, float, int]]:
    """(key, value, epoch) for every per-epoch series of training_curves.json."""
    epochs = curves.get("epoch")
    out = []
    for key, values in curves.items():
        if key == "epoch" or not isinstance(values, list):
            continue
        for i, v in enumerate(values):
            step = int(epochs[i]) if isinstance(epochs, list) and i < len(epochs) else i
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out.append((f"curve_{metric_key(key)}", float(v), step))
    return out


def written_since(folder: Path, since: float, patterns: Iterable[str] = ARTIFACT_PATTERNS) -> list[Path]:
    """Files of `folder` matching `patterns` modified at or after `since` (what this stage wrote)."""
    if not folder.is_dir():
        return []
    found = {f for pat in patterns for f in folder.glob(pat) if f.is_file() and f.stat().st_mtime >= since - 1.0}
    return sorted(found)


def _mlflow_env() -> None:
    """Set before mlflow is first imported: no usage telemetry (nor its ~/.config/mlflow file), and an
    unreachable server fails in seconds rather than after minutes of retries."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")


def _client(uri: str) -> Any:
    _mlflow_env()
    import logging

    from mlflow.tracking import MlflowClient

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: Any, name: str, uri: str) -> str:
    """The id of the active experiment `name`, created (artifacts beside a SQLite store) when missing."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage != "active":
            raise TrackingError(f"experiment {name!r} is deleted in {uri}: restore it or set track_experiment")
        return exp.experiment_id
    location = None
    if (db := _sqlite_file(uri)) is not None:
        # Artifacts beside the database, not in ./mlruns of whatever folder the stage ran from.
        location = (db.resolve().parent / ARTIFACTS_DIR).as_uri()
    return client.create_experiment(name, artifact_location=location)


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Held (waiting for it) while a stage opens a SQLite store and finds or creates its experiment.
    Two stages started at once on a new store (two shells, svm and dnn) both created MLflow's tables,
    and the second's tracking failed ("table ... already exists"); on a new data set both created its
    experiment (the second: "already exists"). A file beside the database: SQLite's own locks are
    another kind (fcntl), and the database may not exist yet. No-op for other stores and on Windows."""
    db = _sqlite_file(uri)
    try:
        import fcntl
    except ImportError:
        fcntl = None  # type: ignore[assignment]
    if db is None or fcntl is None or not db.parent.is_dir():  # no folder: MLflow says so, not this
        yield
        return
    with open(db.with_name(db.name + STORE_LOCK_SUFFIX), "a", encoding="utf-8") as f:  # closed: released
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


STORE_LOCK_SUFFIX = ".lock"  # mlflow.db.lock beside mlflow.db


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite:/// store, None for another kind."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def _file_uri_path(uri: str) -> str:
    """The OS path of a file: URI. Its host is kept: Path.as_uri() writes a Windows share
    (\\\\server\\share\\data) as file://server/share/data, and the path alone (\\share\\data) named a
    folder on the current drive, outside DATA_DIR, so every stage refused to track there."""
    parsed = urlparse(uri)
    host = "" if parsed.netloc in ("", "localhost") else parsed.netloc
    return url2pathname(f"//{host}{parsed.path}" if host else parsed.path)


def _local_folder(location: str) -> Path | None:
    """The folder of a file: (or plain path) artifact location; None for a remote one (s3:, http:, ...)."""
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(_file_uri_path(location)).resolve()
    if len(parsed.scheme) <= 1:  # a plain path, or a Windows drive letter
        return Path(location).resolve()
    return None


def _outside(location: str, data_dir: Path) -> Path | None:
    """The local folder of `location` when it is not under `data_dir`, else None."""
    folder = _local_folder(location)
    return folder if folder is not None and not folder.is_relative_to(data_dir.resolve()) else None


def relocated_experiment(name: str, p: Params) -> str:
    """The experiment that takes the runs of `name` in this DATA_DIR when `name` keeps its artifacts
    elsewhere (DATA_DIR was moved): one per DATA_DIR, so every stage of every later run finds it."""
    return f"{name} ({p.data_dir.resolve().as_posix()})"


def _experiment_for(client: Any, p: Params, uri: str) -> tuple[str, str]:
    """(experiment id, note) for this stage: the configured experiment, except in the default store
    when that experiment's artifacts live outside DATA_DIR. An MLflow experiment keeps the absolute
    artifact folder it was created with, so after DATA_DIR is moved MLflow would write every new
    artifact to (and silently recreate) the old folder; the runs go to an experiment of this DATA_DIR
    instead, and the note says so (empty when nothing was changed)."""
    name = resolve_experiment(p)
    exp_id = _experiment_id(client, name, uri)
    if uri != default_uri(p):
        return exp_id, ""  # a store chosen by the user: its artifact folders are the user's choice too
    elsewhere = _outside(client.get_experiment(exp_id).artifact_location, p.data_dir)
    if elsewhere is None:
        return exp_id, ""
    here = relocated_experiment(name, p)
    here_id = _experiment_id(client, here, uri)
    location = client.get_experiment(here_id).artifact_location
    if _outside(location, p.data_dir) is not None:
        raise TrackingError(f"experiments {name!r} and {here!r} in {uri} both keep their artifacts outside "
                            f"DATA_DIR {p.data_dir}: set track_experiment to a new experiment name")
    note = (f"note: experiment {name!r} keeps its artifacts in {elsewhere}, outside DATA_DIR {p.data_dir} "
            f"(was DATA_DIR moved?), so this run is recorded in experiment {here!r} with its artifacts in "
            f"{_local_folder(location) or location}. To record elsewhere, set track_experiment to another name "
            f"(a new experiment keeps its artifacts in DATA_DIR/{ARTIFACTS_DIR}).")
    return here_id, note


@dataclass
class StageRecord:
    """What track_stage recorded: the pipeline run, the stage's child run and where they live."""

    uri: str
    experiment_id: str
    run_id: str
    stage_run_id: str
    new_run: bool
    artifacts: list[str] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""  # why the run went to another experiment than the configured one ("" when it did not)
    why_new: str = ""  # why a new pipeline run was started rather than the remembered one continued


def _join_or_start(client: Any, p: Params, state: dict, uri: str, exp_id: str, stage: int,
                   split_now: str) -> tuple[str | None, str]:
    """(the remembered pipeline run, "") when this stage continues it, else (None, why not), so that
    a user who sees runs split knows which parameter or rerun split them ("" for a first run).
    `split_now`: the SPLIT_TAG value of split.json as it is ("" without one)."""
    if not state.get("run_id"):
        return None, ""
    if state.get("uri") != uri or state.get("experiment_id") != exp_id:
        return None, f"run {state['run_id'][:8]} is in another store or experiment"
    try:
        run = client.get_run(state["run_id"])
    except Exception:  # deleted for good, or never existed in this store
        return None, f"run {state['run_id'][:8]} is gone from the store"
    if run.info.lifecycle_stage != "active":
        return None, f"run {state['run_id'][:8]} was deleted"
    if state.get("params_digest") != params_digest(p):
        then = run.data.params
        # Only what the classifier uses (an svm run does not refine: rf_maxEpochs is no difference),
        # and numbers by value, as the stages' own checks compare them.
        # A parameter the run did not record at all was added to the project since it started (its
        # default is the earlier behaviour): no difference the run's record could show.
        differ = sorted(k for k, v in p.as_dict().items()
                        if affects_results(k) and _applies(k, p.classifier) and k in then
                        and not _same_value(k, then[k], v) and (stage <= 1 or k not in SPLIT_ONLY_PARAMS))
        # The digest decides where the state has one (MLflow keeps 6000 characters of a value: a change
        # past them is a change); a state of an earlier version is judged by the recorded values.
        digest_differs = (state.get("digest_version") == DIGEST_VERSION
                          and state.get("results_digest") != params_digest(p, results_only=True))
        if differ or digest_differs:
            return None, f"parameters differ from run {state['run_id'][:8]}'s: {first_few(differ, 5) or 'not recorded alike'}"
    if stage < state.get("last_stage", -1):
        return None, f"stage {stage} after stage {state['last_stage']} of run {state['run_id'][:8]}: a rerun"
    # Stage 1 run since, untracked (or its tracking failed) or for another classifier (split.json is
    # shared, the state file is not): the run's figures were of other data, and this stage's would
    # replace them. (Stage 1 itself makes the split; stage 0 comes before it.)
    recorded = run.data.tags.get(SPLIT_TAG)
    if stage >= 2 and recorded and split_now and split_now != recorded:
        return None, (f"split.json changed since run {state['run_id'][:8]}'s stages (stage 1 ran since, untracked "
                      "or for another classifier)")
    return run.info.run_id, ""


def record_stage(p: Params, script: str | Path, started: float, argv: Sequence[str] = ()) -> StageRecord | None:
    """Record a finished stage in MLflow; None when tracking is off or `script` is not a stage."""
    stage = stage_of(script)
    if stage is None or not tracking_enabled(p):
        return None
    t0 = time.time()
    _mlflow_env()
    from mlflow.entities import Metric, Param, RunTag

    uri = resolve_uri(p)
    with _store_lock(uri):
        client = _client(uri)
        exp_id, note = _experiment_for(client, p, uri)
    path = state_path(p)
    try:
        state = read_json(path) if path.is_file() else {}
        damaged = ""
    except DamagedFileError as e:
        # Read by every stage before it writes it: kept as an error, it would stop tracking for good.
        state, damaged = {}, f"{path.name} was damaged ({e}), so the run it named is not continued"
    split_now = split_hash(p.split_path)[:10] if p.split_path.is_file() else ""
    run_id, why_new = _join_or_start(client, p, state, uri, exp_id, stage[0], split_now)
    why_new = why_new or damaged
    new_run = run_id is None
    start_ms = int(started * 1000)
    commit, dirty = git_commit()
    if new_run:
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(started))
        tags = {"dataset": p.datasetName, "classifier": p.classifier, "backbone": p.rf_pretrainedModel,
                "git_commit": commit, "git_dirty": str(dirty).lower(), "mlflow.source.git.commit": commit,
                LEVEL_TAG: "pipeline"}
        run_id = client.create_run(exp_id, start_time=start_ms, tags=tags,
                                   run_name=f"{p.datasetName} {p.classifier} {stamp}").info.run_id
        items = [Param(k, str(v)[:6000]) for k, v in sorted(p.as_dict().items())]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per call
            client.log_batch(run_id, params=items[i:i + 100])
        state = {"uri": uri, "experiment_id": exp_id, "run_id": run_id, "params_digest": params_digest(p),
                 "results_digest": params_digest(p, results_only=True), "digest_version": DIGEST_VERSION,
                 "stages": []}
    else:
        _note_code_version(client, run_id, commit, dirty)
    label = f"{stage[0]}_{stage[1]}"
    child = client.create_run(exp_id, start_time=start_ms, run_name=label, tags={
        "mlflow.parentRunId": run_id, LEVEL_TAG: "stage", "stage": label,
        "command": " ".join([Path(script).name, *argv])[:5000], "git_commit": commit, "git_dirty": str(dirty).lower()})
    now_ms = int(time.time() * 1000)
    client.log_batch(child.info.run_id, metrics=[Metric("stage_seconds", (t0 - started), now_ms, 0)])
    client.set_terminated(child.info.run_id, "FINISHED", end_time=int(t0 * 1000))

    stages = sorted(set(state.get("stages", [])) | {label})
    if split_now:
        # Which images the run trained and tested on: runs on different data (photos added, the split
        # made anew) can have the same parameters, and compareRuns.py shows this to tell them apart.
        client.log_batch(run_id, tags=[RunTag(SPLIT_TAG, split_now),
                                       RunTag(TEST_TAG, test_set_hash(p.split_path)[:10])])
    # The state file is saved as soon as the run and this stage exist in the store: should logging the
    # figures or uploading the artifacts fail below, the next stage still joins this pipeline run
    # instead of starting one of its own.
    write_json(path, {**state, "last_stage": stage[0], "stages": stages})
    client.log_batch(run_id, tags=[RunTag("stages", ",".join(stages))])

    written = written_since(p.results_dir, started)
    metrics: list[Any] = []
    renamed: dict[str, str] = {}
    for f in written:
        if f.name.startswith("metrics") and f.suffix == ".json":
            prefix = "" if f.name == "metrics.json" else f.stem[len("metrics"):].strip("_") + "_"
            m = read_json(f)
            metrics += [Metric(k, v, now_ms, 0) for k, v in metrics_from_json(m, prefix).items()]
            renamed.update({class_key(c): c for c in m.get("per_class", {}) if class_key(c) != c})
        elif f.name == "training_curves.json":
            curves = read_json(f)
            metrics += [Metric(k, v, now_ms, s) for k, v, s in curves_from_json(curves)]
            if isinstance(saved_as := curves.get("saved_as"), str) and saved_as:
                # What was saved (weights averaged, ...; or the pretrained network where refining
                # diverged): runs with alike figures are told apart by it in compareRuns.py.
                client.log_batch(run_id, tags=[RunTag(SAVED_AS_TAG, saved_as[:5000])])
    svm_file = p.svm_path if p.classifier != "dnn" else None
    if svm_file is not None and svm_file.is_file() and svm_file.stat().st_mtime >= started - 1.0 and \
            not any(m.key == "svm_C" for m in metrics):
        # Stage 4 chose C: shown in compareRuns.py also for a run that has no stage 5 (yet).
        from imgclass.svm import LinearSvm

        metrics.append(Metric("svm_C", float(LinearSvm.load(svm_file).C_), now_ms, 0))
    if renamed and len(text := json.dumps(renamed, ensure_ascii=False)) <= 5000:
        # The real names of classes whose metric keys had to change, for compareRuns.py to show.
        client.log_batch(run_id, tags=[RunTag(CLASS_NAMES_TAG, text)])
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    for f in written:
        client.log_artifact(run_id, str(f))
    client.set_terminated(run_id, "FINISHED", end_time=int(time.time() * 1000))
    return StageRecord(uri, exp_id, run_id, child.info.run_id, new_run, [f.name for f in written], time.time() - t0,
                       note, why_new)


def _note_code_version(client: Any, run_id: str, commit: str, dirty: bool) -> None:
    """A stage that continues a run at another commit (a `git pull` between stages), or with the
    project's files edited, marks the run: its git_commit alone would not reproduce it."""
    from mlflow.entities import RunTag

    tags = client.get_run(run_id).data.tags
    commits = [c for c in tags.get(COMMITS_TAG, tags.get("git_commit", "")).split(",") if c]
    new = [RunTag(COMMITS_TAG, ",".join([*commits, commit]))] if commits and commit not in commits else []
    if dirty and tags.get("git_dirty") != "true":
        new.append(RunTag("git_dirty", "true"))
    if new:
        client.log_batch(run_id, tags=new)


def store_problem(e: BaseException, uri: str) -> str:
    """What went wrong with the store at `uri`, in a line or two: MLflow's exceptions run to pages
    (a server's retries, a stack of causes), and a file store needs advice MLflow words otherwise."""
    text = " ".join(str(e).split())
    text = text if len(text) <= 300 else text[:300] + " ..."
    hint = ""
    if "maintenance mode" in text or uri.startswith("file:") or (uri and "://" not in uri):
        # MLflow 3 keeps the old file store read-only unless told otherwise.
        hint = ("; a folder store needs MLFLOW_ALLOW_FILE_STORE=true in the environment (MLflow 3), or use "
                "track_uri = \"sqlite:///FOLDER/mlflow.db\"")
    return f"{type(e).__name__}: {text}{hint}"


def track_stage(p: Params, script: str | Path, started: float, argv: Sequence[str] = ()) -> StageRecord | None:
    """record_stage, with any failure turned into a warning: the stage's outputs are already written."""
    try:
        rec = record_stage(p, script, started, argv)
    except Exception as e:  # noqa: BLE001 - whatever the store does, the stage itself succeeded
        try:
            where = resolve_uri(p)
        except Exception:  # noqa: BLE001 - the URI itself may be what failed
            where = ""
        print(f"warning: run tracking failed ({store_problem(e, where)}); the stage's outputs are written. "
              f"Set track_enabled = False (or {ENV_SWITCH}=0) to stop tracking.", file=sys.stderr)
        return None
    if rec is not None:
        if rec.note and rec.new_run:  # once per pipeline run, not again at each of its stages
            print(rec.note)
        what = "new pipeline run" if rec.new_run else "pipeline run"
        why = f" ({rec.why_new})" if rec.why_new else ""
        print(f"tracked in {what} {rec.run_id[:8]}{why} in {rec.seconds:.1f} s; browse: {ui_command(rec.uri)}")
    return rec


# ------------------------------------------------------------------------------------------------
# Reading runs back: scripts/compareRuns.py and the tests
# ------------------------------------------------------------------------------------------------

@dataclass
class RunSummary:
    run_id: str
    name: str
    start_time: int  # ms since the epoch
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]


_MAX_RESULTS = 50_000  # the most runs one MLflow search returns


def find_runs(p: Params, last: int = 5, run_ids: Sequence[str] = ()) -> list[RunSummary]:
    """The chosen runs (ids or unique id prefixes), else the `last` pipeline runs of the experiment,
    newest first. A store that cannot be read is a TrackingError naming it."""
    uri = resolve_uri(p)
    # MLflow creates a database it is pointed at, and the tables in an empty file (one a failed copy
    # left): reading writes nothing.
    db = _sqlite_file(uri)
    if db is not None and (not db.is_file() or db.stat().st_size == 0):
        what = "empty (0 bytes)" if db.is_file() else "not there"
        raise FileNotFoundError(f"no run history in {db} ({what}): run the pipeline with track_enabled = True"
                                + ("" if uri == default_uri(p) else ", or set track_uri to the store that holds it"))
    try:
        return _find_runs(p, uri, last, run_ids)
    except (FileNotFoundError, ValueError):  # said in our words already
        raise
    except Exception as e:  # noqa: BLE001 - MLflow's and its HTTP client's errors, all one thing here
        raise TrackingError(f"cannot read the run history in {uri} ({store_problem(e, uri)})") from e


def _find_runs(p: Params, uri: str, last: int, run_ids: Sequence[str]) -> list[RunSummary]:
    client = _client(uri)
    name = resolve_experiment(p)
    exp = client.get_experiment_by_name(name)
    # After DATA_DIR was moved, record_stage puts new runs in an experiment of their own (see
    # _experiment_for), one per folder it has lived in; the default store moves with DATA_DIR, so
    # the comparison shows them all, with the runs from before the first move.
    # (An absolute path in the brackets, as relocated_experiment writes it: a data set named "ft (copy)"
    # has an experiment "imgclass-ft (copy)" of its own.)
    relocated = re.compile(re.escape(name) + r" \((/|[A-Za-z]:/).*\)")
    moved = [e for e in client.search_experiments() if relocated.fullmatch(e.name)] if uri == default_uri(p) else []
    exp_ids = [e.experiment_id for e in (exp, *moved) if e is not None]
    if not exp_ids:
        names = sorted(e.name for e in client.search_experiments())
        datasets = [n.removeprefix("imgclass-") for n in names if n.startswith("imgclass-") and " (" not in n]
        there = f"; it holds runs of datasetName = {', '.join(datasets)}" if datasets else ""
        raise FileNotFoundError(f"no experiment {name!r} in {uri}: run the pipeline on {p.datasetName!r} first{there}")
    pipeline = f"tags.`{LEVEL_TAG}` = 'pipeline'"
    if run_ids:
        every = client.search_runs(exp_ids, pipeline, max_results=5000)
        runs = []
        for rid in run_ids:
            match = [r for r in every if r.info.run_id.startswith(rid)]
            if len(match) != 1:
                raise ValueError(f"run id {rid!r} matches {len(match)} pipeline runs of experiment {name!r}"
                                 + (_elsewhere(client, rid, exp_ids) if not match else ""))
            runs.append(match[0])
    else:
        if last < 1:
            raise ValueError(f"--last {last}: must be at least 1")
        # MLflow refuses max_results over 50000 ("cannot read the run history", of a store that reads
        # fine): --last 100000, meaning "all of them", asks for no more runs than there can be.
        runs = client.search_runs(exp_ids, pipeline, order_by=["attributes.start_time DESC"],
                                  max_results=min(last, _MAX_RESULTS))
    return [RunSummary(r.info.run_id, r.info.run_name or "", r.info.start_time or 0, dict(r.data.params),
                       dict(r.data.metrics), dict(r.data.tags)) for r in runs]


def _elsewhere(client: Any, rid: str, exp_ids: list[str]) -> str:
    """Where a run id not found in this data set's experiments is: the usual slip is an id copied
    from another data set's comparison while PARAMETERS.py names this one."""
    others = [e for e in client.search_experiments() if e.experiment_id not in exp_ids]
    found = {e.name for e in others if e.name.startswith("imgclass-")
             for r in client.search_runs([e.experiment_id], max_results=5000) if r.info.run_id.startswith(rid)}
    if not found:
        return ""
    # (An experiment of a moved DATA_DIR has the folder in brackets: see _find_runs.)
    datasets = sorted({re.sub(r" \((/|[A-Za-z]:/).*\)$", "", n.removeprefix("imgclass-")) for n in found})
    if len(datasets) > 1:
        return f"; runs of datasetName = {', '.join(map(repr, datasets))} start so"
    return f"; it is a run of datasetName = {datasets[0]!r}: add --set {shlex.quote('datasetName=' + datasets[0])}"


def _count(v: float | None) -> str:
    return "-" if v is None else str(int(v))


# The network settings every classifier uses (and where its weights are read from); the other rf_* and
# the aug_* values only refine it.
_NETWORK_PARAMS = (*MODEL_SETTINGS, "rf_weightsDir")


def _applies(name: str, classifier: str) -> bool:
    """Whether a run of `classifier` used the parameter: an svm run has no refinement, a dnn run no
    SVM, so their values there are PARAMETERS.py's, not a difference worth a row."""
    if classifier == "svm":
        return not name.startswith("aug_") and (not name.startswith("rf_") or name in _NETWORK_PARAMS)
    if classifier == "dnn":
        return not name.startswith("svm_")
    return True


CELL_MAX = 24  # characters of a value shown in a comparison cell unless `wide` (rf_lrPerMb, svm_CVals lists)


def _cell(value: str, wide: bool) -> str:
    """A value as a comparison cell: whole, or its beginning and end around a '…' when it is longer
    than CELL_MAX, so that two runs still fit side by side in a terminal."""
    if wide or len(value) <= CELL_MAX:
        return value
    head = (CELL_MAX - 1) // 2
    return value[:head] + "…" + value[-(CELL_MAX - 1 - head):]


def _cells(values: Sequence[str], wide: bool) -> list[str]:
    """A row's values shortened (_cell), or whole where shortening would make values that differ alike."""
    shown = [_cell(v, wide) for v in values]
    return shown if len(set(shown)) == len(set(values)) else list(values)


def _commit_cell(r: RunSummary) -> str:
    """The commit a run started at; '*' when the project had uncommitted changes at one of its stages,
    '+N' when its stages ran at N more commits (see comparison_notes)."""
    more = len(r.tags.get(COMMITS_TAG, "").split(",")) - 1 if COMMITS_TAG in r.tags else 0
    return (r.tags.get("git_commit", "-")[:10] + ("*" if r.tags.get("git_dirty") == "true" else "")
            + (f"+{more}" if more > 0 else ""))


def comparison_notes(runs: Sequence[RunSummary]) -> list[str]:
    """What a reader of format_comparison's table should know: runs tested on different test sets
    (images, or labels fixed since) whose test figures do not compare like for like, and runs whose
    code is not one commit's."""
    notes = []
    tested: dict[str, list[str]] = {}
    for r in runs:
        if TEST_TAG in r.tags:  # (runs recorded before the tag: unknown)
            tested.setdefault(r.tags[TEST_TAG], []).append(r.run_id[:8])
    if len(tested) >= 2:
        groups = "; ".join(", ".join(ids) for ids in tested.values())
        notes.append(f"the runs were tested on {len(tested)} different test sets (images, or their labels: {groups}): "
                     "their test figures do not compare like for like (the 'test set (hash)' row)")
    if dirty := [r.run_id[:8] for r in runs if r.tags.get("git_dirty") == "true"]:
        notes.append(f"git commit *: the project had uncommitted changes when a stage of {first_few(dirty)} ran; "
                     "they are not recorded, so the commit alone does not reproduce the run")
    if mixed := [f"{r.run_id[:8]} ({', '.join(c[:10] for c in r.tags[COMMITS_TAG].split(','))})"
                 for r in runs if len(r.tags.get(COMMITS_TAG, "").split(",")) > 1]:
        notes.append(f"git commit +N: the stages of {first_few(mixed)} ran at more than one commit "
                     "(the code changed between stages)")
    return notes


def format_comparison(runs: Sequence[RunSummary], all_params: bool = False, wide: bool = False,
                      width: int | None = None) -> str:
    """Runs side by side: the parameters that differ, then overall / class-averaged / per-class figures.
    Values longer than CELL_MAX are shortened unless `wide`. Where the table is wider than `width`
    columns (a terminal's), the runs come in blocks one under the other, each with the row names."""
    if not runs:
        return "no runs"
    rows: list[tuple[str, list[str]]] = [
        ("run id", [r.run_id[:8] for r in runs]),
        ("started", [time.strftime("%Y-%m-%d %H:%M", time.localtime(r.start_time / 1000)) for r in runs]),
        ("dataset", [r.tags.get("dataset", "-") for r in runs]),
        ("classifier", [r.tags.get("classifier", "-") for r in runs]),
        ("git commit", [_commit_cell(r) for r in runs]),
        ("stages", [",".join(s.split("_")[0] for s in r.tags.get("stages", "-").split(",")) for r in runs]),
    ]
    names = sorted(set().union(*(r.params for r in runs)))
    values = {n: [r.params.get(n, "-") if _applies(n, r.tags.get("classifier", "")) else "unused" for r in runs]
              for n in names}
    # Judged on whole values as recorded: a default no run changed differs only by "unused" (an svm
    # run beside a dnn run), and a value that no run used does not differ at all. Worker counts and
    # the like change no result (affects_results): only asked for.
    def differs(n: str) -> bool:
        used = any(_applies(n, r.tags.get("classifier", "")) for r in runs)
        return used and len({r.params.get(n, "-") for r in runs}) > 1 and affects_results(n)

    differ = [n for n in names if all_params or differs(n)]
    shown = {n: _cells(values[n], wide) for n in differ}
    rows.append((f"-- parameters{'' if all_params else ' that differ'} --", [""] * len(runs)))
    if not differ:
        rows.append(("(none)", [""] * len(runs)))
    rows += [(n, shown[n]) for n in differ]
    rows.append(("-- data --", [""] * len(runs)))
    rows.append(("split.json (hash)", [r.tags.get(SPLIT_TAG, "-") for r in runs]))
    rows.append(("test set (hash)", [r.tags.get(TEST_TAG, "-") for r in runs]))
    rows.append(("train / test images", [_count(r.metrics.get("n_train")) + " / " + _count(r.metrics.get("n_test"))
                                         for r in runs]))
    if any(SAVED_AS_TAG in r.tags for r in runs):
        rows.append(("refined model saved as", _cells([r.tags.get(SAVED_AS_TAG, "-") for r in runs], wide)))
    if any("svm_C" in r.metrics for r in runs):
        rows.append(("C chosen", ["-" if r.metrics.get("svm_C") is None else f"{r.metrics['svm_C']:g}" for r in runs]))
    rows.append(("-- test set --", [""] * len(runs)))
    rows.append(("overall accuracy", [percent_text(r.metrics.get("overall_accuracy")) for r in runs]))
    rows.append(("class-averaged accuracy", [percent_text(r.metrics.get("class_averaged_accuracy")) for r in runs]))
    rows.append(("class-averaged AUC", [auc_text(r.metrics.get("class_averaged_auc")) for r in runs]))
    classes = sorted({k[len("accuracy_"):] for r in runs for k in r.metrics if k.startswith("accuracy_")})
    real: dict[str, str] = {}
    for r in runs:
        try:
            real.update(json.loads(r.tags.get(CLASS_NAMES_TAG, "{}")))
        except ValueError:
            pass
    for c in classes:
        rows.append((f"accuracy {real.get(c, c)}", [percent_text(r.metrics.get(f"accuracy_{c}")) for r in runs]))
        if any(f"precision_{c}" in r.metrics for r in runs):  # runs recorded before precision was: none
            rows.append((f"precision {real.get(c, c)}", [percent_text(r.metrics.get(f"precision_{c}")) for r in runs]))
        rows.append((f"AUC {real.get(c, c)}", [auc_text(r.metrics.get(f"auc_{c}")) for r in runs]))
    # "accuracy <a class name of 60 characters>" would push every run's column off an 80-column terminal.
    col_w = [max(len(vals[i]) for _, vals in rows) for i in range(len(runs))]
    at_most = NAME_COLUMNS + len("precision ")
    if width and len(runs) >= 2:
        # ... and at 50 columns, beside a start time's 16, one run per block: nothing side by side.
        # Shorter row names where that lets two neighbouring runs fit (never under the fixed rows').
        pair = max(col_w[i] + col_w[i + 1] + 4 for i in range(len(runs) - 1))
        at_most = max(min(at_most, width - 2 - pair), len("class-averaged accuracy"))
    shown, label_w = name_column([k for k, _ in rows], at_most=at_most)
    blocks: list[list[int]] = [[]]  # the runs of each block: as many as fit beside the row names
    for i, w in enumerate(col_w):
        if blocks[-1] and width and label_w + sum(col_w[j] + 2 for j in blocks[-1]) + w + 2 > width:
            blocks.append([])
        blocks[-1].append(i)
    lines = []
    for k, block in enumerate(blocks):
        if len(blocks) > 1:
            lines += [""] * (k > 0) + [f"runs {block[0] + 1}-{block[-1] + 1} of {len(runs)}:"]
        for key, vals in rows:
            cells = "  ".join(f"{vals[i]:>{col_w[i]}}" for i in block)
            lines.append(f"{ljust(shown[key], label_w)}  {cells}".rstrip())
    return "\n".join(lines)
