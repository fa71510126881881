#!/usr/bin/env bash
# Fuzzes every parser that reads untrusted bytes with cargo-fuzz (libFuzzer, AddressSanitizer).
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 600 s, every target in fuzz/Cargo.toml)
#
# Seeds come from the repository's fixtures (scripts/fuzz_seeds.py); the corpora grow under fuzz/corpus/ and
# crashes land in fuzz/artifacts/<target>/ (both git-ignored). Each crash found becomes a regression test beside
# the code. The toolchain is stable, so RUSTC_BOOTSTRAP=1 lets rustc take the sanitizer flags cargo-fuzz passes.
# A summary line per target (runs, corpus size, crashes) is appended to fuzz/summary.txt (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
shift || true
cache="${ENGRAM_TOOL_CACHE:-$HOME/.cache/engram}"

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.2 --locked
if [ ! -x "$cache/venvs/gguf/bin/python" ]; then
    python3 -m venv "$cache/venvs/gguf"
    "$cache/venvs/gguf/bin/pip" install --quiet gguf==0.19.0 numpy==2.3.5
fi
"$cache/venvs/gguf/bin/python" scripts/fuzz_seeds.py fuzz/seeds

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^engram-fuzz$')
fi
export RUSTC_BOOTSTRAP=1
(cd fuzz && cargo fuzz build --debug-assertions)

echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) $(nproc) cores" >> fuzz/summary.txt
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    mkdir -p "fuzz/artifacts/$t/earlier" # what earlier runs found, kept apart from this run's count
    find "fuzz/artifacts/$t" -maxdepth 1 -type f ! -name fuzz.log -exec mv -t "fuzz/artifacts/$t/earlier" {} +
    log="fuzz/artifacts/$t/fuzz.log"
    status=0
    started=$SECONDS
    (cd fuzz && cargo fuzz run --debug-assertions "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=262144 -timeout=20 -print_final_stats=1) \
        >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    crashes=$(find "fuzz/artifacts/$t" -maxdepth 1 -type f ! -name fuzz.log | wc -l)
    line="$t: $((SECONDS - started))s of ${seconds}s, ${runs:-?} runs, corpus $(ls "fuzz/corpus/$t" | wc -l), crashes $crashes, exit $status"
    echo "$line" | tee -a fuzz/summary.txt
done
