#!/usr/bin/env bash
# TextGenSHAP through the API on the GPU: `engram serve --model synthetic:llama-3-8b --device cuda:0` over the demo
# corpus (BM25), then `POST /v1/qa` with 5, 10 and 20 passages (and token-level attribution with QA_TOKENS=1);
# prints the answer's token count, the attribution method, coalitions valued and per-stage timings. Run through
# the device tool with carry = ["dist"] after `make dist-cuda`; output in $OUT/qa_shap$QA_TAG.txt. The separate-scoring
# baseline: `ENGRAM_QA_COALITIONS_PER_CALL=1 QA_ENCODING=joint QA_TAG=_separate bash scripts/device_qa_shap.sh`.
# QA_ENCODING sets the requests' passage_encoding (auto, joint or separate; default auto).
set -uo pipefail
OUT=${OUT:-/tmp/engram-out}
mkdir -p "$OUT"
. "$(dirname "$0")/device_env.sh"
export ENGRAM__EMBEDDING__ENABLED=false ENGRAM__GRAPH__ENABLED=false ENGRAM__ENGINE__KV_CACHE_MIB=16384
export ENGRAM__ENGINE__TOKEN_BUDGET=16384
$ENGRAM ingest --data-dir /tmp/engram-data corpora/demo/corpus.json > "$OUT/ingest.log" 2>&1
$ENGRAM serve --data-dir /tmp/engram-data --bind 127.0.0.1:8080 --model synthetic:llama-3-8b --device cuda:0 \
  > "$OUT/serve_qa${QA_TAG:-}.log" 2>&1 &
pid=$!
for _ in $(seq 120); do curl -sf 127.0.0.1:8080/readyz >/dev/null && break; sleep 1; done
ask() {
  curl -s -m 300 127.0.0.1:8080/v1/qa -H 'content-type: application/json' \
    -d "{\"question\":\"Which company did Ida Fernsworth found, and where was it based?\",\"top_k\":$1,\"attribution\":\"${2:-passages}\",\"passage_encoding\":\"${QA_ENCODING:-auto}\"}" |
    python3 -c 'import json,sys; b=json.load(sys.stdin); a=b.get("attribution") or {}; ta=(b.get("token_attribution") or {}).get("attribution") or {}; t=b.get("timings",{}); print(json.dumps({"passages": len(b.get("passages",[])), "answer_tokens": (b.get("answer") or {}).get("tokens"), "method": a.get("method"), "encoding": a.get("passage_encoding"), "evaluations": a.get("evaluations"), "forward_passes": a.get("forward_passes"), "computed_tokens": a.get("computed_tokens"), "prompt_tokens": a.get("prompt_tokens"), "token_evaluations": ta.get("evaluations"), "timings_ms": t, "error": b.get("error")}))'
}
# QA_TOP_KS picks the passage counts (default 5 10 20); QA_TOKENS=1 adds a token-level request at 5 passages.
{
  echo "== warm-up (first request: cuBLASLt autotuning)"; ask 3
  for k in ${QA_TOP_KS:-5 10 20}; do echo "== top_k $k"; ask $k; done
  if [ "${QA_TOKENS:-0}" = 1 ]; then echo "== top_k 5, attribution tokens"; ask 5 tokens; fi
} | tee "$OUT/qa_shap${QA_TAG:-}.txt"
kill $pid; wait $pid 2>/dev/null
