#!/usr/bin/env python3
"""Writes a MuSiQue subset for evaluations too slow to run on the whole corpus (e.g. LLM open-IE on a 2-core CPU).

  musique_subset.py DATA_DIR N OUT_DIR

Takes the first N questions of DATA_DIR/questions.json and, as the corpus, every paragraph those questions carry
(their supporting paragraphs and their distractors, de-duplicated by title and text), in the `{title, text}` form
of DATA_DIR/corpus.json. Writes OUT_DIR/questions.json and OUT_DIR/corpus.json; the data stays outside the repo.
Also writes OUT_DIR/prompts.jsonl: per question one line `{question, passages: [{title, text}, ...]}` with all
its paragraphs, the long real prompts `engram bench h2o --qa-prompts` reads.
"""

import json
import os
import sys


def main():
    data_dir, n, out_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with open(os.path.join(data_dir, "questions.json")) as f:
        questions = json.load(f)[:n]
    corpus, seen = [], set()
    for q in questions:
        for p in q["paragraphs"]:
            key = (p["title"], p["paragraph_text"])
            if key not in seen:
                seen.add(key)
                corpus.append({"title": p["title"], "text": p["paragraph_text"]})
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "questions.json"), "w") as f:
        json.dump(questions, f)
    with open(os.path.join(out_dir, "corpus.json"), "w") as f:
        json.dump(corpus, f)
    with open(os.path.join(out_dir, "prompts.jsonl"), "w") as f:
        for q in questions:
            passages = [{"title": p["title"], "text": p["paragraph_text"]} for p in q["paragraphs"]]
            f.write(json.dumps({"question": q["question"], "passages": passages}) + "\n")
    print(json.dumps({"questions": len(questions), "passages": len(corpus)}))


if __name__ == "__main__":
    main()
