#!/bin/bash
# Wall time of two stages with run tracking off and on, alternating, on an existing small demo DATA_DIR.
# usage: IMGCLASS_DATA_DIR=/tmp/demo benchmarks/tracking_overhead.sh   (after stages 0-5 ran there with the same --set)
set -e
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
S="--set demoImagesPerClass=8 --set rf_inputResolution=64 --set run_mbSize=8 --set svm_cvFolds=3"
for i in 1 2 3; do
  for t in 0 1; do
    for s in 1_prepareData 4_trainSVM; do
      a=$(date +%s.%N); IMGCLASS_TRACKING=$t $PY scripts/$s.py $S > /dev/null; b=$(date +%s.%N)
      echo "$s tracking=$t $(echo "$b - $a" | bc) s"
    done
  done
done
