"""Load PARAMETERS.py, apply `--set` overrides, validate every value.

The config is a plain Python file (nanoGPT style) so a user reads and edits one place; this module
turns it into a validated, read-only `Params` object and knows where each stage's files live.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import math
import os
import sys
import traceback
import types
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from imgclass.backbones import BACKBONE_NAMES
from imgclass.fileio import portable_name_problem, require_file
from imgclass.images import MAX_PIXELS, MAX_RESOLUTION, MIN_RESOLUTION

ENV_DATA_DIR = "IMGCLASS_DATA_DIR"
ENV_PARAMS_FILE = "IMGCLASS_PARAMS"


class ParameterError(ValueError):
    """A parameter is unknown or has a value that is not allowed."""


@dataclass(frozen=True)
class Spec:
    """What one parameter accepts: a type (or types), optional choices and an extra check."""

    types: tuple[type, ...]
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], str | None] | None = None  # returns an error text, or None when fine
    expected: str = ""  # human description used in the error message
    unlimited: str = ""  # the value that means "no limit", named when inf is given (the tutorial's way)

    def validate(self, name: str, value: Any) -> Any:
        if float in self.types and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:  # an int past float's range (10**400): say so, not Python's OverflowError
                raise ParameterError(f"{name} = {value!r}: too large for a number") from None
        if isinstance(value, float) and not math.isfinite(value):
            # 1e999 reads as inf: a timeout of inf crashed socket.settimeout, an inf learning rate
            # trained to NaN; no parameter means "unlimited" by inf (0 means "off" where one can be off).
            hint = f" ({self.unlimited} means no limit)" if self.unlimited else ""
            raise ParameterError(f"{name} = {value!r}: must be a finite number{hint}")
        ok_type = isinstance(value, self.types) and not (
            isinstance(value, bool) and bool not in self.types
        )
        if not ok_type:
            raise ParameterError(f"{name} = {value!r}: expected {self._describe()}{_spelling_hint(value, self.types, name)}")
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices)
            near = _same_choice(value, self.choices)
            hint = f" (did you mean {near!r}?)" if near is not None else ""
            raise ParameterError(f"{name} = {value!r}: allowed values are {allowed}{hint}")
        if self.check is not None:
            problem = self.check(value)
            if problem:
                raise ParameterError(f"{name} = {value!r}: {problem}")
        return value

    def _describe(self) -> str:
        if self.expected:
            return self.expected
        return " or ".join(t.__name__ for t in self.types)


def _same_choice(value: Any, choices: tuple[Any, ...]) -> Any:
    """The choice `value` spells another way: in another case, with "_" or "-", or as the CNTK tutorial
    named its model files ("ResNet_18.model" is resnet18); None when there is none."""
    def key(v: str) -> str:
        v = v.lower()
        return "".join(ch for ch in (v[: -len(".model")] if v.endswith(".model") else v) if ch.isalnum())
    if not isinstance(value, str):
        return None
    return next((c for c in choices if isinstance(c, str) and key(c) == key(value)), None)


def _spelling_hint(value: Any, types: tuple[type, ...], name: str = "NAME") -> str:
    """How to write what was probably meant: a one-value list, a Python truth value."""
    if list in types and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f" (in brackets, even for one: [{value!r}])"
    if bool in types and isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
        return f" (True or False, capitalised: {value.lower() in ('true', 'yes', 'on')})"
    if types == (str,) and (value is None or isinstance(value, (bool, list, tuple, dict))):
        # --set takes a number as text, but these read as likely slips: for the text itself, quotes,
        # inside the shell's own (which the shell removes).
        return f""" (to mean the text: {name} = "{value}" in a parameters file, --set '{name}="{value}"' in a shell)"""
    return ""


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _fraction_open(v: float) -> str | None:
    return None if 0.0 < v < 1.0 else "must be strictly between 0 and 1"


def _fraction_closed_open(v: float) -> str | None:
    return None if 0.0 <= v < 1.0 else "must be in [0, 1)"


def _resolution(v: int) -> str | None:
    if MIN_RESOLUTION <= v <= MAX_RESOLUTION:
        return None
    return f"must be between {MIN_RESOLUTION} and {MAX_RESOLUTION} pixels"


def _c_values(v: Any) -> str | None:
    if not v:
        return "must hold at least one value"
    if not all(isinstance(c, (int, float)) and not isinstance(c, bool) and 0 < c < float("inf") for c in v):
        return "must be a list of positive numbers, e.g. [0.01, 0.1, 1.0]"
    return None


def _folds(v: int) -> str | None:
    return None if v >= 2 else "must be at least 2"


def _float_list(v: Any) -> str | None:
    if not v or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < float("inf") for x in v):
        return "must be a non-empty list of positive numbers"
    return None


# Python's sockets, sleeps and event loops refuse a wait past ~292 years (a timeout of 1e12 s ended
# stage 0 in an OverflowError from socket.settimeout); a day is more than any request or pause needs.
MAX_SECONDS = 86400.0


def _seconds(v: float) -> str | None:
    return None if 0 < v <= MAX_SECONDS else f"must be > 0 and at most {MAX_SECONDS:g} (a day)"


def _seconds_or_zero(v: float) -> str | None:
    return None if 0 <= v <= MAX_SECONDS else f"must be between 0 and {MAX_SECONDS:g} (a day)"


def _word_list(v: Any) -> str | None:
    if not v or not all(isinstance(w, str) and w.strip() for w in v):
        return "must be a non-empty list of non-empty strings"
    # Each word is searched with each of the other list's: a repeated one asked every query twice.
    if twice := sorted(w for w, n in Counter(w.strip() for w in v).items() if n > 1):
        return f"lists {', '.join(map(repr, twice))} more than once"
    return None


def origin_problem(origin: str) -> str | None:
    """Why `origin` can never match a browser's Origin header (scheme://host[:port], nothing after), or None."""
    if origin == "*":
        return None
    # The service compares the browser's Origin header with these strings exactly, and a browser
    # writes it one way: lower case, no user, no default port, nothing after the host.
    try:
        parts = urlsplit(origin)
        hostname = parts.hostname
    except ValueError as e:  # "http://[::1" or "http://[zz]": Python's words alone named no parameter
        return f"not an address ({e})"
    if parts.scheme not in ("http", "https") or not hostname:
        return 'expected scheme://host[:port], e.g. "https://example.com", or "*" for any'
    try:
        port = parts.port
    except ValueError:
        return "the port is not a number from 0 to 65535"
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    default = {"http": 80, "https": 443}[parts.scheme]
    canonical = f"{parts.scheme}://{host}" + ("" if port in (None, default) else f":{port}")
    if origin != canonical:
        return f'a browser sends it as "{canonical}" (lower case, no user, no default port, no path)'
    return None


