"""Stage 2: build the network that stage 3 runs over the images.

classifier = "svm": the ImageNet-pretrained backbone as is (a fixed featurizer).
classifier = "dnn" / "svmDnnRefined": refine the network on the training set (Part 2): a new last
layer with one output per class, then the whole network (or only that layer, rf_boFreezeWeights)
trained for rf_maxEpochs on augmented training images. The test error is printed per epoch but
chooses nothing. A checkpoint after every epoch lets `--resume` continue an interrupted run. A
network refined already with the same settings on the same split (by the other of dnn and
svmDnnRefined, which share it) is kept, not refined again (--restart does).
"""

import time
from pathlib import Path

from imgclass.cli import parse_stage, run_stage, stage_parser
from imgclass.data import load_split
from imgclass.features import device_name
from imgclass.fileio import write_json
from imgclass.modelfile import ModelSpec, build_model, save_model
from imgclass.provenance import StaleFilesError, check_split_settings
from imgclass.refine import (History, RefineConfig, Refiner, already_refined, plot_history,
                             refining_alone, replacing_note, stored_refinement, write_stored_curves)

parser = stage_parser(
    __doc__.splitlines()[0],
    reads="DATA_DIR/proc/<datasetName>/split.json (refinement only), the backbone's pretrained weights",
    writes="DATA_DIR/proc/<datasetName>/model_fixed.pt (svm) or model_refined.pt (dnn, svmDnnRefined), "
           "refine_checkpoint.pt while refining; results/<datasetName>/<classifier>/training_curves.json and .png "
           "(training_curves_running.* while it trains, replaced by those at the end)",
)
parser.add_argument("--resume", action="store_true",
                    help="continue an interrupted refinement from proc/<datasetName>/refine_checkpoint.pt")
parser.add_argument("--restart", action="store_true",
                    help="start the refinement afresh, deleting the checkpoint of an interrupted one; or refine again "
                         "a network refined already with the same settings on the same split (otherwise kept)")


def _counted(n: int, cap: int) -> str:
    return f"{cap} (rf_maxTrainImages) of {n}" if cap and cap < n else str(n)


