#!/usr/bin/env python3
"""Tiny random-weight Hugging Face models and reference logits for the engine parity tests (step 2 of 2).

Step 1, `python3 scripts/make_fixture_tokenizer.py`, must have written the tokenizer files of every directory in
`tests/fixtures/engine/`. This script then builds each model from its config with `torch.manual_seed(0)` and a
seeded re-initialisation, saves it there with `save_pretrained` (safetensors, `config.json`,
`generation_config.json`) and writes `reference.json`: prompt ids and Hugging Face transformers logits, computed
on the CPU with eager attention. Needs torch and transformers (made with torch 2.11, transformers 5.17). From the
repository root:

    python3 scripts/make_engine_fixtures.py

Models (all: hidden 64, intermediate 128, 2 layers, 4 heads, 2 KV heads, head_dim 16, 256 positions):
`llama`, `llama_sharded` (same weights, two safetensors shards), `llama31` (llama3 rope scaling), `qwen2` (qkv
bias, tied embeddings), `qwen2_bf16` (the qwen2 weights in bfloat16) and `mistral`. Every `config.json` is
rewritten to the classic hub form (`rope_theta`, `rope_scaling`, `torch_dtype`) that published checkpoints carry,
except `llama_sharded`'s, which stays as transformers 5 writes it (`rope_parameters`, `dtype`). Each saved
directory is loaded back with `from_pretrained` and must reproduce the logits exactly.
"""

import json
import platform
import sys
from pathlib import Path

import tokenizers
import torch
import transformers
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, MistralConfig, Qwen2Config

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "engine"
CORPUS = ROOT / "corpora" / "demo" / "corpus.json"

SEED = 0
STD = 0.1  # initializer_range; weights ~N(0, 0.1), norm weights 1 + N(0, 0.1), biases N(0, 0.1)
DECODE_STEPS = 4
PROMPT_LENGTHS = (1, 7, 23)  # prompts are the first n tokens of corpus documents 0, 1, 2
ALL_POSITIONS_LENGTH = 7  # the prompt whose logits are kept at every position

COMMON = dict(
    vocab_size=384,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    hidden_act="silu",
    initializer_range=STD,
)
# name -> (config class, config arguments, weight dtype, shard, keep transformers 5 config.json)
MODELS = {
    "llama": (LlamaConfig, dict(rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False), "float32", False, False),
    "llama_sharded": (LlamaConfig, dict(rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False), "float32", True, True),
    "llama31": (
        LlamaConfig,
        dict(
            rms_norm_eps=1e-5,
            rope_theta=500000.0,
            # with head_dim 16 and theta 5e5 the wavelengths are 6.3, 32.4, 167, ...: original 64 puts one in each
            # llama3 regime (kept < 16 < smoothed < 64 < divided by factor)
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            tie_word_embeddings=False,
        ),
        "float32",
        False,
        False,
    ),
    "qwen2": (Qwen2Config, dict(rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True), "float32", False, False),
    "qwen2_bf16": (Qwen2Config, dict(rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True), "bfloat16", False, False),
    "mistral": (
        MistralConfig,
        # same seed and shapes as llama, hence the same weights: theta and eps differ so the logits do too;
        # the sliding window (as Mistral 7B v0.1 has it) is wider than any prompt, so it masks nothing
        dict(rms_norm_eps=1e-6, rope_theta=1000000.0, sliding_window=4096, tie_word_embeddings=False),
        "float32",
        False,
        False,
    ),
}
# bfloat16: transformers' own bf16 logits are up to ~0.03 off the float32 computation of the same weights
TOLERANCE = {"float32": 1e-4, "bfloat16": 1e-1}


def build(name: str) -> torch.nn.Module:
    """The float32 model `name`, deterministic: same config and seed give the same weights."""
    config_class, arguments, _, _, _ = MODELS[name]
    generation = json.loads((FIXTURES / name / "generation_config.json").read_text())
    config = config_class(
        **COMMON,
        **arguments,
        bos_token_id=generation["bos_token_id"],
        eos_token_id=generation["eos_token_id"],
        pad_token_id=generation["pad_token_id"],
    )
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    # Re-draw every parameter with our own generator, so weights do not depend on transformers' init code and
    # biases and norm weights are not the trivial 0 and 1 (tied parameters are listed once).
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for parameter_name, parameter in model.named_parameters():
            noise = STD * torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
            is_norm = parameter.ndim == 1 and not parameter_name.endswith(".bias")
            parameter.copy_(1.0 + noise if is_norm else noise)
    model.generation_config = GenerationConfig.from_pretrained(FIXTURES / name)
    return model.eval()