def service_url(host: str, port: int) -> str:
    """The address a client on this machine calls the service at, listening on `host` (dep_host): an
    address that means "every interface" is reached at the loopback one, and an IPv6 address goes in
    brackets. Here, not in imgclass.serve, so that the client (6_callWebservice.py) finds the service
    where stage 6 put it without importing the server."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# The service's key: a secret, so read from the environment by the service and the client alike,
# never a parameter of a committed PARAMETERS.py.
ENV_API_KEY = "IMGCLASS_API_KEY"


def api_key_problem(key: str) -> str | None:
    """Why `key` cannot travel as an API key (None: it can): an HTTP header carries printable ASCII
    only. Says so without showing the key."""
    if all(" " <= c <= "~" for c in key):
        return None
    return (f"{ENV_API_KEY}: the key holds characters other than printable ASCII (letters, digits, punctuation, "
            "space), which an HTTP header cannot carry")


def _origins(v: Any) -> str | None:
    for origin in v:
        if not isinstance(origin, str):
            return f"{origin!r} is not a string"
        if problem := origin_problem(origin):
            return f"{origin!r}: {problem}"
    return None


def home_problem(value: str) -> str | None:
    """Why `value` cannot be expanded as a path ("~name/..." of no user on this machine: ~imgclass_data,
    the slash left out), or None. Path.expanduser raised a RuntimeError, a traceback in every stage."""
    try:
        Path(value).expanduser()
    except RuntimeError:
        head = Path(value).parts[0]
        if head == "~":  # no HOME, and a user id the user database lacks (a container run with --user 12345)
            return ("~, this user's home folder, is unknown here (HOME is not set, and the user database has no "
                    "entry for this user): set HOME, or give a full path")
        return f"{head} names no user's home folder here (did you mean ~/{value[1:]}?)"
    return None


def _data_dir_problem(value: str) -> str | None:
    """DATA_DIR must be a folder, or a path where one can be made: a file there (or in place of one
    of the folders above it) would fail deep in a stage with an OS error."""
    if not value.strip():
        return 'must be a folder path ("" would be the current folder: write "." for that)'
    if problem := home_problem(value):
        return problem
    path = Path(value).expanduser()
    for above in (path, *path.parents):
        try:
            exists = above.exists()
        except OSError as e:  # a name too long for the file system: a traceback deep in every stage otherwise
            return f"cannot be a folder: {e.strerror}"
        if exists:
            if above.is_dir():
                return None
            return f"{above} is a file, not a folder" if above == path else f"{above} is a file, so no folder can be made below it"
    return None


def _dataset_name_problem(value: str) -> str | None:
    if not value.strip() or "/" in value or "\\" in value or value in (".", ".."):
        return "must be a folder name (no slashes)"
    if value != value.strip():
        # A stray space in quotes (datasetName = "shirts "): a folder "shirts " that is not "shirts".
        return f"must not start or end with a space (did you mean {value.strip()!r}?)"
    if problem := portable_name_problem(value):
        # Checked on every system: a DATA_DIR made on Linux should copy to a Windows machine.
        return f"must be a folder name on every system; {value!r} {problem}"
    return None


_INT = (int,)
_FLOAT = (float, int)
_STR = (str,)
_BOOL = (bool,)
_LIST = (list, tuple)

CLASSIFIERS = ("svm", "dnn", "svmDnnRefined")

# One entry per parameter in PARAMETERS.py. Adding a parameter means adding it in both places.
SCHEMA: dict[str, Spec] = {
    "DATA_DIR": Spec(_STR, check=_data_dir_problem, expected="a folder path"),
    "datasetName": Spec(_STR, check=_dataset_name_problem),
    "urlsFile": Spec(_STR, check=home_problem, expected="a path to a TSV file, or \"\""),
    "demoImagesPerClass": Spec(_INT, check=lambda v: None if v >= 4 else "must be at least 4"),
    "ratioTrainTest": Spec(_FLOAT, check=_fraction_open),
    "imagesSplitBy": Spec(_STR, choices=("filename", "subdir")),
    # numpy and scikit-learn take seeds below 2**32: a larger one would pass here and fail in stage 4.
    "randomSeed": Spec(_INT, check=lambda v: None if 0 <= v < 2**32 else "must be between 0 and 4294967295 (2**32 - 1)"),
    "dl_workers": Spec(_INT, check=_positive),
    "dl_timeoutSec": Spec(_FLOAT, check=_seconds),
    "dl_retries": Spec(_INT, check=_non_negative),
    "dl_maxBytes": Spec(_INT, check=_positive),
    "classifier": Spec(_STR, choices=CLASSIFIERS),
    "rf_pretrainedModel": Spec(_STR, choices=BACKBONE_NAMES),
    "rf_inputResolution": Spec(_INT, check=_resolution),
    "rf_resizeMode": Spec(_STR, choices=("squash", "crop", "pad")),
    "rf_weightsDir": Spec(_STR, check=home_problem, expected="a folder path, or \"\""),
    "run_mbSize": Spec(_INT, check=_positive),
    "run_boFlipAverage": Spec(_BOOL),
    "run_workers": Spec(_INT, check=_non_negative),
    "svm_CVals": Spec(_LIST, check=_c_values, expected="a list of positive numbers"),
    "svm_boL2Normalize": Spec(_BOOL),
    "svm_cvFolds": Spec(_INT, check=_folds),
    "svm_workers": Spec(_INT, check=_non_negative),
    "svm_boBalanceClasses": Spec(_BOOL),
    "eval_set": Spec(_STR, choices=("test", "train")),
    # --- DNN refinement (Part 2) ---
    "rf_dropoutRate": Spec(_FLOAT, check=_fraction_closed_open),
    "rf_mbSize": Spec(_INT, check=_positive),
    "rf_maxEpochs": Spec(_INT, check=_positive),
    "rf_maxTrainImages": Spec(_INT, check=_non_negative, unlimited="0"),
    "rf_lrPerMb": Spec(_LIST, check=_float_list, expected="a list of positive numbers, one per epoch"),
    "rf_headLrFactor": Spec(_FLOAT, check=_positive),
    "rf_momentumPerMb": Spec(_FLOAT, check=_fraction_closed_open),
    "rf_l2RegWeight": Spec(_FLOAT, check=_non_negative),
    "rf_maxGradNorm": Spec(_FLOAT, check=_non_negative),
    "rf_boFreezeWeights": Spec(_BOOL),
    "rf_boInitLastLayer": Spec(_BOOL),
    "rf_boRefitLastLayer": Spec(_BOOL),
    "rf_averageLastEpochs": Spec(_INT, check=_non_negative),
    "rf_boFreezeBatchNorm": Spec(_BOOL),
    "rf_boBalanceTrainingSet": Spec(_BOOL),
    "rf_workers": Spec(_INT, check=_non_negative),
    "aug_cropScaleMin": Spec(_FLOAT, check=lambda v: None if 0.0 < v <= 1.0 else "must be in (0, 1]"),
    "aug_rotationDegrees": Spec(_FLOAT, check=lambda v: None if 0.0 <= v <= 180.0 else "must be in [0, 180]"),
    "aug_boHorizontalFlip": Spec(_BOOL),
    "aug_colorJitter": Spec(_FLOAT, check=_fraction_closed_open),

    # --- featurization speed and cache ---
    "run_engine": Spec(_STR, choices=("auto", "onnx", "torch")),
    "run_boCache": Spec(_BOOL),

    # --- run tracking ---
    "track_enabled": Spec(_BOOL),
    "track_uri": Spec(_STR, expected="an MLflow tracking URI (sqlite:///..., http://...), or \"\""),
    "track_experiment": Spec(_STR, expected="an MLflow experiment name, or \"\""),

    # --- deployment ---
    "dep_host": Spec(_STR, check=lambda v: None if v.strip() else "must be a host name or address"),
    "dep_port": Spec(_INT, check=lambda v: None if 1 <= v <= 65535 else "must be between 1 and 65535"),
    "dep_rootPath": Spec(_STR, check=lambda v: None if v == "" or (v.startswith("/") and not v.endswith("/"))
                         else 'must be "" or a path like "/classifier" (a leading /, no trailing /)'),
    "dep_workers": Spec(_INT, check=_positive),
    "dep_threads": Spec(_INT, check=_non_negative),
    "dep_maxBatch": Spec(_INT, check=_positive),
    "dep_maxUploadBytes": Spec(_INT, check=_positive),
    "dep_maxPixels": Spec(_INT, check=lambda v: None if 1 <= v <= MAX_PIXELS else
                          f"must be between 1 and {MAX_PIXELS} (imgclass.images.MAX_PIXELS: no image has more)"),
    "dep_maxImagesPerRequest": Spec(_INT, check=_positive),
    "dep_maxConcurrent": Spec(_INT, check=_positive),
    "dep_bodyTimeoutSec": Spec(_FLOAT, check=_seconds),
    "dep_timeoutSec": Spec(_FLOAT, check=_seconds),
    "dep_graceSec": Spec(_FLOAT, check=_seconds_or_zero),
    "dep_corsOrigins": Spec(_LIST, check=_origins, expected='a list of origins such as "https://example.com", or ["*"]'),

    # --- building a data set (Part 3) ---
    "scrape_provider": Spec(_STR, choices=("openverse", "bing")),
    "scrape_items": Spec(_LIST, check=_word_list, expected="a list of search words"),
    "scrape_attributes": Spec(_LIST, check=_word_list, expected="a list of search words"),
    "scrape_resultsPerQuery": Spec(_INT, check=_positive),
    "scrape_timeoutSec": Spec(_FLOAT, check=_seconds),
    "scrape_pauseSec": Spec(_FLOAT, check=_seconds_or_zero),
    "dedup_threshold": Spec(_INT, check=lambda v: None if 0 <= v < 128 else "must be between 0 and 127 bits"),
    "leakageCheck": Spec(_STR, choices=("move", "report", "off")),
    "al_criterion": Spec(_STR, choices=("margin", "topScore", "entropy")),
    "al_numImages": Spec(_INT, check=_positive),

}


class Params(Mapping[str, Any]):
    """Validated, read-only parameters; values by attribute (`p.datasetName`) or key."""

    def __init__(self, values: Mapping[str, Any], source: Path | None = None) -> None:
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "source", source)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(_unknown_message(name)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Params are read-only; use Params.replace(...) or --set NAME=VALUE")

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Params({self._values!r})"

    def replace(self, **changes: Any) -> Params:
        """A copy with some values changed, validated like an override."""
        values = dict(self._values)
        for name, value in changes.items():
            values[name] = _validate_one(name, value)
        return Params(values, self.source)

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    # Where the files that pass from stage to stage live: one definition, so the stage that writes a
    # file and those that read it agree on its path. A file only one script uses is named there.
    @property
    def data_dir(self) -> Path:
        return Path(self._values["DATA_DIR"]).expanduser()

    @property
    def urls_file(self) -> Path | None:
        """urlsFile as a path, `~` expanded (open() would look for a folder named "~"); None when ""."""
        value = self._values["urlsFile"]
        return Path(value).expanduser() if value else None

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images" / self._values["datasetName"]

    @property
    def proc_dir(self) -> Path:
        return self.data_dir / "proc" / self._values["datasetName"]

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results" / self._values["datasetName"] / self._values["classifier"]

    @property
    def model_kind(self) -> str:
        """"fixed": the pretrained backbone as is (classifier "svm"); "refined": fine-tuned (stage 2)."""
        return "fixed" if self._values["classifier"] == "svm" else "refined"

    @property
    def split_path(self) -> Path:
        return self.proc_dir / "split.json"

    @property
    def model_path(self) -> Path:
        return self.proc_dir / f"model_{self.model_kind}.pt"

    @property
    def _stage2(self) -> str:
        # Run without this classifier, stage 2 makes the other kind of model, and the same error would come back.
        classifier = self._values["classifier"]
        return "scripts/2_refineDNN.py" + ("" if classifier == "svm" else f" with classifier = {classifier!r}")

    def require_model(self) -> Path:
        """model_path, or a FileNotFoundError saying how to make it: stage 2 with this classifier."""
        return require_file(self.model_path, self._stage2)

    def require_stage_outputs(self, features: Iterable[str] = (), svm: bool = False) -> None:
        """A FileNotFoundError naming every stage still to run, in order, when a file that a stage
        needs is missing (the model, the features of `features`' sides, the SVM): stage 5 before
        stages 3 and 4 said "run stage 3", and once that was done, "run stage 4"."""
        chain = [(self.model_path, self._stage2)]
        chain += [(self.features_path(side), "scripts/3_runDNN.py") for side in features]
        if svm:
            chain.append((self.svm_path, "scripts/4_trainSVM.py"))
        for i, (path, _) in enumerate(chain):
            if not path.is_file():
                stages = list(dict.fromkeys(stage for _, stage in chain[i:]))
                # Stage 3 (and a refinement) read the split: without one, stage 1 comes first.
                needs_split = "scripts/3_runDNN.py" in stages or (self.model_kind == "refined" and self._stage2 in stages)
                if needs_split and not self.split_path.is_file():
                    stages.insert(0, "scripts/1_prepareData.py")
                raise FileNotFoundError(f"{path} not found: run {', then '.join(stages)} first")

    @property
    def feature_cache_dir(self) -> Path:
        """Features of earlier stage-3 runs and exported ONNX models, reused while nothing changed."""
        return self.proc_dir / "featcache"

    def features_path(self, side: str) -> Path:
        return self.proc_dir / f"features_{self.model_kind}_{side}.npz"

    @property
    def svm_path(self) -> Path:
        return self.proc_dir / f"svm_{self.model_kind}.npz"

    @property
    def bundle_dir(self) -> Path:
        """Stage 6's model bundle (model.onnx + bundle.json) for this data set and classifier."""
        return self.data_dir / "deploy" / self._values["datasetName"] / self._values["classifier"]


# Names of Microsoft's "Image classification using CNTK" tutorial (its PARAMETERS.py and scripts) that
# this project renamed or replaced: the nearest spelling pointed elsewhere (rootDir to rf_weightsDir,
# boEvalOnTrainingSet to rf_boBalanceTrainingSet), so a user coming from the tutorial is told outright.
TUTORIAL_NAMES: dict[str, str] = {
    "rootDir": "DATA_DIR (or the environment variable IMGCLASS_DATA_DIR)",
    "rf_pretrainedModelFilename": 'rf_pretrainedModel, a backbone name: "resnet18" for "ResNet_18.model"',
    "rf_inputResoluton": "rf_inputResolution",
    "boEvalOnTrainingSet": 'eval_set = "train" (or 5_evaluate.py --on train)',
    "al_selectionCriteria": 'al_criterion ("margin", "topScore" or "entropy"; "topScore" picks the lowest top scores)',
    "aug_rotationsInDegree": ("aug_rotationDegrees: stage 2 rotates training images at random while it refines "
                              "(no rotated copies are written, and the SVM trains on the images as they are)"),
    "aug_probabilityRotation": ("nothing: stage 2 rotates training images at random by up to aug_rotationDegrees "
                                "while it refines (0 = none)"),
}


def _unknown_message(name: str) -> str:
    if name in TUTORIAL_NAMES:
        return (f"unknown parameter {name!r}: that is the CNTK tutorial's name; here it is {TUTORIAL_NAMES[name]} "
                "(see PARAMETERS.py for the full list)")
    close = difflib.get_close_matches(name, list(SCHEMA), n=1, cutoff=0.5)
    if not close:
        close = [k for k in SCHEMA if k.lower() == name.lower()]
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown parameter {name!r}{hint} (see PARAMETERS.py for the full list)"


def _validate_one(name: str, value: Any) -> Any:
    if name not in SCHEMA:
        raise ParameterError(_unknown_message(name))
    return SCHEMA[name].validate(name, value)


def default_params_file() -> Path:
    """PARAMETERS.py: $IMGCLASS_PARAMS, else the project's own."""
    env = os.environ.get(ENV_PARAMS_FILE)
    return Path(env) if env else project_params_file()


def project_params_file() -> Path:
    """The project's PARAMETERS.py: at the root of the project this package lives in, else in the cwd."""
    candidate = Path(__file__).resolve().parents[2] / "PARAMETERS.py"
    return candidate if candidate.is_file() else Path.cwd() / "PARAMETERS.py"


def _read_file(path: Path, given_as: str) -> dict[str, Any]:
    """The parameters a file sets (its public names), each checked to be a known parameter."""
    if path.is_dir():
        raise ParameterError(f"parameters file {path} ({given_as}) is a folder: name a .py file of parameters")
    if not path.is_file():
        raise ParameterError(f"parameters file not found: {path} ({given_as})")
    spec = importlib.util.spec_from_file_location("_imgclass_parameters", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the file is the user's Python: any error is theirs to fix
        raise ParameterError(_python_error(path, e)) from None
    values = {
        k: v
        for k, v in vars(module).items()
        if not k.startswith("_") and not isinstance(v, types.ModuleType) and not callable(v)
    }
    for name in values:
        if name not in SCHEMA:
            raise ParameterError(f"{path}: {_unknown_message(name)}")
    return values


def _python_error(path: Path, e: Exception) -> str:
    """One line for a Python error in a parameters file: where (the file's line, not importlib's, or
    the imported file's for a syntax error there) and, for the usual slips, what to write instead."""
    if isinstance(e, SyntaxError) and e.filename:
        where = f"{e.filename}, line {e.lineno}"
    else:
        line = next((frame.lineno for frame in traceback.extract_tb(e.__traceback__)
                     if Path(frame.filename).resolve() == path.resolve()), None)
        where = f"{path}, line {line}" if line else str(path)
    hint = ""
    own_file = path.resolve() != project_params_file().resolve()
    if isinstance(e, NameError) and own_file and e.name in SCHEMA:
        hint = f" (a --params file does not see {project_params_file().name}'s values: write the value itself)"
    elif isinstance(e, NameError) and e.name in sys.stdlib_module_names:
        hint = f" (import {e.name} at the top of the file)"
    elif isinstance(e, NameError):
        hint = ' (text values go in quotes: classifier = "dnn")'
    elif isinstance(e, ImportError) and own_file and e.name == "PARAMETERS":
        hint = (" (a parameters file of your own needs only the values it changes; the others come from "
                f"{project_params_file()}, so it need not import it)")
    return f"{where}: {type(e).__name__}: {e}{hint}"


def parse_value(text: str) -> Any:
    """`--set` values: a Python literal when they parse as one, else the plain string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Turn ["NAME=VALUE", ...] into a dict, rejecting malformed items and unknown names."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ParameterError(f"--set expects NAME=VALUE, got {item!r}")
        if name not in SCHEMA:
            raise ParameterError(_unknown_message(name))
        value = parse_value(text.strip())
        if SCHEMA[name].types == _STR and isinstance(value, (int, float)) and not isinstance(value, bool):
            # A number given to a text parameter is that text: datasetName=2024 is the folder "2024".
            # (None, True or a list stay what they are, and validation refuses them.)
            value = text.strip()
        out[name] = value
    return out


def load_params(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> Params:
    """Read the parameters file (`path`, else $IMGCLASS_PARAMS, else the project's PARAMETERS.py),
    with the project's PARAMETERS.py under it for what it leaves out, then IMGCLASS_DATA_DIR and
    `overrides`; validate everything."""
    given_as = ("--params" if path is not None else
                f"{ENV_PARAMS_FILE} names it" if os.environ.get(ENV_PARAMS_FILE) else
                f"pass --params FILE or set {ENV_PARAMS_FILE}")
    source = Path(path) if path is not None else default_params_file()
    values = _read_file(source, given_as)
    missing = [name for name in SCHEMA if name not in values]
    project = project_params_file()
    if missing and source.resolve() != project.resolve():
        # A file of one's own (one per data set, say) needs only what it changes: the rest is the
        # project's PARAMETERS.py. (A full copy does not read it at all.)
        if not project.is_file():
            raise ParameterError(f"{source} sets {len(values)} of the {len(SCHEMA)} parameters, and the project's "
                                 f"PARAMETERS.py, which gives the others, is not at {project}")
        values = {**_read_file(project, "the project's parameters"), **values}
        missing = [name for name in SCHEMA if name not in values]
        if missing:
            raise ParameterError(f"missing parameter(s) {', '.join(missing)}: in neither {source} nor {project}")
    elif missing:
        raise ParameterError(f"{source}: missing parameter(s) {', '.join(missing)}")
    env_dir = os.environ.get(ENV_DATA_DIR)
    if env_dir:
        values["DATA_DIR"] = env_dir
    values.update(overrides or {})
    validated = {name: _validate_one(name, value) for name, value in values.items()}
    return Params(validated, source)
