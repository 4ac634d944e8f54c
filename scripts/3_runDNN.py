"""Stage 3: run the network over every training and test image and save its features.

The features are the penultimate layer (1280 floats for EfficientNet-Lite0, 512 for ResNet-18/34,
2048 for ResNet-50); refined models also give class probabilities.
"""

import numpy as np

from imgclass.cli import parse_stage, run_stage, stage_parser
from imgclass.data import load_split
from imgclass.features import Featurizer
from imgclass.fileio import save_npz
from imgclass.modelfile import load_model

parser = stage_parser(
    __doc__.splitlines()[0],
    reads="DATA_DIR/proc/<datasetName>/split.json and model_<fixed|refined>.pt",
    writes="DATA_DIR/proc/<datasetName>/features_<fixed|refined>_<train|test>.npz",
)


def main() -> int:
    _, p = parse_stage(parser)
    split = load_split(p.split_path)
    model, spec = load_model(p.model_path)
    fz = Featurizer(model, spec, batch_size=p.run_mbSize, flip_average=p.run_boFlipAverage, workers=p.run_workers)
    print(f"featurizing with {spec.backbone} ({spec.kind}) at {spec.resolution} px on {fz.device}")
    for side in ("train", "test"):
        items = split.side(side)
        rel = [path for path, _ in items]
        result = fz.featurize_paths([p.images_dir / r for r in rel], desc=side)
        arrays = {"paths": np.array(rel), "labels": np.array([y for _, y in items], dtype=np.int64),
                  "classes": np.array(split.classes), "features": result.features}
        if result.probs is not None:
            arrays["probs"] = result.probs
        out = save_npz(p.features_path(side), **arrays)
        print(f"wrote {out} ({result.features.shape[0]} x {result.features.shape[1]})")
    return 0


if __name__ == "__main__":
    run_stage(main)
