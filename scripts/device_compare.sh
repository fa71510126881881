#!/usr/bin/env bash
# Two builds of engram on the same GPU in one device call, alternating A B A B: `engram bench decode` (and
# `bench prefill` with PREFILL=1) with each, so a refactor or an optimisation is judged against a baseline measured
# in the same run. A is dist/engram.gz (this tree, `make dist-cuda`); B is $BASELINE (default
# dist-baseline/engram.gz: build the baseline commit with `make dist-cuda` in a worktree and copy its dist/engram.gz
# there). Carry both folders: carry = ["dist", "dist-baseline"]. Results (JSON and tables) come back packed in
# $OUT/compare.tgz; the summary (decode tokens/s per batch, each build's median over the repetitions) prints last.
set -uo pipefail
FINAL_OUT=${OUT:-/tmp/engram-out}
OUT=/tmp/engram-compare
mkdir -p "$FINAL_OUT" "$OUT"
. "$(dirname "$0")/device_env.sh"
BASELINE=${BASELINE:-dist-baseline/engram.gz}
REPS=${REPS:-2}
gunzip -c "$BASELINE" > /tmp/engram-bin/engram-baseline && chmod +x /tmp/engram-bin/engram-baseline
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
for rep in $(seq 1 "$REPS"); do
  for side in a b; do
    bin=$ENGRAM
    [ "$side" = b ] && bin=/tmp/engram-bin/engram-baseline
    echo "== decode, build $side, repetition $rep"
    $bin bench decode --device cuda:0 --out "$OUT/decode_${side}_${rep}.json" 2>"$OUT/decode_${side}_${rep}.err" \
      | tee "$OUT/decode_${side}_${rep}.txt" | tail -3
    if [ "${PREFILL:-0}" = 1 ]; then
      echo "== prefill, build $side, repetition $rep"
      $bin bench prefill --device cuda:0 --reps 3 --out "$OUT/prefill_${side}_${rep}.json" \
        2>"$OUT/prefill_${side}_${rep}.err" | tee "$OUT/prefill_${side}_${rep}.txt" | tail -4
    fi
  done
done
tar czf "$FINAL_OUT/compare.tgz" -C /tmp engram-compare
python3 - "$OUT" <<'PY'
import glob, json, statistics, sys
runs = {}
for f in glob.glob(sys.argv[1] + "/decode_*_*.json"):
    side = f.rsplit("/", 1)[1].split("_")[1]
    for r in json.load(open(f))["runs"]:
        runs.setdefault((r["batch"], side), []).append(r["tokens_per_s"])
print("| batch | A tokens/s (median) | B tokens/s (median) | A / B |")
print("|---|---|---|---|")
for batch in sorted({b for b, _ in runs}):
    a, b = statistics.median(runs[(batch, "a")]), statistics.median(runs[(batch, "b")])
    print(f"| {batch} | {a:.1f} | {b:.1f} | {a / b:.3f} |")
PY
