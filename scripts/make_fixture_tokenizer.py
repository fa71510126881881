#!/usr/bin/env python3
"""Tokenizer files for the engine parity fixtures in `tests/fixtures/engine/` (step 1 of 2).

Trains a small byte-level BPE tokenizer (deterministic) on the texts of `corpora/demo/corpus.json` and writes,
into every model directory of the fixtures, `tokenizer.json`, `tokenizer_config.json` (special tokens and a Jinja
chat template in the style of that family) and `generation_config.json`. Step 2,
`scripts/make_engine_fixtures.py`, then adds the weights, `config.json` and `reference.json`.

Needs only the `tokenizers` package (pip install tokenizers). From the repository root:

    python3 scripts/make_fixture_tokenizer.py

Families: `llama` style (`llama`, `llama_sharded`, `llama31`) adds `<s>` in front of every encoding and uses a
Llama-3-like header chat template; `mistral` adds `<s>` and uses `[INST]` turns; `qwen2` style (`qwen2`,
`qwen2_bf16`) adds nothing and uses ChatML.
"""

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpora" / "demo" / "corpus.json"
OUT = ROOT / "tests" / "fixtures" / "engine"

VOCAB_SIZE = 384  # 256 byte symbols + 9 special tokens + 119 merges
SPECIAL_TOKENS = [
    "<unk>",  # 0 (never produced: byte-level BPE covers every byte)
    "<s>",  # 1
    "</s>",  # 2
    "<pad>",  # 3
    "<|im_start|>",  # 4
    "<|im_end|>",  # 5
    "<|start_header_id|>",  # 6
    "<|end_header_id|>",  # 7
    "<|eot_id|>",  # 8
]
ID = {token: i for i, token in enumerate(SPECIAL_TOKENS)}

LLAMA_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + (message['content'] | trim) + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
MISTRAL_TEMPLATE = (  # system turns are rendered like user turns
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token }}"
    "{%- else %}{{- '[INST] ' + message['content'] + ' [/INST]' }}{%- endif %}"
    "{%- endfor %}"
)

# family -> (adds <s> when encoding, tokenizer_config extras, generation_config)
FAMILIES = {
    "llama": (
        True,
        {"bos_token": "<s>", "eos_token": "<|eot_id|>", "pad_token": "<pad>", "chat_template": LLAMA_TEMPLATE},
        {"bos_token_id": ID["<s>"], "eos_token_id": [ID["</s>"], ID["<|eot_id|>"]], "pad_token_id": ID["<pad>"]},
    ),
    "mistral": (
        True,
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "chat_template": MISTRAL_TEMPLATE},
        {"bos_token_id": ID["<s>"], "eos_token_id": ID["</s>"], "pad_token_id": ID["<pad>"]},
    ),
    "qwen2": (
        False,
        {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<pad>", "chat_template": CHATML_TEMPLATE},
        {"bos_token_id": ID["</s>"], "eos_token_id": [ID["<|im_end|>"], ID["</s>"]], "pad_token_id": ID["<pad>"]},
    ),
}
MODELS = {
    "llama": "llama",
    "llama_sharded": "llama",
    "llama31": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen2_bf16": "qwen2",
}


def train() -> Tokenizer:
    texts = [doc["text"] for doc in json.loads(CORPUS.read_text())]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    assert tokenizer.get_vocab_size() == VOCAB_SIZE, tokenizer.get_vocab_size()
    for token, i in ID.items():
        assert tokenizer.token_to_id(token) == i, token
    return tokenizer


def with_post_processor(trained: Tokenizer, add_bos: bool) -> Tokenizer:
    tokenizer = Tokenizer.from_str(trained.to_str())
    byte_level = processors.ByteLevel(trim_offsets=False)
    if add_bos:
        template = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", ID["<s>"])]
        )
        tokenizer.post_processor = processors.Sequence([byte_level, template])
    else:
        tokenizer.post_processor = byte_level
    return tokenizer


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def main() -> None:
    trained = train()
    for model, family in MODELS.items():
        add_bos, special, generation = FAMILIES[family]
        directory = OUT / model
        directory.mkdir(parents=True, exist_ok=True)
        with_post_processor(trained, add_bos).save(str(directory / "tokenizer.json"), pretty=True)
        write_json(
            directory / "tokenizer_config.json",
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                **special,
                "unk_token": "<unk>",
                "model_max_length": 256,
                "clean_up_tokenization_spaces": False,
                "added_tokens_decoder": {
                    str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                             "normalized": False, "single_word": False}
                    for i, t in enumerate(SPECIAL_TOKENS)
                },
            },
        )
        write_json(directory / "generation_config.json", {**generation, "do_sample": False})
        print(f"{directory.relative_to(ROOT)}: {family} tokenizer, vocab {VOCAB_SIZE}")


if __name__ == "__main__":
    main()
