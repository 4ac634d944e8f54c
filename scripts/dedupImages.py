"""Find duplicate and near-duplicate images in a folder (dhash); with --remove, move the extras aside.

Dry run by default: the groups are listed and nothing changes. With --remove, every image but the
kept one of each group (the copy with the most pixels, never one that annotations_fixes.tsv excludes
while another copy is left in) is moved to FOLDER/_duplicates/ (listed in _duplicates/moved.tsv),
never deleted. Images relabelled in annotations_fixes.tsv count in their new class.
Two kinds of group are not moved without --force: groups spanning class folders (the same photo
with two labels: which label is right is for a person to decide) are left in place, and where the
data set's images look alike to dhash nothing is moved (see the note it prints). --force overrides
both, and says which it overrode (and, for each group spanning classes, which label stays).
A copy mirrored left-right counts as a copy.
"""

from pathlib import Path

from imgclass.annotations import FIXES_FILE
from imgclass.cli import parse_stage, run_stage, stage_parser
from imgclass.data import DUPLICATES_LIST
from imgclass.dedup import DUPLICATES_FOLDER, DuplicateReport, find_duplicates, lookalike_note, move_duplicates

parser = stage_parser(
    __doc__.splitlines()[0],
    reads="FOLDER (default DATA_DIR/images/<datasetName>/), every image below it",
    writes="FOLDER/duplicates.tsv (the groups); with --remove, FOLDER/_duplicates/ and its moved.tsv",
)
parser.add_argument("folder", nargs="?", default=None, help="folder to scan (default: the data set's images)")
parser.add_argument("--remove", action="store_true", help="move duplicates to FOLDER/_duplicates/ (default: only report)")
parser.add_argument("--threshold", type=int, default=None,
                    help="bits of 256 that may differ for near duplicates (default: dedup_threshold)")
parser.add_argument("--force", action="store_true",
                    help="with --remove: also move groups that span class folders (keeping the copy with the "
                         "most pixels), and move even where the images look alike to dhash (see the note it prints)")


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _size(report: DuplicateReport, path: str) -> str:
    w, h = report.sizes.get(path, (0, 0))
    fix = report.fixes.get(path)
    fixed = "" if fix is None else ", excluded by" if report.excluded(path) else f", labelled {fix} by"
    return (f"{w}x{h}" if w else "size unknown") + (f"{fixed} {FIXES_FILE}" if fixed else "")


def main() -> int:
    args, p = parse_stage(parser)
    folder = Path(args.folder) if args.folder else p.images_dir
    threshold = p.dedup_threshold if args.threshold is None else args.threshold
    report = find_duplicates(folder, threshold)
    for path, reason in report.failed:
        print(f"skipped: {path}: {reason}")
    exact, near, groups = sum(len(g) - 1 for g in report.exact), len(report.to_move), len(report.groups)
    # The exact copies are among the near duplicates (0 bits apart): one count, the exact ones in it.
    exactly = f" ({exact} of them with an identical hash)" if exact else ""
    print(f"{len(report.paths)} images: {near} duplicate{_s(near)} within {threshold} bit{_s(threshold)} of "
          f"another image, in {groups} group{_s(groups)}{exactly}")
    cross = report.cross_class_groups()
    for n, group in enumerate(report.groups, 1):
        flag = "  <- in different class folders" if group in cross else ""
        print(f"group {n}: keep {group[0]} ({_size(report, group[0])}){flag}")
        for other in group[1:]:
            bits = report.bits_between(group[0], other)
            mirrored = ", mirrored" if report.is_mirrored(group[0], other) else ""
            print(f"    {other} ({_size(report, other)}, "
                  + (f"{bits} bit{_s(bits)}{mirrored})" if bits is not None else "via another member)"))
    try:
        print(f"wrote {report.write_groups(folder / DUPLICATES_LIST)}")
    except OSError as e:  # a read-only folder (a mounted archive, a colleague's share): the list is printed above
        if args.remove:  # nothing could be moved aside there either: stop before the first move fails
            raise ValueError(f"cannot write into {folder} ({e.strerror or e}): nothing moved; "
                             "the groups are listed above") from None
        print(f"note: could not write {DUPLICATES_LIST} into {folder} ({e.strerror or e}): the groups are listed above only")
    if cross:
        print(f"{len(cross)} group(s) span class folders: the same photo with different labels; check them by hand "
              f"(--remove leaves them in place; --force moves them too, keeping the copy with the most pixels, "
              f"whatever its class: the label kept is that copy's)")
    note = lookalike_note(report.typical_distance, threshold)
    if note and report.to_move:
        print(f"note: {note}")
    alike = report.lookalike_groups() if not note else []
    if alike:
        print(f"note: the images of {', '.join(c or 'the folder' for c in report.lookalike_classes)} look alike to dhash within their class "
              f"(distinct images lie within {threshold} bits of one another as often as copies would): their "
              f"{len(alike)} group(s) need not be copies, so --remove leaves them in place (--force moves them "
              "too; a lower --threshold catches copies only)")
    if not args.remove:
        if report.to_move:
            print("dry run: nothing moved; rerun with --remove to move the duplicates aside")
        return 0
    # With the data set's own look-alike note, the refusal below stands for every group, per class or not.
    alike_too = args.force or bool(note)
    to_move = report.moves(cross_class=args.force, alike=alike_too)
    if note and to_move and not args.force:
        print("not moving anything: these groups need not be copies (see the note); lower --threshold, "
              "or add --force to move them anyway")
        return 1
    if args.force and cross:
        # The copy kept is chosen by pixels and file size, which say nothing of the right label: say which stays.
        print(f"--force: moving the duplicates of the {len(cross)} group(s) that span class folders too; the label "
              "each keeps is its kept copy's class:")
        for group in cross:
            others = sorted({report.class_of(q) for q in group[1:]} - {report.class_of(group[0])})
            print(f"    {group[0]}: stays {report.class_of(group[0]) or '(no class folder)'}, its copies in "
                  f"{', '.join(c or '(no class folder)' for c in others)} moved")
    if args.force and note and to_move:
        print("--force: moving although the images look alike to dhash (see the note)")
    try:
        moved = move_duplicates(report, cross_class=args.force, alike=alike_too)
    except OSError as e:  # a full disk, a file locked by another program: each move made is in moved.tsv
        raise ValueError(f"moving the duplicates aside stopped: {e}; the files moved before it are listed in "
                         f"{folder / DUPLICATES_FOLDER / 'moved.tsv'}") from None
    left = "".join(f"; {n} group(s) {what} left in place" for n, what in (
        (len(cross), "spanning class folders"), (len(alike), "of look-alike classes")) if n and not args.force)
    print(f"moved {len(moved)} image(s) to {folder / DUPLICATES_FOLDER} (list: {DUPLICATES_FOLDER}/moved.tsv){left}")
    if moved and folder.resolve() == p.images_dir.resolve():
        print("next: scripts/1_prepareData.py, to split the data set without them")
    return 0


if __name__ == "__main__":
    run_stage(main)
