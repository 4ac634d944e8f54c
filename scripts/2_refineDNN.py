"""Stage 2: build the network that stage 3 runs over the images.

classifier = "svm": the ImageNet-pretrained backbone as is (a fixed featurizer).
classifier = "dnn" / "svmDnnRefined": refine the network on the training set (Part 2).
"""

from imgclass.cli import parse_stage, run_stage, stage_parser
from imgclass.modelfile import ModelSpec, build_model, save_model

parser = stage_parser(
    __doc__.splitlines()[0],
    reads="DATA_DIR/proc/<datasetName>/split.json (refinement only), the backbone's pretrained weights",
    writes="DATA_DIR/proc/<datasetName>/model_fixed.pt (svm) or model_refined.pt (dnn, svmDnnRefined)",
)


def main() -> int:
    _, p = parse_stage(parser)
    if p.classifier != "svm":
        raise NotImplementedError(
            f"classifier = {p.classifier!r}: DNN refinement is not implemented yet; use classifier = 'svm'"
        )
    spec = ModelSpec(p.rf_pretrainedModel, p.rf_inputResolution, p.rf_resizeMode, kind="fixed")
    model = build_model(spec, pretrained=True, weights_dir=p.rf_weightsDir or None)
    save_model(p.model_path, model, spec)
    print(f"backbone {spec.backbone} at {spec.resolution} px ({spec.resize_mode}), {spec.feature_dim} features")
    print(f"wrote {p.model_path}")
    return 0


if __name__ == "__main__":
    run_stage(main, (NotImplementedError,))
