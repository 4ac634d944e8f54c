"""Stage 1: split the data set's images into a training and a test set.

Rules, in order: train/ and test/ (or val/) folders in the data set; a dedicatedTestImages.tsv;
imagesSplitBy = "subdir" (each sub-folder of a class on one side); else a seeded random split of each
class by ratioTrainTest; rerun, a random or subdir split keeps each image's earlier side and shares
out only the new images (--resplit: split anew). Files that do not decode are listed and left out. Near duplicates across
train and test (dhash, leakageCheck / dedup_threshold) are listed and, by default, both kept in train
(unless a class would lose its last test image, or the data set looks too alike to dhash: see the README);
near duplicates on one side filed under different classes are listed as label conflicts.
"""

from collections.abc import Sequence
from pathlib import Path

from imgclass.annotations import FIXES_FILE, read_fixes
from imgclass.cli import parse_stage, run_stage, stage_parser
from imgclass.cpus import usable_cpus
from imgclass.data import (
    DatasetError, Split, balance_notes, balancing_off, confirmed_labels, dedicated_file_hint, earlier_sides,
    exact_duplicates_across, fix_notes, load_split, make_split, save_split, skipped_folders, skipped_note,
    small_images_note, split_change_note, subdir_notes, unread_images_note, unused_rule_notes,
)
from imgclass.dedup import (HASH_CACHE_FILE, HashCache, LeakCheck, MirroredHash, apply_leakage_check, hash_files,
                            hashes_lookalike_note, label_conflicts, path_stats, write_conflicts)
from imgclass.params import Params
from imgclass.terminal import ljust, name_column

parser = stage_parser(
    __doc__.splitlines()[0],
    reads="DATA_DIR/images/<datasetName>/",
    writes="DATA_DIR/proc/<datasetName>/split.json (and near_duplicates.tsv: the leakage check's pairs; "
           "label_conflicts.tsv: near duplicates on one side filed under different classes)",
)
parser.add_argument("--resplit", action="store_true",
                    help="split anew; without it, images keep the side an earlier split.json gave them "
                         "(same randomSeed, ratioTrainTest, imagesSplitBy), and only new images are shared out")
SHOW_LEAKS = 10  # pairs printed; the rest are in near_duplicates.tsv


def earlier_split(path: Path) -> Split | None:
    """The split.json of an earlier run, if there is a readable one."""
    try:
        return load_split(path)
    except FileNotFoundError:
        return None
    except ValueError as e:  # damaged: it is replaced below
        print(f"note: splitting anew, since the earlier {path.name} cannot be read ({str(e).split('; rerun')[0]})")
        return None


