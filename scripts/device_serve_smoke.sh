#!/usr/bin/env bash
# Serving on the GPU, end to end: `engram serve --device cuda:0` with the random-weight Llama-3-8B shape, one
# chat completion (JSON), one streamed completion and one long-prompt completion under an H2O kv_budget through
# the HTTP API, then the engine's metrics. Run through
# the device tool with carry = ["dist"] after `make dist-cuda`; output in $OUT/serve_smoke.txt.
set -uo pipefail
OUT=${OUT:-/tmp/engram-out}
mkdir -p "$OUT"
. "$(dirname "$0")/device_env.sh"
export ENGRAM__EMBEDDING__ENABLED=false ENGRAM__GRAPH__ENABLED=false ENGRAM__ENGINE__KV_CACHE_MIB=4096
$ENGRAM serve --data-dir /tmp/engram-data --bind 127.0.0.1:8080 \
  --model synthetic:llama-3-8b --device cuda:0 > "$OUT/serve.log" 2>&1 &
pid=$!
for _ in $(seq 120); do curl -sf 127.0.0.1:8080/readyz >/dev/null && break; sleep 1; done
{
  echo "== /v1/models"; curl -s 127.0.0.1:8080/v1/models; echo
  echo "== chat completion (JSON)"
  time curl -s 127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' \
    -d '{"model":"synthetic:llama-3-8b","messages":[{"role":"user","content":"Who wrote Hamlet?"}],"max_tokens":64,"temperature":0}'
  echo; echo "== streamed completion (first and last events)"
  curl -sN 127.0.0.1:8080/v1/completions -H 'content-type: application/json' \
    -d '{"model":"synthetic:llama-3-8b","prompt":"The capital of France is","max_tokens":32,"stream":true,"temperature":0.7,"seed":1}' \
    | sed -n '1,2p;$p'
  echo "== chat completion under an H2O budget (2,400-token prompt, 5% + 5%)"
  long=$(python3 -c 'print("the quick brown fox jumps over the lazy dog " * 55)')
  time curl -s 127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' \
    -d "{\"messages\":[{\"role\":\"user\",\"content\":\"$long\"}],\"max_tokens\":96,\"temperature\":0,\"kv_budget\":{\"heavy_ratio\":0.05,\"recent_ratio\":0.05}}" \
    | python3 -c 'import json,sys; b=json.load(sys.stdin); print(json.dumps({"usage": b.get("usage"), "finish": (b.get("choices") or [{}])[0].get("finish_reason"), "error": b.get("error")}))'
  echo "== metrics"; curl -s 127.0.0.1:8080/metrics | grep -E "^engram_(generation_(time_to_first_token_seconds_(sum|count)|inter_token_latency_seconds_(sum|count)|tokens_total|target_steps_total|speculative_|kv_blocks)|kv_evicted_tokens_total)" | head -20
} 2>&1 | tee "$OUT/serve_smoke.txt"
kill $pid; wait $pid
grep -iE "error|panic|cuda|device" "$OUT/serve.log" | head -10
