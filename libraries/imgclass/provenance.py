"""Which files came from which: stages pass files through DATA_DIR, and rerunning an earlier stage
without the later ones leaves files of different origins side by side. Stage 3 records what its
features were computed with, stage 4 what its SVM was trained on, and stages 3 to 6 check that
the files they combine belong together, naming the stage to rerun when they do not.

No torch here: the web service's process (stage 6 --bundle) imports this module too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from imgclass.featureset import FeatureSet

if TYPE_CHECKING:
    from imgclass.params import Params


def file_hash(path: str | Path) -> str:
    """Content hash of a file (BLAKE2b, 128 bits), read in 1 MiB blocks."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# Records in split.json that change no image's side: left out of split_hash.
SPLIT_RECORDS = ("settings", "moved", "sizes")


def split_hash(path: str | Path) -> str:
    """The hash of a split.json's classes and sides: file_hash of the file as it was written before
    it recorded its settings and the leakage check's moves (2026-12-01). Those records change no
    image's side; hashed with them, every model and features file of a data folder made by the
    earlier version read as stale once stage 1 ran again, and a refined network had to be refined anew."""
    from imgclass.fileio import read_json

    return split_hash_of(read_json(path))


def split_hash_of(d: dict) -> str:
    """split_hash of a split.json already read (`d`, as read_json gave it): a stage hashes the split it
    uses, not the file as it is when it saves its output, which stage 1 in another shell may have
    replaced meanwhile (features of the old split would then carry the new split's hash)."""
    core = {k: v for k, v in d.items() if k not in SPLIT_RECORDS}
    text = json.dumps(core, indent=2, ensure_ascii=False) + "\n"  # as fileio.write_json writes it
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        data = (json.dumps(core, indent=2) + "\n").encode("ascii")
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def test_set_hash(path: str | Path) -> str:
    """The hash of a split.json's test images with their class names: runs whose test sets differ
    (images added or moved, or labels fixed in annotations_fixes.tsv) have test figures that do not
    compare like for like, whatever their parameters."""
    from imgclass.fileio import read_json

    split = read_json(path)
    classes = split.get("classes", [])
    rows = sorted(f"{p}\t{classes[y] if isinstance(y, int) and 0 <= y < len(classes) else y}"
                  for p, y in split.get("test", []))
    return hashlib.blake2b("\n".join(rows).encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


class StaleFilesError(RuntimeError):
    """A stage's input was made from other inputs than the files beside it now (an earlier stage was
    rerun and a later one was not); the message names the stage to rerun."""


def features_source(model_file: str | Path, flip_average: bool) -> str:
    """What a set of features depends on besides the images: the model file's content (backbone,
    weights, resolution, resize mode) and the mirror averaging. Stage 3 stores it with the features,
    stage 4 with the SVM, so stages 5 and 6 can refuse to combine files of different origins; the
    Lite variants all give 1280 features, so the shapes alone would not tell."""
    return hashlib.blake2b(f"{file_hash(model_file)}:{bool(flip_average)}".encode(), digest_size=8).hexdigest()


def check_same_source(
    model_file: str | Path, features_path: str | Path, svm_source: str = "", svm_file: str = "",
    split_file: str | Path | None = None, svm_split_hash: str = "", svm_classes: Sequence[str] = (),
    train_features: str | Path | None = None,
) -> None:
    """Raise StaleFilesError when the features in `features_path` were not computed with the model
    file as it is now (or, given `split_file`, for the split as it is now), or when the SVM was
    trained on other features: of another model (its stored `features_source`), of another split's
    training images (`svm_split_hash`) or for other classes (`svm_classes`). The fixed network never
    changes, so only the last two notice stage 1 rerun before stage 3 but not stage 4: the SVM would
    score test images it was trained on, or give its scores to the wrong class names. Files written
    before these were recorded are not checked. `train_features` (stage 5 scoring the test side): the
    features the SVM learned from, to tell a stale SVM (rerun stage 4) from features files of two
    stage 3 runs (rerun stage 3: stage 4 alone would learn from the same train features again)."""
    features_path = Path(features_path)
    made = FeatureSet.load(features_path, header_only=True)
    if not made.source:
        return
    source, flip, made_split, classes = made.source, bool(made.flip_average), made.split_hash, made.classes
    then_svm = ", then scripts/4_trainSVM.py" if svm_file else ""
    if source != features_source(model_file, flip):
        raise StaleFilesError(
            f"{features_path.name} was computed with an earlier {Path(model_file).name} (stage 2 ran again since): "
            f"rerun scripts/3_runDNN.py{then_svm}"
        )
    if split_file is not None and made_split and made_split != (now := split_hash(split_file)):
        # A refined network learned from the earlier split too: stage 3 would refuse it in turn.
        from imgclass.modelfile import load_model_extra  # torch: only on this path

        try:
            refined_on = load_model_extra(model_file).get("split_hash", "")
        except ValueError:  # not a model file: the check that reads it says so
            refined_on = ""
        refine = "scripts/2_refineDNN.py, then " if refined_on and refined_on != now else ""
        raise StaleFilesError(
            f"{features_path.name} was computed for an earlier {Path(split_file).name} (stage 1 ran again since): "
            f"rerun {refine}scripts/3_runDNN.py{then_svm}"
        )
    svm_name = Path(svm_file).name or "the SVM"
    if svm_source and svm_source != source:
        if train_features is not None and Path(train_features) != features_path:
            trained = FeatureSet.load(train_features, header_only=True)
            if trained.source and trained.source != source:
                # Two stage 3s at once (two shells, say mirror averaging on and off): each side's file
                # is of the one that wrote it last.
                how = (f"mirror averaging {'on' if trained.flip_average else 'off'} and "
                       f"{'on' if flip else 'off'}" if bool(trained.flip_average) != flip else "other model files")
                raise StaleFilesError(
                    f"{Path(train_features).name} and {features_path.name} were computed by different runs of "
                    f"stage 3 ({how}; two at once, or one stopped half-way): rerun scripts/3_runDNN.py, "
                    f"then scripts/4_trainSVM.py"
                )
        raise StaleFilesError(
            f"{svm_name} was trained on features of another model or preprocessing than "
            f"{features_path.name}: rerun scripts/4_trainSVM.py"
        )
    if svm_split_hash and made_split and svm_split_hash != made_split:
        raise StaleFilesError(
            f"{svm_name} was trained on the training images of another split than {features_path.name} "
            f"(stage 1 ran again since), some of which may now be test images: rerun scripts/4_trainSVM.py"
        )
    if svm_classes and classes and list(svm_classes) != classes:
        raise StaleFilesError(
            f"{svm_name} was trained for the classes {list(svm_classes)}, but {features_path.name} has "
            f"{classes}: rerun scripts/4_trainSVM.py"
        )


# The parameters a model file (and the features computed with it) fixes: set to other values in
# PARAMETERS.py, they need stage 2 again, or the results would be credited to a network not used.
MODEL_SETTINGS = ("rf_pretrainedModel", "rf_inputResolution", "rf_resizeMode")


def check_model_settings(made_with: dict, now: Params | dict, what: str, rerun: str = "scripts/2_refineDNN.py") -> None:
    """Raise StaleFilesError when the file `what` was made with other values of the settings in
    `made_with` (MODEL_SETTINGS, and RefineConfig.settings() for a refined network) than the
    parameters have now (`now`), naming both and the stage to rerun."""
    if differ := differing_settings(made_with, now):
        then = ", ".join(f"{k} = {made_with[k]!r}" for k in differ)
        later = ", ".join(f"{now[k]!r}" for k in differ)
        # Most often a --set given to stage 2 and forgotten here, so the cheap way out comes first.
        again = " ".join(f"--set {k}={_text(made_with[k])}" for k in differ)
        raise StaleFilesError(f"{what} was made with {then}, but the parameters now say {later}: "
                              f"give the same values again ({again}, or put them in PARAMETERS.py or a "
                              f"--params file for every stage), or, to change them, rerun {rerun}, then the "
                              f"stages after it")


def differing_settings(made_with: dict, now: Params | dict) -> list[str]:
    """The settings of `made_with` that the parameters `now` give another value. A setting no
    parameter has any more (retired since the file was written) is not compared."""
    return [k for k in made_with if k in now and not same_setting(k, made_with[k], now[k])]


def unrecorded_note(made_with: dict, what: str, rerun: str, more: str = "") -> str | None:
    """A note for a file of an earlier version of the project that does not record the settings it was
    made with (`made_with` empty): the checks that refuse files of other settings cannot check it, and
    results made from it are credited to whatever the parameters say now."""
    if made_with:
        return None
    return (f"{what} was written by an earlier version, which did not record the settings it was made with: "
            f"they cannot be checked against the parameters now (rerun {rerun} to record them{more})")


def check_features_settings(data: FeatureSet, p: Params | dict, what: str) -> None:
    """check_model_settings for stage 3's features `data` (the file `what`): the network's settings,
    and the mirror averaging stage 3 used (run_boFlipAverage), whose stage to rerun is stage 3."""
    check_model_settings(data.settings, p, what)
    if data.flip_average is not None:
        check_model_settings({"run_boFlipAverage": data.flip_average}, p, what, rerun="scripts/3_runDNN.py")


def check_split_settings(split_settings: dict, p: Params | dict, what: str = "split.json") -> None:
    """Raise StaleFilesError when stage 1 split the images with another randomSeed, ratioTrainTest or
    imagesSplitBy (Split.settings; none for a split the data set's folders or a test list set) than
    the parameters say now: the later stages, and the run history, would credit the results to a
    split that was not made."""
    check_model_settings(split_settings, p, what, rerun="scripts/1_prepareData.py")


# Settings whose order means nothing: the SVM tries every C and breaks ties by the smallest.
UNORDERED_SETTINGS = ("svm_CVals",)


def setting_value(name: str, value: object) -> object:
    """`value` as it counts for the setting `name`: the C values as a sorted list of distinct floats."""
    if name in UNORDERED_SETTINGS and isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return sorted({float(v) for v in value})
    return value


def same_setting(name: str, a: object, b: object) -> bool:
    """Whether `a` and `b` are one value of the setting `name` (_same, in any order where it means nothing)."""
    return _same(setting_value(name, a), setting_value(name, b))


def _same(a: object, b: object) -> bool:
    """Whether two parameter values are one setting: numbers by value (svm_CVals = [1, 10] typed in
    PARAMETERS.py is the SVM's [1.0, 10.0]), lists element by element, anything else as --set writes it."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return _text(a) == _text(b)


def _text(value: object) -> str:
    """A value as --set takes it, without spaces (a shell would split them): [0.001,0.0001]."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return str(value)


def check_model_split(model_file: str | Path, model_split_hash: str, split_file: str | Path,
                      split_now: str = "") -> None:
    """A refined network learned from the training images of one split: used with another (stage 1
    rerun with another seed, ratio or new photos), some of its training images are now test images
    and the test accuracy would be flattered. Raise StaleFilesError then. `model_split_hash` is what
    stage 2 recorded in the model file ("" for fixed networks and older files: not checked);
    `split_now`: the hash of the split the caller uses (Split.hash), else `split_file` is read."""
    if model_split_hash and model_split_hash != (split_now or split_hash(split_file)):
        raise StaleFilesError(
            f"{Path(model_file).name} was refined on the training images of an earlier {Path(split_file).name} "
            f"(stage 1 ran again since), some of which may now be test images: rerun scripts/2_refineDNN.py"
        )


def check_model_and_svm(model_file: str | Path, train_features: str | Path, svm_file: str | Path) -> None:
    """Before a model file and an SVM are used together on new images (stage 6, active learning):
    both must come from one run of stages 2-4. Not checked when stage 3's features are gone."""
    from imgclass.svm import LinearSvm  # sklearn: only where an SVM is really loaded

    if Path(train_features).is_file():
        svm = LinearSvm.load(svm_file)
        check_same_source(model_file, train_features, svm.features_source, str(svm_file),
                          svm_split_hash=svm.split_hash, svm_classes=svm.classes)


def flip_average_of_stage3(features_path: str | Path, requested: bool, note: bool = True) -> bool:
    """The mirror averaging stage 3 used for the features in `features_path`, which the classifier
    was trained and evaluated on: scoring new images otherwise would not score them as stage 5 did.
    `requested` (run_boFlipAverage now) when the file does not say; a note when the two differ
    (unless not `note`: stage 6 refuses the difference instead, check_trained_settings)."""
    path = Path(features_path)
    if not path.is_file():
        return requested
    used = FeatureSet.load(path, header_only=True).flip_average
    if used is None:
        return requested
    if used != requested and note:
        print(f"run_boFlipAverage = {requested} now, but stage 3 featurized with {used} ({path.name}): "
              f"using {used}, as the classifier was trained and evaluated; rerun stages 3-5 to change it")
    return used


def trained_classifier(p: Params, flip_note: bool = True) -> tuple[Path, Path | None, bool]:
    """The classifier that stages 2-4 trained under the parameters `p`: the model file, the SVM file
    (None for classifier "dnn": the refined network scores alone), refused when the two are of
    different origins, and the mirror averaging stage 3 used (new images are scored as the SVM was
    trained and evaluated; `flip_note`: see flip_average_of_stage3)."""
    with_svm = p.classifier != "dnn"  # a refined network scores without stage 3's features
    # An SVM still to train needs them; one trained is used even where they were deleted since.
    p.require_stage_outputs(features=["train"] if with_svm and not p.svm_path.is_file() else [], svm=with_svm)
    model = p.model_path
    svm = p.svm_path if with_svm else None
    if svm is not None:
        check_model_and_svm(model, p.features_path("train"), svm)
    check_trained_on_split(p)
    if flip_note and (note := trained_settings_note(p, model)):
        print(note)
    return model, svm, flip_average_of_stage3(p.features_path("train"), p.run_boFlipAverage, flip_note)


def trained_settings_note(p: Params, model: Path) -> str | None:
    """A note when the network of `model` sees images otherwise than the parameters now say (another
    rf_pretrainedModel, rf_inputResolution or rf_resizeMode, given to this script and not to stages
    2-4): new images are scored with the classifier as trained, which the user should know, as
    flip_average_of_stage3 says it for the mirror averaging. None when they agree."""
    from imgclass.modelfile import load_model_info, spec_settings

    made = spec_settings(load_model_info(model)[0])
    if not (differ := differing_settings(made, p)):
        return None
    then = ", ".join(f"{k} = {made[k]!r}" for k in differ)
    now = ", ".join(f"{k} = {p[k]!r}" for k in differ)
    return (f"note: the parameters say {now}, but the trained classifier ({model.name}) was made with {then}: "
            f"scoring with it as trained; to use the new settings, rerun stages 2-4 with them")


def check_trained_settings(p: Params, model: Path, svm: Path | None) -> None:
    """Raise StaleFilesError, as stages 3-5 do, when the split, the model file, stage 3's training
    features (their mirror averaging) or the SVM was made with other settings than the parameters say now. For stage 6, which exported the model as it was while the
    run history credited the deployment to the other values (rf_inputResolution = 96 for a 128 px
    model); scoring new images (scoreImages.py, activeLearning.py) records nothing, and uses the
    trained classifier whatever the parameters say now."""
    from imgclass.data import load_split
    from imgclass.modelfile import load_model_info, spec_settings
    from imgclass.svm import LinearSvm

    # In the order of the stages, so that the first one to rerun is named.
    if p.split_path.is_file():
        check_split_settings(load_split(p.split_path).settings, p, p.split_path.name)
    spec, extra = load_model_info(model)
    check_model_settings({**spec_settings(spec), **extra.get("params", {})}, p, model.name)
    if (train := p.features_path("train")).is_file():
        check_features_settings(FeatureSet.load(train, made_with_keys=MODEL_SETTINGS, header_only=True), p, train.name)
    if svm is not None:
        check_model_settings(LinearSvm.load(svm).settings(), p, svm.name, rerun="scripts/4_trainSVM.py")


def check_trained_on_split(p: Params) -> None:
    """Raise StaleFilesError when stage 1 ran again after stage 3 featurized the training images the
    classifier learned from: the parameters (and a tracked run) would then describe a split that the
    deployed or scoring classifier never saw, and its evaluation another test set. Stage 3 checks that
    a refined network was refined on its split, so the training features' split stands for both.
    Not checked when stage 3's features or stage 1's split are gone, or for files that do not say."""
    train, split = p.features_path("train"), p.split_path
    if not (train.is_file() and split.is_file()):
        return
    made = FeatureSet.load(train, header_only=True).split_hash
    if made and made != split_hash(split):
        stages = "3_runDNN.py" if p.classifier == "svm" else "2_refineDNN.py, 3_runDNN.py"
        if p.classifier != "dnn":
            stages += ", 4_trainSVM.py"
        raise StaleFilesError(
            f"the {p.classifier} classifier of {p.datasetName!r} learned from the training images of an earlier "
            f"{split.name} (stage 1 ran again since): rerun {stages} and 5_evaluate.py in scripts/, so that "
            "what is used is the classifier of this split, evaluated on its test images"
        )