def main() -> int:
    args, p = parse_stage(parser)
    if args.resume and args.restart:
        parser.error("--resume and --restart: choose one")
    if p.classifier == "svm":
        if args.resume or args.restart:  # nothing is refined for svm: the flag would go unsaid
            print(f"note: {'--resume' if args.resume else '--restart'} does nothing with classifier = \"svm\" "
                  "(the backbone is only written, not refined)")
        spec = ModelSpec(p.rf_pretrainedModel, p.rf_inputResolution, p.rf_resizeMode, kind="fixed")
        model = build_model(spec, pretrained=True, weights_dir=p.rf_weightsDir or None)
        save_model(p.model_path, model, spec)
        print(f"backbone {spec.backbone} at {spec.resolution} px ({spec.resize_mode}), {spec.feature_dim} features")
        print(f"wrote {p.model_path}")
        return 0

    split = load_split(p.split_path, p.images_dir)
    check_split_settings(split.settings, p, p.split_path.name)
    refining_alone(p.proc_dir)
    config = RefineConfig.from_params(p)
    checkpoint = p.proc_dir / "refine_checkpoint.pt"
    curves_json = p.results_dir / "training_curves.json"
    curves_png = p.results_dir / "training_curves.png"
    title = f"{p.datasetName} / {p.classifier}: error per epoch"
    stored = stored_refinement(p.model_path)
    if not args.restart and not checkpoint.is_file() and already_refined(stored, config.settings(), split.hash):
        took = f", {stored['seconds']:.0f} s on {stored.get('device', '?')}" if "seconds" in stored else ""
        print(f"{p.model_path.name} is refined already with these settings on this split{took}: nothing to refine "
              f"(dnn and svmDnnRefined share it; refined again, it would change under the other classifier's "
              f"results); --restart refines it anew")
        # This classifier's copy of the curves, of this network (not an older one).
        if written := write_stored_curves(stored, p.results_dir, title, p.classifier):
            print(f"wrote {' and '.join(map(str, written))} (from {p.model_path.name})")
        if warned := stored.get("collapse_note"):
            print(f"warning: when it was refined: {warned}")
        return 0
    # Before the network is built and the run described: a refusal comes first, alone.
    if checkpoint.is_file() and not args.resume:
        if not args.restart:  # the first epoch would overwrite the interrupted run's progress
            raise ValueError(f"{checkpoint} holds an interrupted refinement (stopped or failed): add --resume to "
                             f"continue it, or --restart to start afresh (deleting it)")
        checkpoint.unlink()
    elif args.resume and not checkpoint.is_file():
        print(f"--resume: no checkpoint ({checkpoint}), so the refinement starts from the first epoch")
    refiner = Refiner(config, split.classes, spill_dir=p.proc_dir)  # decoded images beyond memory go there
    if args.resume and checkpoint.is_file():
        refiner.check_resumable(checkpoint)
    what = "only the new last layer" if config.freeze_weights else "the whole network"
    balanced = " (balanced: each class drawn as often as the largest, rf_boBalanceTrainingSet)" \
        if config.balance_training_set else ""
    print(f"refining {what} of {config.backbone} at {config.resolution} px on {device_name(refiner.device)} "
          f"({'bfloat16 mixed precision' if refiner.mixed_precision else 'float32'}), "
          f"{_counted(len(split.train), config.max_train_images)} training images{balanced}, "
          f"{config.max_epochs} epoch{'' if config.max_epochs == 1 else 's'}")
    if config.mb_size > len(split.train):
        print(f"note: rf_mbSize = {config.mb_size} is more than the {len(split.train)} training images: each epoch "
              f"is a single step of one minibatch; a smaller rf_mbSize trains in more steps")
    if note := config.schedule_note():
        print(f"note: {note}")
    # Resuming, the interrupted run said it when it started; said again, it would come before the
    # checkpoint's own check, which may refuse to continue with these settings and replace nothing.
    resuming = args.resume and checkpoint.is_file()
    if not resuming and (note := replacing_note(p.model_path, stored, config.settings())):
        print(f"note: {note}")
    # While it trains, the curves go to files of their own: an interrupted run must not replace the
    # curves of the finished run whose model is still the one stages 3-5 use.
    running = [curves_json.with_name("training_curves_running.json"), curves_png.with_name("training_curves_running.png")]

    def save_curves(history: History, saved: dict | None = None, files: list[Path] = running) -> None:
        write_json(files[0], {**history.to_json(), **(saved or {})})
        plot_history(history, files[1], title=title + ("" if saved else " (running)"), **(saved or {}),
                     svm_after=p.classifier == "svmDnnRefined")

    start = time.perf_counter()
    refiner.fit([p.images_dir / r for r, _ in split.train], [y for _, y in split.train],
                [p.images_dir / r for r, _ in split.test], [y for _, y in split.test],
                checkpoint=checkpoint, resume=args.resume, on_epoch=save_curves)
    seconds = this_run = time.perf_counter() - start
    if done_before := refiner.resumed_after_:  # the interrupted run's epochs count too
        seconds += sum(refiner.history_.seconds[:done_before])
    save_model(p.model_path, refiner.model_, refiner.spec,
               extra={"history": refiner.history_.to_json(),
                      "split_hash": split.hash,  # the split trained on, not the file as it is now; stage 3 refuses another
                      "params": config.settings(),  # and with other settings
                      "device": device_name(refiner.device), "seconds": round(seconds, 1),
                      "saved_test_error": refiner.saved_test_error_, "saved_as": refiner.saved_as_,
                      "collapse_note": refiner.collapse_note_})  # stage 3 repeats it, with the features it makes
    save_curves(refiner.history_, {"saved_test_error": refiner.saved_test_error_, "saved_as": refiner.saved_as_},
                [curves_json, curves_png])
    for f in (checkpoint, *running):  # the finished model and its curves supersede them
        f.unlink(missing_ok=True)
    resumed = f" ({this_run:.0f} s in this run, resumed after epoch {done_before})" if done_before else ""
    print(f"refined in {seconds:.0f} s{resumed}")
    print(f"wrote {p.model_path}")
    print(f"wrote {curves_json} and {curves_png}")
    return 0


if __name__ == "__main__":
    run_stage(main, (FloatingPointError, StaleFilesError),
              on_interrupt="files already written are complete; rerun it to finish (for dnn and svmDnnRefined, with --resume "
                           "to continue the refinement from its last finished epoch, or the first if none had finished)")
