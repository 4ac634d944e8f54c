"""Part-2 accuracy: classifier "dnn" (and "svmDnnRefined" on the same refined network) over 3 random
splits of the real fashionTexture photos, with the default parameters; prints the table for the README.

    flock /tmp/imgclass_cpu.lock python benchmarks/accuracy_part2.py [--seeds 0 1 2] [--set NAME=VALUE ...]

Runs the stage scripts as a user would (stages 1-5) in a scratch DATA_DIR whose images/ folder links
to the photos (nothing is copied). Each seed is its own data set name, so splits do not mix.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imgclass.fileio import write_json

ROOT = Path(__file__).resolve().parents[1]
FASHION = ROOT.parent / "shared" / "datasets" / "fashionTexture"


def stage(name: str, data_dir: Path, sets: list[str]) -> float:
    env = {**os.environ, "IMGCLASS_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
    args = [a for s in sets for a in ("--set", s)]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = [line for line in proc.stdout.splitlines() if "\r" not in line and "%|" not in line]
    print("\n".join(lines[-14:]), flush=True)
    if proc.returncode:
        raise SystemExit(f"{name} failed ({proc.returncode})")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--images", type=Path, default=FASHION)
    ap.add_argument("--data-dir", type=Path, default=None, help="scratch DATA_DIR (default: a temp folder)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--out", type=Path, default=None, help="write the summary JSON here")
    a = ap.parse_args()
    data_dir = a.data_dir or Path(tempfile.mkdtemp(prefix="imgclass_acc2_"))
    print(f"DATA_DIR: {data_dir}", flush=True)
    rows = []
    for seed in a.seeds:
        ds = f"fashionTexture_seed{seed}"
        link = data_dir / "images" / ds
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(a.images.resolve())
        base = [f"datasetName={ds}", f"randomSeed={seed}", *a.sets]
        dnn = [*base, "classifier=dnn"]
        print(f"=== seed {seed} ===", flush=True)
        stage("1_prepareData.py", data_dir, dnn)
        t_refine = stage("2_refineDNN.py", data_dir, dnn)
        stage("3_runDNN.py", data_dir, dnn)
        stage("5_evaluate.py", data_dir, dnn)
        # svmDnnRefined: the same refined network's features (model_refined.pt, features_refined_*),
        # with an SVM whose C is chosen by cross-validation on the training set.
        sdr = [*base, "classifier=svmDnnRefined"]
        stage("4_trainSVM.py", data_dir, sdr)
        stage("5_evaluate.py", data_dir, sdr)
        row = {"seed": seed, "refine_seconds": round(t_refine, 1)}
        for clf in ("dnn", "svmDnnRefined"):
            m = json.loads((data_dir / "results" / ds / clf / "metrics.json").read_text())
            row[clf] = m["overall_accuracy"]
            row[clf + "_classavg"] = m["class_averaged_accuracy"]
        curves = json.loads((data_dir / "results" / ds / "dnn" / "training_curves.json").read_text())
        row["train_seconds_epochs"] = round(sum(curves["seconds"]), 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {
        "rows": rows,
        "mean_dnn": sum(r["dnn"] for r in rows) / len(rows),
        "mean_svmDnnRefined": sum(r["svmDnnRefined"] for r in rows) / len(rows),
        "mean_refine_seconds": sum(r["refine_seconds"] for r in rows) / len(rows),
        "sets": a.sets,
    }
    print("| seed | dnn | svmDnnRefined | stage-2 time (s) |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['seed']} | {100 * r['dnn']:.2f}% | {100 * r['svmDnnRefined']:.2f}% | {r['refine_seconds']:.0f} |")
    print(f"| mean | {100 * summary['mean_dnn']:.2f}% | {100 * summary['mean_svmDnnRefined']:.2f}% | "
          f"{summary['mean_refine_seconds']:.0f} |")
    if a.out:
        write_json(a.out, summary)
    print(json.dumps(summary))
    # The runs' own results (training curves, confusion matrices, browsers) stay there to be looked at.
    print(f"each seed's results, training curves and models: {data_dir}/results/fashionTexture_seed<N>/ "
          f"(and proc/); delete {data_dir} when done" if a.data_dir is None else
          f"each seed's results: {data_dir}/results/fashionTexture_seed<N>/")


if __name__ == "__main__":
    main()
