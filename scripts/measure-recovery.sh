#!/usr/bin/env bash
# Measures recovery after a crash: ingests a corpus into a fresh data dir, kills the server with SIGKILL while the
# job indexes, restarts it and reports how long /readyz takes to answer 200 and how long the background recovery
# (indexing what the crash left unindexed) takes to finish (checks.recovery = done).
#
#   scripts/measure-recovery.sh [ENGRAM_BINARY] [CORPUS_JSON] [KILL_AFTER_SECS]
#
# Loopback only; the data dir is a temporary directory removed at exit. Needs curl.
set -euo pipefail
BIN=${1:-target/release/engram}
CORPUS=${2:-../shared/data/musique/corpus.json}
KILL_AFTER=${3:-5}
PORT=${PORT:-18391}
ADDR=127.0.0.1:$PORT
DATA=$(mktemp -d)
trap 'kill -9 ${PID:-0} 2>/dev/null || true; rm -rf "$DATA"' EXIT

start() {
  RUST_LOG=${RUST_LOG:-info} "$BIN" serve --data-dir "$DATA" --bind "$ADDR" >>"$DATA/server.log" 2>&1 &
  PID=$!
}
now() { date +%s.%N; }
wait_for() { # wait_for JQ_MATCH: polls /readyz until its body contains the text
  until curl -fsS "http://$ADDR/readyz" 2>/dev/null | grep -q "$1"; do sleep 0.05; done
}

start
wait_for '"ready"'
curl -fsS -F "file=@$CORPUS" "http://$ADDR/v1/documents" >/dev/null
sleep "$KILL_AFTER"
kill -9 "$PID"
wait "$PID" 2>/dev/null || true
echo "killed after ${KILL_AFTER}s of ingestion"

t0=$(now)
start
wait_for '"ready"'
t1=$(now)
wait_for '"recovery":"done"'
t2=$(now)
printf 'ready after %.2fs; recovery (re-indexing documents left unindexed) done after %.2fs\n' \
  "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t0" | bc)"
grep -E "loaded|open|indexed documents left|recover" "$DATA/server.log" | tail -n 12 || true
