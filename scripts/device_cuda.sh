#!/usr/bin/env bash
# The CUDA run of issue 9, in one device call: kernel and whole-model parity against the CPU backend, then
# `engram bench prefill` and `engram bench decode` on the random-weight Llama-3-8B shape, then the Hugging Face
# transformers baselines on the same shape and prompts. Results land in $OUT (logs and JSON).
#
# Built here (no CUDA needed to build): `make dist-cuda` puts stripped binaries in dist/; then, through the device
# tool, run `bash scripts/device_cuda.sh` with carry = ["dist"].
# Stages can be picked: `bash scripts/device_cuda.sh parity prefill decode decode-ablations hf` (default: all).
# Every stage's files go to a work folder that is packed into $OUT/results.tgz after each stage (the device tool
# brings back only a few files).
set -uo pipefail
FINAL_OUT=${OUT:-/tmp/engram-out}
OUT=/tmp/engram-results
mkdir -p "$FINAL_OUT" "$OUT"
stages=${*:-parity prefill decode decode-ablations hf}
# NVRTC and cuBLASLt come from the image's Python CUDA wheels (the driver is on the system path).
. "$(dirname "$0")/device_env.sh"
export RUST_LOG=${RUST_LOG:-info}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
echo "libraries: $LD_LIBRARY_PATH"
for s in $stages; do
  case $s in
    parity)
      echo "== parity"
      dist/cuda_parity --test-threads=1 --nocapture 2>&1 | tee "$OUT/parity.log" | grep -E "relative error|within|test |panicked|result" ;;
    prefill)
      echo "== engram bench prefill"
      $ENGRAM bench prefill --device cuda:0 --out "$OUT/prefill.json" 2>"$OUT/prefill.err" | tee "$OUT/prefill.txt"
      tail -5 "$OUT/prefill.err" ;;
    decode)
      echo "== engram bench decode"
      $ENGRAM bench decode --device cuda:0 --profile --out "$OUT/decode.json" 2>"$OUT/decode.err" | tee "$OUT/decode.txt"
      tail -3 "$OUT/decode.err" ;;
    decode-ablations)
      # Each decode optimisation switched off on its own, then all of them (the previous session's kernels).
      for v in "pdl0:ENGRAM_PDL=0" "simt:ENGRAM_DECODE_ATTN=simt" "before:ENGRAM_PDL=0 ENGRAM_DECODE_ATTN=simt"; do
        name=${v%%:*}; vars=${v#*:}
        echo "== engram bench decode with $vars"
        env $vars $ENGRAM bench decode --device cuda:0 --out "$OUT/decode_$name.json" 2>"$OUT/decode_$name.err" | tee "$OUT/decode_$name.txt"
        tail -2 "$OUT/decode_$name.err"
      done ;;
    decode-splits)
      # Decode-attention splits aimed at 4 and 8 blocks per multiprocessor instead of 2.
      for n in 4 8; do
        echo "== engram bench decode with ENGRAM_DECODE_BLOCKS_PER_SM=$n"
        ENGRAM_DECODE_BLOCKS_PER_SM=$n $ENGRAM bench decode --device cuda:0 --out "$OUT/decode_bps$n.json" \
          2>"$OUT/decode_bps$n.err" | tee "$OUT/decode_bps$n.txt"
      done ;;
    decode-tiles4)
      echo "== engram bench decode, decode attention splits of at least 4 tiles (ENGRAM_DECODE_MIN_TILES=4)"
      ENGRAM_DECODE_MIN_TILES=4 $ENGRAM bench decode --device cuda:0 --out "$OUT/decode_tiles4.json" 2>"$OUT/decode_tiles4.err" | tee "$OUT/decode_tiles4.txt"
      tail -3 "$OUT/decode_tiles4.err" ;;
    decode-cublaslt)
      echo "== engram bench decode, every product through cuBLASLt (ENGRAM_GEMV=0)"
      ENGRAM_GEMV=0 $ENGRAM bench decode --device cuda:0 --out "$OUT/decode_cublaslt.json" 2>"$OUT/decode_cublaslt.err" | tee "$OUT/decode_cublaslt.txt"
      tail -3 "$OUT/decode_cublaslt.err" ;;
    hf)
      echo "== transformers baselines"
      PYTHONUNBUFFERED=1 python3 benches/baselines/hf_llama8b.py --out "$OUT/hf_baseline.json" > "$OUT/hf.log" 2>&1
      tail -40 "$OUT/hf.log" ;;
  esac
  tar czf "$FINAL_OUT/results.tgz" -C "$OUT" .
done
