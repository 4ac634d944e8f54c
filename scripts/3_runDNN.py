"""Stage 3: run the network over every training and test image and save its features.

The features are the penultimate layer (1280 floats for EfficientNet-Lite0, 512 for ResNet-18/34,
2048 for ResNet-50); refined models also give class probabilities. On a CPU the network runs in ONNX
Runtime (exported once into proc/<datasetName>/featcache/); with run_boCache, images whose file, model
file and preprocessing did not change since an earlier run are not featurized again.
"""

import time
from pathlib import Path

import numpy as np

from imgclass.cli import parse_stage, run_stage, stage_parser
from imgclass.data import load_split, since_split_notes
from imgclass.features import FeatureCache, Featurizer, device_name, mirror_note
from imgclass.featureset import FeatureSet, file_stats
from imgclass.modelfile import load_model, load_model_extra, spec_settings
from imgclass.provenance import (StaleFilesError, check_model_settings, check_model_split, check_split_settings,
                                 features_source, file_hash, unrecorded_note)
from imgclass.refine import pending_refinement_note, write_stored_curves

parser = stage_parser(
    __doc__.splitlines()[0],
    reads="DATA_DIR/proc/<datasetName>/split.json and model_<fixed|refined>.pt",
    writes="DATA_DIR/proc/<datasetName>/features_<fixed|refined>_<train|test>.npz (and featcache/)",
)


def main() -> int:
    _, p = parse_stage(parser)
    split = load_split(p.split_path, p.images_dir)
    check_split_settings(split.settings, p, p.split_path.name)
    for note in since_split_notes(split, p.images_dir, p.split_path):
        print(f"note: {note}")
    model, spec = load_model(p.require_model())
    made_with = spec_settings(spec)
    check_model_settings(made_with, p, p.model_path.name)
    refined_with: dict = {}
    extra: dict = {}
    if spec.kind == "refined":
        if note := pending_refinement_note(p.proc_dir, p.model_path.name):
            print(f"note: {note}")
        extra = load_model_extra(p.model_path)
        check_model_split(p.model_path, extra.get("split_hash", ""), p.split_path, split.hash)
        refined_with = extra.get("params", {})  # model files written before 2026-11-30 do not say: not checked
        if note := unrecorded_note(refined_with, p.model_path.name, "scripts/2_refineDNN.py"):
            print(f"note: {note}")
        if warned := extra.get("collapse_note"):
            print(f"warning: stage 2 said: {warned}")
        check_model_settings(refined_with, p, p.model_path.name)
    fz = Featurizer(model, spec, batch_size=p.run_mbSize, flip_average=p.run_boFlipAverage, workers=p.run_workers,
                    engine=p.run_engine, export_dir=p.feature_cache_dir)
    cache = FeatureCache(p.feature_cache_dir, p.model_path, spec, p.run_boFlipAverage) if p.run_boCache else None
    # ONNX Runtime sets its own threads on a CPU: torch's count would be the wrong one to show.
    where = device_name(fz.device) if fz.engine_name == "torch" else str(fz.device)
    print(f"featurizing with {spec.backbone} ({spec.kind}) at {spec.resolution} px, engine {fz.engine_name} on {where}, "
          f"flip averaging {'on' if p.run_boFlipAverage else 'off'}, cache {'on' if cache else 'off'}")
    if note := mirror_note(p.run_boFlipAverage, p.aug_boHorizontalFlip):
        print(f"note: {note}")
    source = features_source(p.model_path, p.run_boFlipAverage)
    split_of_features = split.hash  # of the split featurized, not of split.json as it is by now
    for side in ("train", "test"):
        items = split.side(side)
        rel = [path for path, _ in items]
        t0 = time.perf_counter()
        # Stages 4 and 5 name files changed after this: by size and time, then by content (the cache has
        # the hashes, else the files are read once more: a fraction of decoding them).
        stats = file_stats([p.images_dir / r for r in rel])
        hashes = [_content_hash(p.images_dir / r, cache) for r in rel]
        result = fz.featurize_paths([p.images_dir / r for r in rel], desc=side, cache=cache)
        out = FeatureSet(rel, np.array([y for _, y in items]), split.classes, result.features, result.probs,
                         flip_average=p.run_boFlipAverage,  # stage 6 exports the same preprocessing
                         source=source, split_hash=split_of_features,  # stages 4-6 check they combine files of one origin
                         made_with=made_with,  # what stage 5 reports it was made with
                         refined_with=refined_with,  # what stages 4 and 5 check the parameters against
                         file_stats=stats, file_hashes=hashes,
                         ).save(p.features_path(side))
        seconds = time.perf_counter() - t0
        print(f"wrote {out} ({result.features.shape[0]} x {result.features.shape[1]}) in {seconds:.1f} s"
              f" ({len(rel) / max(seconds, 1e-9):.0f} img/s)")
    # dnn and svmDnnRefined share the network: this classifier's curves are of the network featurized now
    # (not of an earlier one that stage 2 refined for it).
    if curves := write_stored_curves(extra, p.results_dir, f"{p.datasetName} / {p.classifier}: error per epoch",
                                     p.classifier):
        print(f"wrote {' and '.join(str(c) for c in curves)} (the refined network's training curves)")
    if cache is not None:
        print(f"feature cache {cache.path}: {cache.hits} image{'' if cache.hits == 1 else 's'} reused, {cache.misses} computed")
    return 0


def _content_hash(path: Path, cache: FeatureCache | None) -> str:
    """The file's content hash ("" where it cannot be read: decoding it names the problem)."""
    try:
        return cache.file_key(path) if cache else file_hash(path)
    except OSError:
        return ""


if __name__ == "__main__":
    run_stage(main, (StaleFilesError,))
