#!/usr/bin/env python3
"""Independent NumPy reference for Engram's sentence embedder (src/embed/).

A from-scratch BERT encoder forward pass (the same maths as Hugging Face `BertModel` in eval mode) followed by
sentence-transformers' mean pooling and L2 normalisation, written with NumPy only: no torch, no Rust code. It reads the
model directory that `scripts/fetch-model.sh` fills (config.json, model.safetensors, tokenizer.json,
sentence_bert_config.json) and

* by default embeds a fixed list of varied sentences, one at a time (so no padding is involved), in float64, and
  writes tests/fixtures/embeddings/minilm_reference.json, which tests/embedder.rs compares the Rust embedder with;
* with `--bench CORPUS.json [--count N]` embeds the first N (500) passages of a MuSiQue-style corpus
  (title + " " + text) in batches of 32, sorted by length as the Rust embedder does, in float32 with a vectorised
  erf, and prints the throughput (a `passages_per_s=` field), for comparison with
  `cargo run --release --example embed_throughput`.

Needs: numpy, safetensors, tokenizers (`pip install numpy safetensors tokenizers`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

try:
    import numpy as np
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer
except ImportError as exc:  # pragma: no cover - environment check
    sys.exit(
        f"reference_embeddings.py needs numpy, safetensors and tokenizers ({exc}).\n"
        "Install them with: python3 -m pip install numpy safetensors tokenizers"
    )

SENTENCES = [
    "A man is playing a guitar.",
    "Someone is playing the guitar.",
    "The stock market fell sharply on Tuesday after the interest rate announcement.",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "",
    "  ?!  ",
    "Hello, world!!! How's it going... (really?) -- fine; thanks: [ok] {yes} <no> @home #tag $5 50% a&b",
    "Café Müller in São Paulo serves crème brûlée and jalapeño naïve piñatas.",
    "北京是中国的首都，也是一座历史悠久的城市。",
    "Москва — столица России. Ελληνικά γράμματα: αβγ. 東京タワーは日本にあります。",
    "I love pizza 🍕 and coffee ☕ — emoji are unknown tokens.",
    "In 1969, Apollo 11 landed at 20:17 UTC; 3.14159 * 2 = 6.28318, and 1,000,000 > 999,999.",
    "ISBN 978-3-16-148410-0, phone +1 (555) 010-9999, version v2.0.1-rc3, IPv4 192.168.0.1.",
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "the quick brown fox jumps over the lazy dog",
    "Mitochondria are membrane-bound organelles that generate most of the chemical energy needed to power the "
    "cell's biochemical reactions.",
    "Line one.\nLine two\tafter a tab.\r\nLine three.",
    " ".join(
        f"Sentence number {i} of a deliberately long passage about rivers, mountains, cities and the history of "
        f"trade routes across the continent."
        for i in range(1, 16)
    ),
]


def erf_exact(x: np.ndarray) -> np.ndarray:
    """math.erf elementwise (exact to double precision, slow)."""
    return np.frompyfunc(math.erf, 1, 1)(x).astype(x.dtype)


def erf_fast(x: np.ndarray) -> np.ndarray:
    """Vectorised erf (Numerical Recipes' erfc Chebyshev fit, fractional error < 1.2e-7), computed in place."""
    z = np.abs(x)
    t = 0.5 * z
    t += 1.0
    np.reciprocal(t, out=t)
    p = t * 0.17087277
    for c in (-0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418, 0.37409196, 1.00002368):
        p += c
        p *= t
    p -= 1.26551223
    z *= z
    p -= z
    np.exp(p, out=p)
    p *= t  # erfc(|x|)
    np.subtract(1.0, p, out=p)
    return np.copysign(p, x, out=p)


class Bert:
    """BERT encoder + mean pooling + L2 normalisation in NumPy."""

    def __init__(self, model_dir: Path, dtype=np.float64, exact_erf: bool = True):
        self.dtype = dtype
        self.erf = erf_exact if exact_erf else erf_fast
        cfg = json.loads((model_dir / "config.json").read_text())
        assert cfg.get("hidden_act", "gelu") == "gelu", cfg.get("hidden_act")
        self.layers_n = cfg["num_hidden_layers"]
        self.heads = cfg["num_attention_heads"]
        self.hidden = cfg["hidden_size"]
        self.eps = cfg["layer_norm_eps"]
        st_cfg_path = model_dir / "sentence_bert_config.json"
        st_cfg = json.loads(st_cfg_path.read_text()) if st_cfg_path.exists() else {}
        self.max_len = min(st_cfg.get("max_seq_length", cfg["max_position_embeddings"]), cfg["max_position_embeddings"])
        pooling = model_dir / "1_Pooling" / "config.json"
        if pooling.exists():
            assert json.loads(pooling.read_text())["pooling_mode_mean_tokens"], "only mean pooling is implemented"

        raw = load_file(str(model_dir / "model.safetensors"))
        self.w = {k.removeprefix("bert."): v.astype(dtype) for k, v in raw.items() if v.dtype.kind == "f"}

        self.tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(max_length=self.max_len)
        self.tok_full = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tok_full.no_padding()
        self.tok_full.no_truncation()

    def tokenize(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
        enc = self.tok.encode_batch(texts)
        full = self.tok_full.encode_batch(texts)
        return [e.ids for e in enc], [len(f.ids) > len(e.ids) for e, f in zip(enc, full)]

    def layer_norm(self, x: np.ndarray, name: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.eps) * self.w[name + ".weight"] + self.w[name + ".bias"]

    def dense(self, x: np.ndarray, name: str) -> np.ndarray:
        # As one 2-D product: NumPy runs a 3-D @ 2-D product as a slow loop of small ones.
        w = self.w[name + ".weight"]
        return (x.reshape(-1, x.shape[-1]) @ w.T + self.w[name + ".bias"]).reshape(*x.shape[:-1], w.shape[0])

    def forward(self, ids: list[list[int]]) -> np.ndarray:
        """Embeds a batch of token-id lists (padded here with id 0 and masked)."""
        b, t = len(ids), max(len(s) for s in ids)
        ids_arr = np.zeros((b, t), dtype=np.int64)
        mask = np.zeros((b, t), dtype=self.dtype)
        for i, s in enumerate(ids):
            ids_arr[i, : len(s)] = s
            mask[i, : len(s)] = 1.0
        w = self.w
        x = (
            w["embeddings.word_embeddings.weight"][ids_arr]
            + w["embeddings.position_embeddings.weight"][np.arange(t)][None, :, :]
            + w["embeddings.token_type_embeddings.weight"][0][None, None, :]
        )
        x = self.layer_norm(x, "embeddings.LayerNorm")
        hd = self.hidden // self.heads
        bias = ((1.0 - mask) * np.finfo(self.dtype).min)[:, None, None, :]
        for i in range(self.layers_n):
            p = f"encoder.layer.{i}."

            def split(y: np.ndarray) -> np.ndarray:
                # Contiguous per head, so that the batched products below run as BLAS calls.
                return np.ascontiguousarray(y.reshape(b, t, self.heads, hd).transpose(0, 2, 1, 3))

            q = split(self.dense(x, p + "attention.self.query"))
            k = split(self.dense(x, p + "attention.self.key"))
            v = split(self.dense(x, p + "attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            probs = scores / scores.sum(-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, self.hidden)
            x = self.layer_norm(self.dense(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
            h = self.dense(x, p + "intermediate.dense")
            h = 0.5 * h * (1.0 + self.erf(h / math.sqrt(2.0)))
            x = self.layer_norm(self.dense(h, p + "output.dense") + x, p + "output.LayerNorm")
        pooled = (x * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def sig7(v: float) -> float:
    return float(f"{v:.7g}")


def write_fixture(model: Bert, out: Path) -> None:
    ids, truncated = model.tokenize(SENTENCES)
    vecs = np.stack([model.forward([s])[0] for s in ids])
    cos = vecs @ vecs.T
    para, unrelated, qa = cos[0, 1], cos[0, 2], cos[3, 4]
    case = cos[SENTENCES.index("THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG"), SENTENCES.index(
        "the quick brown fox jumps over the lazy dog")]
    print(f"sanity: cos(paraphrases)={para:.4f} cos(unrelated)={unrelated:.4f} cos(question, answer)={qa:.4f} "
          f"cos(upper, lower case)={case:.6f}")
    if not (para > 0.8 and unrelated < 0.2 and qa > 0.5 and case > 0.99999):
        sys.exit("sanity check of the reference failed: paraphrases should be close, unrelated sentences far")
    batched = model.forward(ids)  # all sentences padded together: the masking must make no difference
    assert np.abs(batched - vecs).max() < 1e-6, np.abs(batched - vecs).max()
    norms = np.linalg.norm(vecs, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-9), norms
    long_idx = len(SENTENCES) - 1
    assert truncated[long_idx] and len(ids[long_idx]) == model.max_len, (truncated[long_idx], len(ids[long_idx]))
    assert sum(truncated) == 1, truncated
    data = {
        "model": "all-MiniLM-L6-v2",
        "max_seq_length": model.max_len,
        "sentences": SENTENCES,
        "tokens": [len(s) for s in ids],
        "truncated": truncated,
        "vectors": [[sig7(float(v)) for v in row] for row in vecs],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"wrote {out} ({len(SENTENCES)} sentences, tokens {data['tokens']})")


def bench(model: Bert, corpus: Path, n: int, batch: int) -> None:
    passages = json.loads(corpus.read_text())[:n]
    texts = [f"{p['title']} {p['text']}" for p in passages]
    model.forward([[101, 102]])  # warm-up
    start = time.perf_counter()
    ids, _ = model.tokenize(texts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = [None] * len(ids)
    for s in range(0, len(order), batch):
        chunk = order[s: s + batch]
        for i, v in zip(chunk, model.forward([ids[i] for i in chunk])):
            out[i] = v
    secs = time.perf_counter() - start
    tokens = sum(len(s) for s in ids)
    print(f"numpy reference ({np.dtype(model.dtype).name}, {'exact' if model.erf is erf_exact else 'fast'} erf, "
          f"numpy {np.__version__}): {len(texts)} passages, {tokens} tokens, batch {batch}: "
          f"seconds={secs:.2f} passages_per_s={len(texts) / secs:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, default=REPO / "models" / "all-MiniLM-L6-v2")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "embeddings" / "minilm_reference.json")
    ap.add_argument("--bench", type=Path, metavar="CORPUS", help="time embedding CORPUS's first passages instead")
    ap.add_argument("--count", type=int, default=500, help="passages to time with --bench (default 500)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dtype", choices=["float32", "float64"], help="default: float64, float32 with --bench")
    ap.add_argument("--erf", choices=["exact", "fast"], help="math.erf or a vectorised fit; default: exact, fast "
                    "with --bench")
    args = ap.parse_args()
    if not (args.model_dir / "model.safetensors").exists():
        sys.exit(f"no model in {args.model_dir}: run `make setup` (scripts/fetch-model.sh) first")
    dtype = args.dtype or ("float32" if args.bench else "float64")
    erf = args.erf or ("fast" if args.bench else "exact")
    model = Bert(args.model_dir, np.dtype(dtype).type, exact_erf=erf == "exact")
    if args.bench:
        bench(model, args.bench, args.count, args.batch)
    else:
        write_fixture(model, args.out)


if __name__ == "__main__":
    main()
