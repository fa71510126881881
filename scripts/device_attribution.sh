#!/usr/bin/env bash
# `engram bench attribution` on the GPU (8B-shaped random weights, passages of 150 random tokens, 128
# permutations): passages encoded once against every coalition prompt scored alone (timed on about 64 of them,
# scaled); at 10 passages also the joint prepacked mode, at 20 passages 8-, 16- and 32-token answers. Run through
# the device tool with carry = ["dist"] after `make dist-cuda`; output in $OUT/attribution_{10,20}.{txt,json}.
set -uo pipefail
OUT=${OUT:-/tmp/engram-out}
mkdir -p "$OUT"
. "$(dirname "$0")/device_env.sh"
$ENGRAM bench attribution --device cuda:0 --passages 10 --joint --out "$OUT/attribution_10.json" \
  2> "$OUT/attribution_10.log" | tee "$OUT/attribution_10.txt"
$ENGRAM bench attribution --device cuda:0 --passages 20 --answer-tokens 8,16,32 --out "$OUT/attribution_20.json" \
  2> "$OUT/attribution_20.log" | tee "$OUT/attribution_20.txt"
