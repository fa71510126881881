#!/usr/bin/env bash
# H2O on the GPU, in one device call (carry = ["dist"] after `make dist-cuda`): the H2O parity tests against the
# CPU backend, then `engram bench h2o` on the Llama-3-8B shape: 32 sequences with 8,192-token prompts, 256 decode
# steps, a 20% budget (10% heavy hitters + 10% recent, evicting every 64 tokens) against the full cache. H2O_ARGS
# adds flags (more budgets: `--heavy 0.1,0.05 --recent 0.1,0.05`; `--slack 16`).
# Output in $OUT/h2o_{parity.log,bench.txt,bench.json}.
set -uo pipefail
OUT=${OUT:-/tmp/engram-out}
mkdir -p "$OUT"
. "$(dirname "$0")/device_env.sh"
dist/cuda_parity --test-threads=1 --nocapture h2o 2>&1 | tee "$OUT/h2o_parity.log" | grep -E "relative error|test |result"
$ENGRAM bench h2o --device cuda:0 --out "$OUT/h2o_bench.json" ${H2O_ARGS:-} 2> "$OUT/h2o_bench.log" | tee "$OUT/h2o_bench.txt"
