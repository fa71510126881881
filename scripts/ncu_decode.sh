#!/usr/bin/env bash
# Nsight Compute counters for the decode kernels (speed of light, occupancy, warp stalls, memory), through the
# device tool with carry = ["dist"] after `make dist-cuda`: `bash scripts/ncu_decode.sh [attention] [cublas] [gemv]`.
# Writes $OUT/ncu_<stage>.txt. Counters need the Firecracker runtime (see the device tool's KINDS.md).
set -uo pipefail
OUT=${OUT:-/tmp/engram-out}
mkdir -p "$OUT"
. "$(dirname "$0")/device_env.sh"
NCU=$(ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
NCU=${NCU:-$(command -v ncu)}
S="--section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats --section MemoryWorkloadAnalysis"
BENCH="$ENGRAM bench decode --device cuda:0 --steps 6"
for s in ${*:-attention cublas gemv}; do
  case $s in
    attention) $NCU --clock-control none $S -k regex:"attn_decode_mma_d128" --launch-skip 64 --launch-count 6 \
              $BENCH --batch 64 > "$OUT/ncu_attention.txt" 2>&1 ;;
    cublas) $NCU --clock-control none $S -k regex:"nvjet|gemm|cutlass|sm90" --launch-skip 140 \
              --launch-count 4 $BENCH --batch 64 > "$OUT/ncu_cublas.txt" 2>&1 ;;
    gemv) $NCU --clock-control none $S -k regex:"gemv_swiglu_m1|gemv_m1" --launch-skip 40 --launch-count 3 \
              $BENCH --batch 1 > "$OUT/ncu_gemv.txt" 2>&1 ;;
  esac
  grep -E "^  [a-z_0-9]+ \(|Duration|DRAM Throughput|Achieved Active Warps" "$OUT/ncu_$s.txt" | head -40
done
