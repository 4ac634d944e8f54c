"""Stage 6: export the trained classifier as a model bundle and serve it as a REST web service.

The bundle (model.onnx + bundle.json) holds everything a server needs: one ONNX model from the
preprocessed image to class scores (backbone, mirror averaging, L2 normalisation and SVM folded
in, or the refined network), the class names, the preprocessing, the training metrics and a content
hash as model version. The service (python -m imgclass.serve) loads it with ONNX Runtime only.
"""

from imgclass.cli import do_not_track, parse_stage, run_stage, stage_parser, track_now
from imgclass.provenance import StaleFilesError  # torch-free, like everything the --bundle path imports

parser = stage_parser(
    __doc__.splitlines()[0],
    reads="DATA_DIR/proc/<datasetName>/model_<fixed|refined>.pt, svm_*.npz, features_<kind>_train.npz (flip averaging, provenance); results/<datasetName>/<classifier>/metrics.json",
    writes="DATA_DIR/deploy/<datasetName>/<classifier>/: model.onnx, bundle.json; then serves it on http://HOST:PORT/",
)
parser.add_argument("--no-serve", action="store_true", help="export the bundle and stop")
parser.add_argument("--bundle", default=None, metavar="DIR",
                    help="serve this existing bundle folder instead of exporting one (no torch needed)")
parser.add_argument("--host", default=None, help="address to listen on (default dep_host: 127.0.0.1)")
parser.add_argument("--port", type=int, default=None, help="TCP port (default dep_port)")
parser.add_argument("--workers", type=int, default=None, help="server processes (default dep_workers)")


def main() -> int:
    args, p = parse_stage(parser)
    host = args.host or p.dep_host
    port = p.dep_port if args.port is None else args.port
    workers = p.dep_workers if args.workers is None else args.workers
    # Checked as dep_port and dep_workers are (a flag bypasses PARAMETERS.py's checks): port 70000 ended in
    # an OverflowError traceback from the socket, after the export when --no-serve had skipped the port check.
    if not 1 <= port <= 65535:
        parser.error(f"--port {port}: must be between 1 and 65535")
    if workers < 1:
        parser.error(f"--workers {workers}: must be 1 or more")
    if not args.no_serve:
        from imgclass.serve import api_key_from_env, check_port_free

        check_port_free(host, port)  # now, not after an export that takes half a minute
        api_key_from_env()  # likewise a key in IMGCLASS_API_KEY that no HTTP header can carry
    if args.bundle:
        from imgclass.export import load_bundle

        bundle = load_bundle(args.bundle)
        # Its data set and classifier are the bundle's, not the parameters': recording it under the
        # parameters' would show a deployment of a model that was never deployed.
        do_not_track()
    else:
        from imgclass.export import export_bundle
        from imgclass.provenance import check_trained_settings, trained_classifier

        model, svm, flip = trained_classifier(p, flip_note=False)  # a difference is refused just below
        check_trained_settings(p, model, svm)  # the run history records this deployment under the parameters
        print(f"exporting {p.classifier} of {p.datasetName} (mirror averaging {'on' if flip else 'off'}) ...")
        bundle = export_bundle(
            model,
            p.bundle_dir,
            p.classifier,
            svm_path=svm,
            flip_average=flip,
            metrics_path=p.results_dir / "metrics.json",
            dataset=p.datasetName,
        )
        print(f"classes: {', '.join(bundle.classes)}; model version {bundle.version}")
        if not bundle.metrics:  # none, or stage 5's describe another model or SVM (stage 2, 3 or 4 rerun since)
            print(f"test metrics left out of the bundle ({bundle.info.get('metrics_left_out')}): "
                  f"run scripts/5_evaluate.py, then this script again, to include them")
    print(f"bundle: {bundle.path}")
    if args.no_serve:
        return 0
    from imgclass.serve import become_service, service_command, service_url

    # The client finds the service at dep_port and takes it for the parameters' model: served
    # elsewhere, or a bundle (of its own data set and classifier), it must be told where.
    where = f" --url {service_url(host, port)}" if args.bundle or (host, port) != (p.dep_host, p.dep_port) else ""
    print(f"score photos from another shell: python scripts/6_callWebservice.py{where} PHOTO_OR_FOLDER (with the same "
          "--set options as here), or on the service's web page")

    track_now(__file__)  # the export is done; become_service never returns to run_stage to record it
    # (after do_not_track, a no-op)
    return become_service(service_command(bundle.path, p, host, port, workers))


if __name__ == "__main__":
    run_stage(main, (StaleFilesError,))  # a missing or damaged bundle is a BundleError (a ValueError): one line, exit 1
