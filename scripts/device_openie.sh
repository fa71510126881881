#!/usr/bin/env bash
# LLM open-IE throughput on the GPU: `engram ingest` of the demo corpus with the random-weight Llama-3-8B shape on
# cuda:0, once with graph.extractor = fallback (model loaded, rules extract) and once with graph.extractor = llm
# (JSON-constrained answers, all of a round's passages in the engine at once). The job's own time (`job: failed
# in Ns`, from the ingest log) leaves out model loading and kernel compiling; the fallback job's is the baseline.
# Random weights fill every answer up to graph.llm_max_tokens (OPENIE_MAX_TOKENS, default 256), so this is the
# worst case per passage; rerun with a real model directory in OPENIE_MODEL for real answers. Run through the device tool with carry = ["dist"]
# after `make dist-cuda`; output in $OUT/openie.txt.
set -uo pipefail
OUT=${OUT:-/tmp/engram-out}
mkdir -p "$OUT"
. "$(dirname "$0")/device_env.sh"
export ENGRAM__EMBEDDING__ENABLED=false ENGRAM__ENGINE__KV_CACHE_MIB=16384 ENGRAM__ENGINE__TOKEN_BUDGET=8192
export ENGRAM__ENGINE__MODEL=${OPENIE_MODEL:-synthetic:llama-3-8b} ENGRAM__ENGINE__DEVICE=cuda:0
export ENGRAM__GRAPH__LLM_MAX_TOKENS=${OPENIE_MAX_TOKENS:-256}
{
  for x in fallback llm; do
    rm -rf "/tmp/openie-$x"
    start=$(date +%s.%N)
    ENGRAM__GRAPH__EXTRACTOR=$x $ENGRAM ingest --data-dir "/tmp/openie-$x" corpora/demo/corpus.json \
      > "$OUT/openie_$x.log" 2>&1
    rc=$?
    end=$(date +%s.%N)
    passages=$(python3 -c "import sqlite3; print(sqlite3.connect('/tmp/openie-$x/engram.db').execute('select count(*) from passages').fetchone()[0])")
    triples=$(python3 -c "import sqlite3; print(sqlite3.connect('/tmp/openie-$x/engram.db').execute('select count(*) from triples').fetchone()[0])")
    extractor=$(python3 -c "import sqlite3; print(sqlite3.connect('/tmp/openie-$x/engram.db').execute('select distinct extractor from extractions').fetchall())")
    job=$(grep -o 'failed in [0-9.]*s' "$OUT/openie_$x.log" | tail -1)
    echo "extractor=$x rc=$rc passages=$passages triples=$triples recorded=$extractor job: $job wall_s=$(python3 -c "print(round($end-$start,2))")"
  done
} | tee "$OUT/openie.txt"