@torch.no_grad()
def all_logits(model, ids: list[int]) -> torch.Tensor:
    """[len(ids), vocab] float32 logits of one uncached forward pass."""
    return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()


@torch.no_grad()
def greedy(model, ids: list[int]) -> dict:
    """Prefill, then DECODE_STEPS cached decode steps, each feeding the previous argmax."""
    out = model(input_ids=torch.tensor([ids]), use_cache=True)
    cache, last = out.past_key_values, out.logits[0, -1].float()
    tokens, decode, margins, drift = [], [], [], 0.0
    logits = last
    for _ in range(DECODE_STEPS):
        top = torch.topk(logits, 2)
        margins.append(float(top.values[0] - top.values[1]))
        tokens.append(int(logits.argmax()))
        out = model(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[0, -1].float()
        decode.append(logits)
        drift = max(drift, float((all_logits(model, ids + tokens)[-1] - logits).abs().max()))
    return {"last": last, "tokens": tokens, "decode": decode, "min_top2_margin": min(margins), "drift": drift}


def floats(tensor: torch.Tensor) -> list:
    return [float(f"{v:.7g}") for v in tensor.tolist()]


def references(model, prompts: list[dict]) -> tuple[list[dict], float]:
    """The per-prompt reference entries, and the largest |cached - uncached| logit difference seen."""
    entries, drift = [], 0.0
    for prompt in prompts:
        run = greedy(model, prompt["ids"])
        drift = max(drift, run["drift"])
        entry = {
            **prompt,
            "last_logits": floats(run["last"]),
            "greedy_tokens": run["tokens"],
            "decode_logits": [floats(l) for l in run["decode"]],
            "min_top2_margin": round(run["min_top2_margin"], 6),
        }
        if len(prompt["ids"]) == ALL_POSITIONS_LENGTH:
            entry["all_logits"] = [floats(row) for row in all_logits(model, prompt["ids"])]
        entries.append(entry)
    return entries, drift


def prompts_for(name: str) -> list[dict]:
    """Prompts of PROMPT_LENGTHS tokens: the longest prefix of a corpus text that encodes (with the tokenizer's
    special tokens) to exactly n tokens, preferring prefixes that end before a space."""
    tokenizer = tokenizers.Tokenizer.from_file(str(FIXTURES / name / "tokenizer.json"))
    docs = json.loads(CORPUS.read_text())
    prompts = []
    for doc, n in zip(docs, PROMPT_LENGTHS):
        text = doc["text"]
        fits = [end for end in range(len(text) + 1) if len(tokenizer.encode(text[:end]).ids) == n]
        at_space = [end for end in fits if end == 0 or end == len(text) or text[end] == " "]
        end = max(at_space or fits)
        prompts.append({"text": text[:end], "ids": tokenizer.encode(text[:end]).ids})
    return prompts


def chat_example(name: str) -> dict:
    """A rendered chat template and its ids (encoded without adding special tokens, as apply_chat_template does)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(FIXTURES / name)
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is the capital of Talvenne?"},
    ]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return {"messages": messages, "add_generation_prompt": True, "text": text, "ids": ids}


def legacy_config(path: Path) -> None:
    """Rewrite a transformers 5 config.json in the classic hub form: rope_theta + rope_scaling, torch_dtype."""
    config = json.loads(path.read_text())
    rope = dict(config.pop("rope_parameters"))
    config["rope_theta"] = rope.pop("rope_theta")
    config["rope_scaling"] = rope if rope.get("rope_type", "default") != "default" else None
    if "dtype" in config:
        config["torch_dtype"] = config.pop("dtype")
    path.write_text(json.dumps(dict(sorted(config.items())), indent=2) + "\n")


def dumps(value) -> str:
    """Indented JSON with every list of numbers on one line."""
    inline = {}

    def walk(x):
        if isinstance(x, list) and x and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x):
            key = f"@@{len(inline)}@@"
            inline[key] = json.dumps(x, separators=(",", ":"))
            return key
        if isinstance(x, list):
            return [walk(v) for v in x]
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        return x

    text = json.dumps(walk(value), indent=1, ensure_ascii=False, default=str)
    for key, raw in inline.items():
        text = text.replace(f'"{key}"', raw, 1)
    return text + "\n"


def make(name: str) -> None:
    _, _, dtype_name, sharded, keep_v5_config = MODELS[name]
    dtype = getattr(torch, dtype_name)
    directory = FIXTURES / name
    for old in list(directory.glob("model*.safetensors*")) + [directory / "config.json"]:
        old.unlink(missing_ok=True)

    # The reference comes from the saved directory loaded back with from_pretrained, as a user would load it:
    # `.to(bfloat16)` on the built model also rounds the rotary inv_freq buffer, which from_pretrained keeps in f32.
    built = build(name).to(dtype)
    built.config.dtype = dtype
    if sharded:  # two shards: the first takes 60% of the bytes
        total = sum(p.numel() * p.element_size() for p in built.parameters())
        built.save_pretrained(directory, max_shard_size=int(total * 0.6))
        shards = sorted(p.name for p in directory.glob("model-*.safetensors"))
        assert shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"], shards
        assert (directory / "model.safetensors.index.json").exists()
    else:
        built.save_pretrained(directory)
        assert (directory / "model.safetensors").exists()
    hf_config = json.loads((directory / "config.json").read_text())
    assert hf_config["dtype"] == dtype_name, hf_config
    if not keep_v5_config:
        legacy_config(directory / "config.json")

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, attn_implementation="eager").eval()
    prompts = prompts_for(name)
    entries, drift = references(model, prompts)
    built_vs_reloaded = max(
        float((all_logits(model, p["ids"]) - all_logits(built, p["ids"])).abs().max()) for p in prompts
    )
    if dtype == torch.float32:
        assert built_vs_reloaded <= 1e-6, (name, built_vs_reloaded)
    reference = {
        "model": name,
        "architecture": type(model).__name__,
        "weights_dtype": dtype_name,
        "compute_dtype": dtype_name,
        "logits": "float32 (cast from compute dtype), rounded to 7 significant digits",
        "tolerance_max_abs_logit": TOLERANCE[dtype_name],
        "attention": "eager, CPU, batch 1, no padding; model loaded from this directory with from_pretrained",
        "seed": SEED,
        "init": f"torch.manual_seed({SEED}); then every parameter in named_parameters() order from "
        f"torch.Generator().manual_seed({SEED}): {STD} * randn (norm weights: 1 + {STD} * randn)",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
        "config_json_form": "transformers5" if keep_v5_config else "classic",
        "hf_config": hf_config,
        "checks": {"kv_cache_vs_uncached_max_abs": drift, "built_vs_reloaded_max_abs": built_vs_reloaded},
        "chat_example": chat_example(name),
        "prompts": entries,
    }
    if dtype != torch.float32:  # the same bf16 weights upcast and run in float32: exact target for bf16 -> f32
        upcast = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager")
        reference["f32_compute"] = {
            "note": "these bfloat16 weights loaded with dtype float32 and computed in float32",
            "tolerance_max_abs_logit": TOLERANCE["float32"],
            "prompts": references(upcast.eval(), prompts)[0],
        }
    (directory / "reference.json").write_text(dumps(reference))
    print(name, {k: v for k, v in reference["checks"].items()}, [len(p["ids"]) for p in prompts], flush=True)


def main() -> None:
    torch.set_num_threads(1)
    names = sys.argv[1:] or list(MODELS)
    failures = []
    for name in names:
        try:
            make(name)
        except Exception as error:  # keep going, so one run reports every model
            failures.append(name)
            print(f"{name}: FAILED: {type(error).__name__}: {error}", flush=True)
            import traceback

            traceback.print_exc()
    if failures:
        sys.exit(f"failed: {failures}")


if __name__ == "__main__":
    main()
