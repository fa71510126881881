#!/usr/bin/env bash
# FastDraft end to end on the CPU: ingest MuSiQue's corpus (the store the draft trains on and the QA prompts come
# from), train a draft for the target, then `engram bench speculative` on QA answers over retrieved passages and on
# free text (the demo corpus, which the draft never saw), plain decoding as the baseline in the same run.
#
#   bash scripts/fastdraft.sh [TARGET.gguf] [OUT_DIR]
#
# Env: MUSIQUE (default ../shared/data/musique), WORK (default ~/engram-draft), QA_LIMIT (10), TEXT_LIMIT (12),
# EXTRA_DRAFTS (more --draft specs, space-separated), TRAIN_ARGS (extra flags for `engram draft train`).
set -euo pipefail
ENGRAM=${ENGRAM:-target/release/engram}
TARGET=${1:-$(bash scripts/fetch-model.sh qwen2.5-coder-0.5b | tail -n 1)}
OUT=${2:-benches/results/fastdraft}
MUSIQUE=${MUSIQUE:-../shared/data/musique}
WORK=${WORK:-$HOME/engram-draft}
DRAFT=$WORK/$(basename "$TARGET" .gguf)-draft
mkdir -p "$OUT" "$WORK"

if [ ! -f "$WORK/musique-hipporag2.jsonl" ]; then
  "$ENGRAM" eval --data-dir "$WORK/store" --questions "$MUSIQUE/questions.json" --corpus "$MUSIQUE/corpus.json" \
    --retriever hipporag2 --predictions "$WORK/musique-hipporag2.jsonl"
fi
# Resumes from its checkpoints when rerun.
/usr/bin/time -v "$ENGRAM" draft train --model "$TARGET" --out "$DRAFT" --from-store --data-dir "$WORK/store" \
  --pretrain-steps 300 --align-steps 300 --free-text-prompts 192 --qa-prompts 64 --distractors 2 \
  ${TRAIN_ARGS:-} > "$OUT/train.json" 2> "$OUT/train.log"
cp "$DRAFT/loss.csv" "$DRAFT/loss.svg" "$OUT/"

drafts=(--draft "$DRAFT" --draft "$DRAFT/stage1")
for d in ${EXTRA_DRAFTS:-}; do drafts+=(--draft "$d"); done
"$ENGRAM" bench speculative --model "$TARGET" --device cpu --no-copy-draft --only draft,prompt-lookup --reps 1 \
  --qa-prompts "$WORK/musique-hipporag2.jsonl" --qa-prompts-limit "${QA_LIMIT:-10}" --tokens 32 "${drafts[@]}" \
  --out "$OUT/qa.json" | tee "$OUT/qa.txt"
"$ENGRAM" bench speculative --model "$TARGET" --device cpu --no-copy-draft --only draft,prompt-lookup --reps 1 \
  --text-prompts corpora/demo/corpus.json --text-prompts-limit "${TEXT_LIMIT:-12}" --tokens 64 "${drafts[@]}" \
  --out "$OUT/free-text.json" | tee "$OUT/free-text.txt"
