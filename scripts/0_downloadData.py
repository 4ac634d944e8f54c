"""Stage 0: get the images of the data set into DATA_DIR/images/<datasetName>/<class>/.

- the folder already holds class folders: report the images per class, change nothing;
- a URL list (urlsFile, or --urls FILE; TSV of label<TAB>url): download it, resuming a partial run;
- the demo data set (datasetName = "fashionTextureDemo"): generate it (synthetic, offline).
"""

from pathlib import Path

from imgclass.cli import parse_stage, run_stage, stage_parser
from imgclass.data import alike_class_notes, class_counts, find_split_folders, loose_images_hint, other_datasets_hint
from imgclass.download import download_images
from imgclass.params import home_problem
from imgclass.synthetic import CLASSES as DEMO_CLASSES
from imgclass.synthetic import README_FILE as DEMO_README
from imgclass.synthetic import generated_per_class
from imgclass.synthetic import generate_demo_dataset
from imgclass.terminal import ljust, name_column

DEMO_DATASET = "fashionTextureDemo"

parser = stage_parser(
    __doc__.splitlines()[0],
    reads="urlsFile / --urls (a TSV of label<TAB>url), or nothing for the demo data set",
    writes="DATA_DIR/images/<datasetName>/<class>/* (.jpg, .png, ... as each image decodes; download_manifest.tsv: where each image came from; download_failures.tsv: broken URLs). The demo data set (datasetName = fashionTextureDemo) is generated when its folder is empty: demoImagesPerClass images per class",
)
parser.add_argument("--urls", default=None, metavar="FILE", help="TSV of label<TAB>url to download (overrides urlsFile)")
parser.add_argument("--retry-failed", action="store_true",
                    help="request again the URLs an earlier run found gone (HTTP 404 or 410); other failures "
                         "are retried at every run anyway")


def _class_names(counts: dict[str, int]) -> set[str]:
    """The classes of class_counts's keys (train/dotted and test/dotted: one class)."""
    return {k.rsplit("/", 1)[-1] for k in counts}


def _unfinished_demo(out: Path, counts: dict[str, int]) -> bool:
    """The demo data set's folder as an interrupted generation left it: class folders of the demo's
    classes only, and no README.txt (the generator writes it last)."""
    return bool(counts) and not (out / DEMO_README).is_file() and set(counts) <= set(DEMO_CLASSES)


def main() -> int:
    args, p = parse_stage(parser)
    out = p.images_dir
    # expanduser: "~/lists/urls.tsv" given in PARAMETERS.py or quoted on the command line is not
    # expanded by the shell.
    if args.urls and (problem := home_problem(args.urls)):
        parser.error(f"--urls {args.urls}: {problem}")
    urls = Path(args.urls).expanduser() if args.urls else p.urls_file
    counts = class_counts(out)
    if urls:
        report = download_images(urls, out, workers=p.dl_workers, timeout=p.dl_timeoutSec,
                                 retries=p.dl_retries, max_bytes=p.dl_maxBytes, retry_gone=args.retry_failed)
        print(report.summary())
        for line in report.notes(out):
            print(line)
        counts = class_counts(out)
        # A label whose every URL failed has no folder: list it, or a whole missing class goes unseen.
        counts.update({label: 0 for label in report.failed_labels if label not in counts})
    elif p.datasetName == DEMO_DATASET and _unfinished_demo(out, counts):
        # Ctrl-C or a kill while generating: the images written are complete (atomic), so
        # generating again writes only the missing ones (same seed, same bytes).
        print(f"{out}: the demo data set was not finished (its generation was interrupted, "
              f"{sum(counts.values())} images written): generating the rest.")
        generate_demo_dataset(out, images_per_class=p.demoImagesPerClass, seed=p.randomSeed)
        counts = class_counts(out)
    elif any(counts.values()):
        n = len(_class_names(counts))
        sides = " in train and test folders (split in advance)" if any("/" in k for k in counts) else ""
        print(f"{out} already holds {n} class folder{'' if n == 1 else 's'}{sides}; nothing to do.")
        made = generated_per_class(out) if p.datasetName == DEMO_DATASET else None
        if made is not None and made != p.demoImagesPerClass:
            # The parameter applies to an empty folder only: said, or 20 asked for would pass for 20 made.
            print(f"note: demoImagesPerClass = {p.demoImagesPerClass}, but these demo images were generated with "
                  f"{made} per class, and are kept: demoImagesPerClass applies when the folder is empty (delete "
                  f"{out} to draw them anew, then rerun the stages from 1)")
    elif p.datasetName == DEMO_DATASET:
        print(f"Generating the SYNTHETIC demo data set in {out} (drawn garments, not photographs).")
        print(f"To use your own photos: put them in {out.parent}/<name>/<class>/ and set datasetName = '<name>'.")
        generate_demo_dataset(out, images_per_class=p.demoImagesPerClass, seed=p.randomSeed)
        counts = class_counts(out)
    else:
        found = loose_images_hint(out) if out.is_dir() else other_datasets_hint(out)
        raise FileNotFoundError(
            f"{out} {'holds no class folders' if out.is_dir() else 'does not exist'}. Put your photos in "
            f"{out}/<class>/, or give a URL list with --urls FILE (TSV: label<TAB>url), "
            f"or use the demo data set: --set datasetName={DEMO_DATASET}{found}"
        )
    shown, width = name_column(list(counts), at_least=20)
    for c, n in counts.items():
        failed_all = urls and n == 0 and c in report.failed_labels
        print(f"  {ljust(shown[c], width)} {n:>6} image file{'' if n == 1 else 's'}" + ("  <- none: every URL of this label failed" if failed_all else ""))
    for note in alike_class_notes(list(counts)):  # a list's "Dotted" beside the folder dotted/
        print(f"note: {note}")
    # Said here, where the folders are listed, rather than first by stage 1's error.
    # (A test folder's class may be empty in a data set split in advance: stage 1 only notes it.)
    test_side = f"{folders[1].name}/" if (folders := find_split_folders(out)) else None
    if empty := [c for c, n in counts.items() if n == 0 and not (urls and c in report.failed_labels)
                 and not (test_side and c.startswith(test_side))]:
        print(f"note: no image files in {', '.join(empty)}: stage 1 needs an image in every class folder "
              "(add photos, or remove the folder)")
    if len(_class_names(counts)) == 1:
        print("note: one class folder only: stage 1 needs two or more (one sub-folder of photos per class)")
    print(f"images: {out}")
    return 0


if __name__ == "__main__":
    run_stage(main)
