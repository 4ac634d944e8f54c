"""Stage 1: split the data set's images into a training and a test set.

Rules, in order: train/ and test/ (or val/) folders in the data set; a dedicatedTestImages.tsv;
imagesSplitBy = "subdir" (each sub-folder of a class on one side); else a seeded random split of each
class by ratioTrainTest. Files that do not decode are listed and left out.
"""

from imgclass.cli import parse_stage, run_stage, stage_parser
from imgclass.data import DatasetError, exact_duplicates_across, make_split, save_split

parser = stage_parser(
    __doc__.splitlines()[0],
    reads="DATA_DIR/images/<datasetName>/",
    writes="DATA_DIR/proc/<datasetName>/split.json",
)


def main() -> int:
    _, p = parse_stage(parser)
    split = make_split(p.images_dir, p.ratioTrainTest, p.randomSeed, p.imagesSplitBy)
    for path, reason in split.excluded:
        print(f"left out: {path}: {reason}")
    print(f"split by: {split.method}")
    print(f"  {'class':<20} {'train':>6} {'test':>6}")
    for c, n in split.counts().items():
        print(f"  {c:<20} {n['train']:>6} {n['test']:>6}")
    print(f"  {'total':<20} {len(split.train):>6} {len(split.test):>6}")
    for tr, te in exact_duplicates_across(split, p.images_dir):
        print(f"warning: identical files on both sides: {tr} (train) and {te} (test)")
    save_split(split, p.split_path)
    print(f"wrote {p.split_path}")
    return 0


if __name__ == "__main__":
    run_stage(main, (DatasetError,))
