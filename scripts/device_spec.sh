#!/usr/bin/env bash
# Speculative decoding on the GPU (issue 6): `engram bench speculative` with the random-weight Llama-3-8B shape,
# greedy, 128-token prompts, at batch 1 and batch SPEC_BATCH2 (default 16): plain decoding, the replay oracle
# (always agrees, free: the mechanism's upper bound) and a copy of the target as draft at k = 2, 4, 8, a
# disagreeing draft (llama-3.2-1b shape, other weights) with the adaptive switch on and off, and prompt lookup.
# Random weights say nothing about real acceptance rates: rerun with SPEC_MODEL=DIR SPEC_DRAFT=DIR for real ones.
# Run through the device tool with carry = ["dist"] after `make dist-cuda`; output in $OUT/spec_b*.txt/json.
set -uo pipefail
OUT=${OUT:-/tmp/engram-out}
mkdir -p "$OUT"
. "$(dirname "$0")/device_env.sh"
MODEL=${SPEC_MODEL:-synthetic:llama-3-8b}
DRAFT=${SPEC_DRAFT:-synthetic:llama-3.2-1b@7}
TOKENS=${SPEC_TOKENS:-128}
for b in 1 ${SPEC_BATCH2:-16}; do
  $ENGRAM bench speculative --device cuda:0 --model "$MODEL" --reject-draft "$DRAFT" --batch "$b" \
    --tokens "$TOKENS" --out "$OUT/spec_b$b.json" > "$OUT/spec_b$b.txt" 2> "$OUT/spec_b$b.log"
  echo "batch $b rc=$?" >> "$OUT/spec_b$b.txt"
  cat "$OUT/spec_b$b.txt"
done
