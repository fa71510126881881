#!/usr/bin/env python3
"""Latency of POST /v1/qa, one question at a time, as a user of the Ask page meets it (standard library only).

  qa_latency.py URL QUESTIONS.json N [--top-k 5] [--retriever hipporag2] [--attribution passages]
                [--encoding auto] [--out FILE.jsonl]

Asks the first N questions of a MuSiQue-style file (a JSON list of objects with `question`), waits for each answer
before the next, and prints one JSON summary: p50, p90 and max of the wall time and of each stage the server reports
(`timings`: retrieve, read, attribution), the attribution method and forward passes, and failures. With --out, one
JSON line per question (question, answer, timings, wall time) for the record.
"""

import argparse
import json
import time
import urllib.error
import urllib.request


def percentile(values, q):
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 1)


def ask(url, body, timeout):
    """One request; returns (status, parsed body or error text, wall milliseconds)."""
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            payload = json.load(resp)
            status = resp.status
    except urllib.error.HTTPError as e:
        payload, status = e.read().decode(errors="replace")[:300], e.code
    except (OSError, ValueError) as e:
        payload, status = str(e), 0
    return status, payload, (time.perf_counter() - started) * 1000


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("questions")
    p.add_argument("n", type=int)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--retriever", default="hipporag2")
    p.add_argument("--attribution", default="passages")
    p.add_argument("--encoding", default="auto")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--out")
    args = p.parse_args()

    with open(args.questions) as f:
        questions = json.load(f)[: args.n]
    rows, failures = [], []
    for q in questions:
        body = {"question": q["question"], "top_k": args.top_k, "retriever": args.retriever,
                "attribution": args.attribution, "passage_encoding": args.encoding}
        status, payload, ms = ask(args.url.rstrip("/") + "/v1/qa", body, args.timeout)
        if status != 200 or not isinstance(payload, dict):
            failures.append({"question": q["question"], "status": status, "error": str(payload)[:300]})
            continue
        attribution = payload.get("attribution") or {}
        rows.append({
            "question": q["question"],
            "answer": (payload.get("answer") or {}).get("text"),
            "wall_ms": round(ms, 1),
            "timings": payload.get("timings", {}),
            "method": attribution.get("method"),
            "encoding": attribution.get("passage_encoding"),
            "forward_passes": attribution.get("forward_passes"),
        })
    if args.out:
        with open(args.out, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")

    def stage(name):
        values = [r["timings"].get(name) for r in rows if r["timings"].get(name) is not None]
        return {"p50": percentile(values, 0.5), "p90": percentile(values, 0.9),
                "max": round(max(values), 1) if values else None}

    walls = [r["wall_ms"] for r in rows]
    print(json.dumps({
        "questions": len(questions),
        "answered": len(rows),
        "failures": failures,
        "wall_ms": {"p50": percentile(walls, 0.5), "p90": percentile(walls, 0.9),
                    "max": round(max(walls), 1) if walls else None},
        "retrieve_ms": stage("retrieve_ms"),
        "read_ms": stage("read_ms"),
        "attribution_ms": stage("attribution_ms"),
        "methods": sorted({f"{r['method']}/{r['encoding']}" for r in rows}),
        "forward_passes_p50": percentile([r["forward_passes"] or 0 for r in rows], 0.5),
    }, indent=1))


if __name__ == "__main__":
    main()
