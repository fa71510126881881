#!/usr/bin/env bash
# Builds llama.cpp's `llama-bench` (the CPU speed baseline of BENCHMARKS.md) once, into a cache outside the checkout,
# and prints its path. The sources are the ones vendored in the llama-cpp-python sdist from PyPI (the only registry
# this project's machines reach), pinned by version and sha256; the build is native (`-DGGML_NATIVE=ON`), CPU only.
#
#   bash scripts/llama-bench.sh            # builds if needed, prints the binary's path
#   "$(bash scripts/llama-bench.sh | tail -n 1)" -m MODEL.gguf -t 2 -p 128 -n 32 -r 1
set -euo pipefail

VERSION=0.3.16
SHA256=34ed0f9bd9431af045bb63d9324ae620ad0536653740e9bb163a2e1fcb973be6
# The sdist on PyPI (pip download would build its metadata first, which needs scikit-build-core and cmake).
URL=https://files.pythonhosted.org/packages/e4/b4/c8cd17629ced0b9644a71d399a91145aedef109c0333443bef015e45b704/llama_cpp_python-$VERSION.tar.gz
CACHE="${ENGRAM_CACHE:-$HOME/.cache/engram}/llama.cpp-$VERSION"
BIN="$CACHE/build/bin/llama-bench"

if [[ -x "$BIN" ]]; then
    echo "$BIN"
    exit 0
fi

if ! command -v cmake >/dev/null; then
    echo "llama-bench: installing cmake" >&2
    if [[ $(id -u) -eq 0 ]]; then apt-get install -y -q cmake >&2; else sudo apt-get install -y -q cmake >&2; fi
fi

mkdir -p "$CACHE"
sdist="$CACHE/llama_cpp_python-$VERSION.tar.gz"
if [[ ! -f "$sdist" ]]; then
    curl -fsSL -o "$sdist.part" "$URL"
    mv "$sdist.part" "$sdist"
fi
got=$(sha256sum "$sdist" | cut -d' ' -f1)
if [[ "$got" != "$SHA256" ]]; then
    echo "llama-bench: $sdist has sha256 $got, expected $SHA256" >&2
    exit 1
fi
tar -xzf "$sdist" -C "$CACHE"
src="$CACHE/llama_cpp_python-$VERSION/vendor/llama.cpp"
cmake -S "$src" -B "$CACHE/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >&2
cmake --build "$CACHE/build" --target llama-bench -j "$(nproc)" >&2
echo "$BIN"
