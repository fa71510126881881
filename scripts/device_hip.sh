#!/usr/bin/env bash
# HiP attention on the GPU, in one device call (carry = ["dist"] after `make dist-cuda`): the HiP, attention and
# H2O parity tests against the CPU backend, then `engram bench attention --kernel` on the Llama-3-8B shape (32
# query heads, 8 KV heads, head_dim 128): decode (one sequence, and HIP_BATCH sequences) and full causal prefill,
# dense against HiP, contexts 8k to 1M. Dense prefill is skipped above HIP_DENSE_PREFILL_MAX tokens (it grows as
# T²). Output in $OUT/hip_{parity.log,*.txt,*.json}.
set -uo pipefail
OUT=${OUT:-/tmp/engram-out}
mkdir -p "$OUT"
. "$(dirname "$0")/device_env.sh"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/hip_gpu.txt"
stages=${*:-parity decode prefill}
for s in $stages; do
  case $s in
    parity)
      dist/cuda_parity --test-threads=1 --nocapture hip attention h2o 2>&1 | tee "$OUT/hip_parity.log" \
        | grep -E "relative error|choose|test |panicked|result" ;;
    decode)
      $ENGRAM bench attention --kernel --device cuda:0 --phases decode --batch 1 \
        --contexts ${HIP_CONTEXTS:-8192,32768,131072,524288,1048576} --out "$OUT/hip_decode.json" ${HIP_ARGS:-} \
        2> "$OUT/hip_decode.log" | tee "$OUT/hip_decode.txt"
      $ENGRAM bench attention --kernel --device cuda:0 --phases decode --batch ${HIP_BATCH:-16} \
        --contexts ${HIP_BATCH_CONTEXTS:-8192,32768,131072} --out "$OUT/hip_decode_batch.json" ${HIP_ARGS:-} \
        2> "$OUT/hip_decode_batch.log" | tee "$OUT/hip_decode_batch.txt" ;;
    prefill)
      $ENGRAM bench attention --kernel --device cuda:0 --phases prefill \
        --contexts ${HIP_CONTEXTS:-8192,32768,131072,524288,1048576} \
        --skip-dense-above ${HIP_DENSE_PREFILL_MAX:-131072} --out "$OUT/hip_prefill.json" ${HIP_ARGS:-} \
        2> "$OUT/hip_prefill.log" | tee "$OUT/hip_prefill.txt" ;;
  esac
done