def report_conflicts(p: Params, split: Split, check: LeakCheck) -> None:
    """Name the near-duplicate pairs on one side of the split filed under different classes."""
    conflicts = label_conflicts(split, check.hashes, p.dedup_threshold,
                                settled=confirmed_labels(split, read_fixes(p.images_dir)))
    listed = write_conflicts(p.proc_dir / "label_conflicts.tsv", conflicts)
    if not conflicts:
        return
    print(f"label conflicts: {len(conflicts)} near-duplicate pair(s) on one side of the split filed under "
          "different classes (the same photo with two labels: one of each pair is likely wrong):")
    for c in conflicts[:SHOW_LEAKS // 2]:
        how = f"{c.distance} bits{', mirrored' if c.mirrored else ''}"
        print(f"  {c.a} ({c.class_a}) ~ {c.b} ({c.class_b}), both {c.side}, {how}")
    print(f"  all in {listed}; fix the wrong label in {p.images_dir / FIXES_FILE} (or EXCLUDE it); where both "
          "are right, a line giving each its own class stops this note")
    if note := (check.lookalike_note if check.leaks else hashes_lookalike_note(check.hashes, p.dedup_threshold)):
        print(f"  (these need not be copies: {note})")


def main() -> int:
    args, p = parse_stage(parser)
    previous = earlier_split(p.split_path)
    # The images the last run hashed and that have not changed since: neither checked nor hashed again.
    hash_cache = HashCache(p.proc_dir / HASH_CACHE_FILE)
    unchanged = hash_cache.unchanged(p.images_dir)
    stats = {rel: hash_cache.entries[rel][0] for rel in unchanged}
    fresh: dict[str, MirroredHash] = {}

    def check_and_hash(paths: Sequence[Path], progress: bool) -> list[str | None]:
        """The decode check, done by hashing: the leakage check needs every image's hashes, and
        decoding each photo once for both halves stage 1's time (a file that does not decode has no hash)."""
        rels = [path.relative_to(p.images_dir).as_posix() for path in paths]
        stats.update(path_stats(p.images_dir, rels))  # before reading: a file changed meanwhile is read again next run
        hashes, problems = hash_files(paths, workers=min(8, usable_cpus()), progress=progress, with_mirror=True)
        fresh.update((rel, h) for rel, h in zip(rels, hashes) if h is not None)
        return problems

    split = make_split(p.images_dir, p.ratioTrainTest, p.randomSeed, p.imagesSplitBy, progress=True,
                       previous=None if args.resplit else previous, decoded_before=unchanged.keys(),
                       check_decode=check_and_hash if p.leakageCheck != "off" else True)
    uneven = subdir_notes(split, p.ratioTrainTest)  # of the rule's split, before the leakage check moves images
    if p.leakageCheck != "off":
        # A random split kept from an earlier run: an image new since then that copies one of its test
        # images joins that one in test (else the old test image went to train, and the test set that
        # results are compared on lost it). Not in a subdir split, whose sub-folders stay whole.
        kept = earlier_sides(previous, split.settings, split.sizes)[0] if previous and not args.resplit and \
            split.method == "random" else {}
        in_split = split.sides()
        # Any image not hashed above (none, as make_split reads them now) is hashed by the check: its stats first.
        stats.update(path_stats(p.images_dir, [rel for rel in in_split if rel not in stats]))
        leakage = apply_leakage_check(split, p.images_dir, p.leakageCheck, p.dedup_threshold,
                                      p.proc_dir / "near_duplicates.tsv", kept, shown=SHOW_LEAKS,
                                      known={rel: h for rel, h in {**unchanged, **fresh}.items() if rel in in_split})
        hash_cache.save({rel: h for rel, h in leakage.check.hashes.items() if rel in in_split}, stats)
        for line in leakage.lines:
            print(line)
        split, check = leakage.split, leakage.check
        report_conflicts(p, split, check)
    else:  # an earlier run's lists would pass for this split's
        for name in ("near_duplicates.tsv", "label_conflicts.tsv"):
            (p.proc_dir / name).unlink(missing_ok=True)
    if note := split_change_note(previous, split, args.resplit):
        print(f"note: {note}")
    for path, reason in split.excluded:
        print(f"left out: {path}: {reason}")
    print(f"split by: {split.method}")
    shown, width = name_column(split.classes, at_least=20)
    print(f"  {'class':<{width}} {'train':>6} {'test':>6}")
    for c, n in split.counts().items():
        print(f"  {ljust(shown[c], width)} {n['train']:>6} {n['test']:>6}")
    print(f"  {'total':<{width}} {len(split.train):>6} {len(split.test):>6}")
    for note in balance_notes(split, balancing_off(p.classifier, p.as_dict())):
        print(f"note: {note}")
    for note in [*uneven, *fix_notes(split, p.images_dir), *unused_rule_notes(split, p.images_dir, p.imagesSplitBy),
                 *filter(None, [dedicated_file_hint(p.images_dir), unread_images_note(p.images_dir)])]:
        print(f"note: {note}")
    if note := small_images_note(split, p.images_dir, p.rf_inputResolution):
        print(f"note: {note}")
    # A class folder named _background or .misc (or photos in cat/_new/) would otherwise vanish without a
    # word; _duplicates/ (dedupImages.py --remove) is skipped on purpose, so this is a note, not an error.
    if skipped := skipped_folders(p.images_dir):
        print(f"note: not read (folders starting with _ or . are skipped, beside the classes and inside them): "
              f"{skipped_note(skipped)}")
    if p.leakageCheck == "off":
        # Byte-identical files are at distance 0, so the near-duplicate check above already reports
        # them; only without it is this cheaper exact check worth reading every file again.
        for tr, te in exact_duplicates_across(split, p.images_dir):
            print(f"warning: identical files on both sides: {tr} (train) and {te} (test)")
    save_split(split, p.split_path)
    print(f"wrote {p.split_path}")
    return 0


if __name__ == "__main__":
    run_stage(main, (DatasetError,))
