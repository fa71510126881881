#!/usr/bin/env python3
"""Reference outputs of a GGUF model, independent of Engram, for tests/gguf_model.rs.

Tokenizer: transformers' own GGUF tokenizer conversion (AutoTokenizer.from_pretrained(..., gguf_file=...)).
Logits: a NumPy forward pass (float64 activations) over the weights as gguf-py dequantizes them, in GGUF's own
layout: llama.cpp's rotary embedding on adjacent pairs for `llama` files (whose Q/K rows the converter permuted)
and on halves (NeoX) for `qwen2` files. Engram instead unpermutes llama rows and always rotates halves, so
agreement checks the unpermutation too.

    python3 -m venv /tmp/gv && /tmp/gv/bin/pip install gguf==0.19.0 numpy transformers==4.57.1 tokenizers
    /tmp/gv/bin/python scripts/gguf_reference.py MODEL.gguf tests/fixtures/gguf/NAME.json

Writes: the token ids of a few hundred strings; for each prompt, its ids (with the chat template applied by
transformers' tokenizer where the file has one) and, at the last position, the top-20 log-probabilities.
"""
import json
import os
import random
import sys

import numpy as np

import transformers.modeling_gguf_pytorch_utils as gguf_utils  # noqa: E402
from gguf import GGUFReader  # noqa: E402
from gguf.quants import dequantize  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

# Reading a GGUF file's metadata (return_tensors=False) needs no torch, but transformers refuses without it:
# let that one module believe torch is there (the tokenizer conversion never touches it).
gguf_utils.is_torch_available = lambda: True

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Question: Which river flows through the town where the founder of the observatory was born?\nAnswer:",
]

PIECES = [
    "hello", " world", "Hello,", "  two spaces", "\ttab", "\n\nnew lines\n", "12345", " 3.14159", "1,000,000",
    "naïve café", "Ünïcödé", "日本語のテキスト", "中文", "한국어", "emoji 🙂🚀", "Ελληνικά", "русский текст",
    "def f(x):\n    return x ** 2", "for (int i = 0; i < n; ++i) {", "  }\n", "<html><body>", "{\"key\": [1, 2]}",
    "can't", "won't", "I'M", "they'll", "x__y", "snake_case_name", "CamelCaseName", "    ", "\r\n", "a\u00a0b",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "2024-12-06", "$100.00", "e-mail@example.com", "https://a.b/c?d=e",
    "---", "...", "!!!", "ÀÉÎÕÜ", "ß", "ﬁ", "１２３", "🇫🇷", "Ω≈ç√∫", "tab\tseparated\tvalues",
]


def test_strings():
    rng = random.Random(20261206)
    out = list(PIECES)
    while len(out) < 300:
        k = rng.randint(2, 5)
        out.append("".join(rng.choice(PIECES) for _ in range(k)))
    return out


def field(reader, key):
    f = reader.fields.get(key)
    if f is None:
        return None
    v = f.parts[f.data[0]]
    if f.types and f.types[0].name == "STRING":
        return bytes(v).decode("utf-8")
    return v.tolist()[0] if hasattr(v, "tolist") else v


def load_weights(reader):
    out = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type)
        shape = [int(x) for x in reversed(t.shape.tolist())]
        out[t.name] = np.asarray(w, dtype=np.float32).reshape(shape)
    return out


def rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope(x, heads, hd, theta, neox):
    t = x.shape[0]
    x = x.reshape(t, heads, hd).copy()
    inv = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(t, dtype=np.float64)[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    if neox:
        a, b = x[..., : hd // 2].copy(), x[..., hd // 2 :].copy()
        x[..., : hd // 2] = a * cos - b * sin
        x[..., hd // 2 :] = b * cos + a * sin
    else:
        a, b = x[..., 0::2].copy(), x[..., 1::2].copy()
        x[..., 0::2] = a * cos - b * sin
        x[..., 1::2] = b * cos + a * sin
    return x.reshape(t, heads * hd)


def forward(reader, w, ids):
    arch = field(reader, "general.architecture")
    g = lambda k: field(reader, f"{arch}.{k}")  # noqa: E731
    layers, heads, kvh = g("block_count"), g("attention.head_count"), g("attention.head_count_kv")
    eps, theta = g("attention.layer_norm_rms_epsilon"), g("rope.freq_base") or 10000.0
    hidden = g("embedding_length")
    hd = hidden // heads
    neox = arch != "llama"
    x = w["token_embd.weight"][ids].astype(np.float64)
    t = len(ids)
    mask = np.triu(np.full((t, t), -np.inf), 1)
    for i in range(layers):
        p = f"blk.{i}."
        h = rms(x, w[p + "attn_norm.weight"], eps)
        proj = {}
        for n in "qkv":
            y = h @ w[p + f"attn_{n}.weight"].astype(np.float64).T
            if p + f"attn_{n}.bias" in w:
                y = y + w[p + f"attn_{n}.bias"]
            proj[n] = y
        q = rope(proj["q"], heads, hd, theta, neox).reshape(t, heads, hd)
        k = rope(proj["k"], kvh, hd, theta, neox).reshape(t, kvh, hd)
        v = proj["v"].reshape(t, kvh, hd)
        group = heads // kvh
        att = np.zeros((t, heads, hd))
        for hh in range(heads):
            s = q[:, hh] @ k[:, hh // group].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            att[:, hh] = s @ v[:, hh // group]
        x = x + att.reshape(t, heads * hd) @ w[p + "attn_output.weight"].astype(np.float64).T
        h = rms(x, w[p + "ffn_norm.weight"], eps)
        gate = h @ w[p + "ffn_gate.weight"].astype(np.float64).T
        up = h @ w[p + "ffn_up.weight"].astype(np.float64).T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].astype(np.float64).T
    x = rms(x[-1:], w["output_norm.weight"], eps)
    head = w.get("output.weight", w["token_embd.weight"]).astype(np.float64)
    logits = (x @ head.T)[0]
    m = logits.max()
    return logits - m - np.log(np.exp(logits - m).sum())


def main():
    path, out_path = sys.argv[1], sys.argv[2]
    tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path))
    reader = GGUFReader(path)
    weights = load_weights(reader)
    strings = test_strings()
    result = {
        "file": os.path.basename(path),
        "tokenizer": [{"text": s, "ids": tok.encode(s, add_special_tokens=False)} for s in strings],
        "prompts": [],
    }
    for prompt in PROMPTS:
        ids = tok.encode(prompt, add_special_tokens=False)
        logp = forward(reader, weights, ids)
        top = np.argsort(-logp)[:20]
        result["prompts"].append(
            {"text": prompt, "ids": ids, "top": [[int(i), float(logp[i])] for i in top]}
        )
        print(prompt[:40].replace("\n", " "), "->", repr(tok.decode([int(top[0])])), file=sys.stderr)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False, indent=None, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
