#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/) from the repository's own fixtures.

Usage: fuzz_seeds.py OUT_DIR   (needs numpy and gguf==0.19.0 for the GGUF seeds; scripts/fuzz.sh sets them up)
"""

import glob
import json
import os
import sys

import numpy as np
import gguf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def put(out, target, name, data):
    os.makedirs(os.path.join(out, target), exist_ok=True)
    with open(os.path.join(out, target, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def read(path):
    with open(os.path.join(ROOT, path), "rb") as f:
        return f.read()


def loader_seeds(out):
    by_ext = {"txt": [], "md": [], "html": [], "pdf": [], "json": [], "jsonl": []}
    for path in sorted(glob.glob(os.path.join(ROOT, "tests/fixtures/docs/*"))):
        ext = path.rsplit(".", 1)[-1].lower()
        if ext in by_ext:
            by_ext[ext].append(os.path.relpath(path, ROOT))
    by_ext["md"] += ["README.md", "corpora/README.md"]
    by_ext["json"] += ["corpora/demo/corpus.json", "tests/fixtures/hotpot/corpus.json"]
    for ext, paths in by_ext.items():
        for i, path in enumerate(paths):
            put(out, f"load_{ext}", f"seed{i}", read(path))
    put(out, "load_html", "nested", "<div>" * 40 + "x" + "</div>" * 40)
    put(out, "load_json", "nested", "[" * 40 + "]" * 40)


def chunker_seeds(out):
    for i, path in enumerate(["tests/fixtures/docs/lighthouse.txt", "tests/fixtures/docs/harbour.md", "README.md"]):
        put(out, "chunker", f"seed{i}", bytes([i * 7, i * 3]) + read(path))


def schema_seeds(out):
    triples = {
        "type": "object",
        "properties": {
            "triples": {
                "type": "array",
                "maxItems": 8,
                "items": {"type": "array", "minItems": 3, "maxItems": 3, "items": {"type": "string", "maxLength": 40}},
            }
        },
    }
    schemas = [
        triples,
        {"type": "string", "maxLength": 5},
        {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
        {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "object", "properties": {}}}},
    ]
    for i, schema in enumerate(schemas):
        put(out, "json_schema", f"seed{i}", json.dumps(schema).encode() + b"\0" + bytes(range(7, 250, 13)))


def config_seeds(out):
    for i, path in enumerate(sorted(glob.glob(os.path.join(ROOT, "tests/fixtures/engine/*/config.json")))):
        put(out, "model_config", f"seed{i}", read(os.path.relpath(path, ROOT)))


def tiny_gguf(path, arch):
    """A whole tiny model of `arch` (two layers, a 300-token byte-level BPE vocabulary) in F32."""
    w = gguf.GGUFWriter(path, arch)
    hidden, inter, heads, kv, layers = 16, 32, 2, 1, 2
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_block_count(layers)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [chr(0x100 + i) for i in range(256)]
    tokens += [b + c for b in "theab" for c in "aeiost"][: 300 - len(tokens)]
    merges = [f"{t[0]} {t[1]}" for t in tokens[259:]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2" if arch == "qwen2" else "smollm")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(0)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}")
    rng = np.random.default_rng(0)
    vocab = len(tokens)
    head_dim = hidden // heads

    def t(name, *shape):
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))

    t("token_embd.weight", vocab, hidden)
    t("output_norm.weight", hidden)
    for i in range(layers):
        t(f"blk.{i}.attn_norm.weight", hidden)
        t(f"blk.{i}.attn_q.weight", heads * head_dim, hidden)
        t(f"blk.{i}.attn_k.weight", kv * head_dim, hidden)
        t(f"blk.{i}.attn_v.weight", kv * head_dim, hidden)
        if arch == "qwen2":
            t(f"blk.{i}.attn_q.bias", heads * head_dim)
            t(f"blk.{i}.attn_k.bias", kv * head_dim)
            t(f"blk.{i}.attn_v.bias", kv * head_dim)
        t(f"blk.{i}.attn_output.weight", hidden, heads * head_dim)
        t(f"blk.{i}.ffn_norm.weight", hidden)
        t(f"blk.{i}.ffn_gate.weight", inter, hidden)
        t(f"blk.{i}.ffn_up.weight", inter, hidden)
        t(f"blk.{i}.ffn_down.weight", hidden, inter)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def gguf_seeds(out):
    os.makedirs(os.path.join(out, "gguf"), exist_ok=True)
    for arch in ["llama", "qwen2"]:
        tiny_gguf(os.path.join(out, "gguf", f"tiny-{arch}"), arch)


def main():
    out = sys.argv[1]
    loader_seeds(out)
    chunker_seeds(out)
    schema_seeds(out)
    config_seeds(out)
    gguf_seeds(out)


if __name__ == "__main__":
    main()
