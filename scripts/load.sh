#!/usr/bin/env bash
# Load test of a release build on loopback, bounded in time (about 6 minutes after the corpus is in):
#   1. wrk on /v1/retrieve for every retriever at 1, 8 and 64 connections (10 s each);
#   2. 300 and 1,500 concurrent chat completions (synthetic model);
#   3. ingestion over HTTP while wrk queries BM25 at 8 connections;
#   4. 1,000 slow clients that send half a request and stall, while /healthz is probed.
# A /healthz prober runs throughout; peak RSS is read per phase (VmHWM, reset between phases).
#
#   bash scripts/load.sh [OUT_DIR]        (results: OUT_DIR/load.jsonl and OUT_DIR/*.txt; default /tmp/engram-load)
#
# Needs wrk (Debian package `wrk`, installed here when missing), the embedder (scripts/fetch-model.sh), and the
# MuSiQue corpus with its GPT-3.5 open-IE triples (ENGRAM_MUSIQUE_DIR, default ../shared/data/musique).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/engram-load}"
musique="${ENGRAM_MUSIQUE_DIR:-../shared/data/musique}"
port="${ENGRAM_LOAD_PORT:-18431}"
addr="127.0.0.1:$port"
key="load-test-key"
bin=target/release/engram
mkdir -p "$out"
: > "$out/load.jsonl"
ulimit -n 65536 2>/dev/null || ulimit -n 16384

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
[ -x "$bin" ] || cargo build --release --locked --bin engram
bash scripts/fetch-model.sh >/dev/null

data=$(mktemp -d /tmp/engram-load-data.XXXXXX)
export ENGRAM__GRAPH__OPENIE_FILE="$musique/openie_gpt-3.5-turbo-1106.json"
export ENGRAM__SERVER__API_KEY="$key"
export ENGRAM__SERVER__MAX_CONNECTIONS=2048
echo "load: ingesting the MuSiQue corpus into $data"
"$bin" ingest --data-dir "$data" --model synthetic:tiny "$musique/corpus.json" > "$out/ingest.txt" 2>&1
"$bin" serve --data-dir "$data" --bind "$addr" --model synthetic:tiny > "$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 600); do curl -fs "http://$addr/readyz" >/dev/null && break; sleep 0.2; done
curl -fs "http://$addr/readyz" >/dev/null || { echo "load: the server did not get ready"; exit 1; }

peak_reset() { echo 5 > "/proc/$server/clear_refs" 2>/dev/null || true; }
peak_mb() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$server/status"; }
record() { # phase json-fragment
    printf '{"phase":"%s",%s,"peak_rss_mb":%s,"ended_at":%s}\n' "$1" "$2" "$(peak_mb)" "$(date +%s.%N)" \
        | tee -a "$out/load.jsonl"
}
alive() { kill -0 "$server" 2>/dev/null || { echo "load: THE SERVER DIED"; tail -20 "$out/server.log"; exit 1; }; }

python3 scripts/load_client.py healthz "$addr" 100000 > "$out/healthz.json" &
prober=$!

wrk_retrieve() { # method connections seconds label
    local lua="$out/retrieve-$1.lua"
    cat > "$lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $key"
local queries = {"Who founded the Journal of Mathematical Physics?", "When was the Eiffel Tower built?",
  "Which river flows through the capital of Hungary?", "What language is spoken in the birthplace of Mozart?"}
local i = 0
request = function()
  i = i + 1
  return wrk.format(nil, "/v1/retrieve", nil,
    '{"query":"' .. queries[i % #queries + 1] .. '","top_k":10,"method":"$1"}')
end
EOF
    wrk -t "$(( $2 < 2 ? 1 : 2 ))" -c "$2" -d "$3" --latency -s "$lua" "http://$addr" > "$out/wrk-$4.txt" 2>&1
    local rps p50 p99 non2xx errors
    rps=$(awk '/Requests\/sec/ {print $2}' "$out/wrk-$4.txt")
    p50=$(awk '$1 == "50%" {print $2}' "$out/wrk-$4.txt")
    p99=$(awk '$1 == "99%" {print $2}' "$out/wrk-$4.txt")
    non2xx=$(awk '/Non-2xx/ {print $5}' "$out/wrk-$4.txt")
    errors=$(awk '/Socket errors/ {print $4 $5 $6 $7 $8 $9}' "$out/wrk-$4.txt")
    record "$4" "\"requests_per_s\":${rps:-0},\"p50\":\"$p50\",\"p99\":\"$p99\",\"non_2xx\":${non2xx:-0},\"socket_errors\":\"${errors:-none}\""
    alive
}

for method in bm25 dense hybrid hipporag hipporag2; do
    for c in 1 8 64; do
        peak_reset
        wrk_retrieve "$method" "$c" 10s "retrieve-$method-c$c"
    done
done

for n in 300 1500; do
    peak_reset
    record "chat-$n" "$(python3 scripts/load_client.py chat "$addr" "$key" "$n" | sed 's/^{//; s/}$//')"
    alive
done

peak_reset
python3 - "$musique/questions.json" > "$out/ingest-body.json" <<'EOF'
import json, sys
paragraphs = [p for q in json.load(open(sys.argv[1]))[:20] for p in q["paragraphs"]]
docs = [{"title": "load " + p["title"], "text": "Load copy. " + p["paragraph_text"]} for p in paragraphs]
print(json.dumps({"documents": docs}))
EOF
job=$(curl -fs -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
    --data-binary @"$out/ingest-body.json" "http://$addr/v1/documents" | python3 -c 'import json,sys; print(json.load(sys.stdin)["job_id"])')
wrk_retrieve bm25 8 20s "retrieve-bm25-c8-while-ingesting"
status=$(curl -fs -H "Authorization: Bearer $key" "http://$addr/v1/jobs/$job")
for _ in $(seq 300); do
    case "$status" in *'"status":"queued"'*|*'"status":"running"'*) sleep 1
        status=$(curl -fs -H "Authorization: Bearer $key" "http://$addr/v1/jobs/$job") ;; *) break ;; esac
done
summary=$(echo "$status" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(json.dumps({"status": j["status"], "counts": j["counts"], "errors": len(j["errors"])}))')
record "ingest-while-querying" "\"job\":$summary"

peak_reset
python3 scripts/load_client.py slow "$addr" 1000 15 > "$out/slow.json" &
slow=$!
python3 scripts/load_client.py healthz "$addr" 14 > "$out/healthz-during-slow.json"
wait $slow
record "slow-clients" "$(sed 's/^{//; s/}$//' "$out/slow.json"),\"healthz_during\":$(cat "$out/healthz-during-slow.json")"
alive

kill -TERM $prober; wait $prober 2>/dev/null || true
record "healthz-throughout" "\"healthz\":$(cat "$out/healthz.json")"
grep -c '"level":"ERROR"\|panicked' "$out/server.log" > "$out/server-errors.txt" || true
echo "load: done; results in $out/load.jsonl; server log errors: $(cat "$out/server-errors.txt")"
