//! The tokenizer of a GGUF file, built from its `tokenizer.ggml.*` metadata as a `tokenizers` byte-level BPE:
//! tokens and merges, control and user-defined tokens as added tokens, the pre-tokenizer named by
//! `tokenizer.ggml.pre` (GPT-2, SmolLM, Qwen2, Llama 3), a BOS post-processor when `add_bos_token` says so, the
//! chat template of `tokenizer.chat_template`, and stop tokens (GGUF has no generation config: the EOS id and
//! the end-of-turn tokens the vocabulary has).

use serde_json::{json, Value as Json};

use super::gguf::GgufFile;
use super::tokenizer::{GenerationConfig, ModelTokenizer, SpecialTokens};
use super::{invalid, ModelError};
use candle_core::quantized::gguf_file::Value;

/// Qwen2's split pattern (single digits).
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's split pattern (digits in threes).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Tokens that end an assistant turn in the common chat formats.
const END_OF_TURN: [&str; 4] = ["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>"];

/// GGUF token types (`tokenizer.ggml.token_type`).
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// The tokenizer, chat template and stop tokens of `file`.
pub fn tokenizer(file: &GgufFile) -> Result<ModelTokenizer, ModelError> {
    let model = file.meta_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(ModelError::Unsupported(format!(
            "GGUF tokenizer model `{model}` in {} (only byte-level BPE, `gpt2`)",
            file.path().display()
        )));
    }
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let merges = strings(file, "tokenizer.ggml.merges")?;
    let types = integers(file, "tokenizer.ggml.token_type", tokens.len())?;
    let pre = file.meta_str("tokenizer.ggml.pre").unwrap_or("default");
    let bos = token_id(file, "tokenizer.ggml.bos_token_id", tokens.len())?;
    let eos = token_id(file, "tokenizer.ggml.eos_token_id", tokens.len())?;
    let add_bos = file
        .meta_bool("tokenizer.ggml.add_bos_token")
        .unwrap_or(false);
    let spec = tokenizer_json(&tokens, &merges, &types, pre, bos.filter(|_| add_bos))
        .map_err(|reason| invalid(file.path(), reason))?;
    let bytes = serde_json::to_vec(&spec).map_err(|e| invalid(file.path(), e))?;
    let inner = tokenizers::Tokenizer::from_bytes(&bytes)
        .map_err(|e| invalid(file.path(), format!("tokenizer from metadata: {e}")))?;
    let template = file
        .meta_str("tokenizer.chat_template")
        .ok()
        .map(str::to_string);
    let name = |id: Option<u32>| id.map(|i| tokens[i as usize].clone());
    let special = SpecialTokens {
        bos: name(bos),
        eos: name(eos),
        pad: name(token_id(
            file,
            "tokenizer.ggml.padding_token_id",
            tokens.len(),
        )?),
        unk: name(token_id(
            file,
            "tokenizer.ggml.unknown_token_id",
            tokens.len(),
        )?),
    };
    let mut stops: Vec<u32> = eos.into_iter().collect();
    for t in END_OF_TURN {
        if let Some(i) = tokens.iter().position(|x| x == t) {
            if !stops.contains(&(i as u32)) {
                stops.push(i as u32);
            }
        }
    }
    let generation = GenerationConfig {
        bos_token_id: bos,
        eos_token_ids: stops,
        ..GenerationConfig::default()
    };
    Ok(ModelTokenizer::from_parts(
        inner,
        template,
        special,
        generation,
        file.path().to_path_buf(),
    ))
}

/// The `tokenizer.json` of a byte-level BPE: `bos` is prepended by the post-processor when given.
fn tokenizer_json(
    tokens: &[String],
    merges: &[String],
    types: &[i64],
    pre: &str,
    bos: Option<u32>,
) -> Result<Json, String> {
    let vocab: serde_json::Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let added: Vec<Json> = tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter(|(_, (_, &ty))| ty == CONTROL || ty == USER_DEFINED)
        .map(|(i, (t, &ty))| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": ty == CONTROL})
        })
        .collect();
    let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
    let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": regex});
    let (normalizer, pre_tokenizer) = match pre {
        "default" | "gpt-2" | "gpt2" => (Json::Null, byte_level(true)),
        "smollm" => (
            Json::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        ),
        "qwen2" => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_PATTERN), byte_level(false)]}),
        ),
        "llama-bpe" | "llama3" => (
            Json::Null,
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_PATTERN), byte_level(false)]}),
        ),
        other => {
            return Err(format!(
                "unsupported pre-tokenizer `{other}` (tokenizer.ggml.pre)"
            ))
        }
    };
    let post = match bos {
        Some(id) => {
            let b = &tokens[id as usize];
            json!({"type": "TemplateProcessing",
                   "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                   "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                            {"SpecialToken": {"id": b, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                   "special_tokens": {b.clone(): {"id": b, "ids": [id], "tokens": [b]}}})
        }
        None => Json::Null,
    };
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges},
    }))
}

fn array<'a>(file: &'a GgufFile, key: &str) -> Result<&'a Vec<Value>, ModelError> {
    match file.meta(key) {
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(invalid(
            file.path(),
            format!("metadata `{key}` is not an array"),
        )),
        None => Err(invalid(file.path(), format!("metadata `{key}` is missing"))),
    }
}

fn strings(file: &GgufFile, key: &str) -> Result<Vec<String>, ModelError> {
    array(file, key)?
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.clone()),
            _ => Err(invalid(file.path(), format!("`{key}` holds a non-string"))),
        })
        .collect()
}

/// An integer array of `len` entries (`len` 0: absent is fine and gives normal tokens).
fn integers(file: &GgufFile, key: &str, len: usize) -> Result<Vec<i64>, ModelError> {
    if file.meta(key).is_none() {
        return Ok(vec![1; len]);
    }
    let out: Vec<i64> = array(file, key)?
        .iter()
        .map(|v| match v {
            Value::I32(x) => Ok(i64::from(*x)),
            Value::U32(x) => Ok(i64::from(*x)),
            Value::I8(x) => Ok(i64::from(*x)),
            Value::U8(x) => Ok(i64::from(*x)),
            _ => Err(invalid(file.path(), format!("`{key}` holds a non-integer"))),
        })
        .collect::<Result<_, _>>()?;
    if out.len() != len {
        let reason = format!("`{key}` has {} entries for {len} tokens", out.len());
        return Err(invalid(file.path(), reason));
    }
    Ok(out)
}

fn token_id(file: &GgufFile, key: &str, vocab: usize) -> Result<Option<u32>, ModelError> {
    match file.meta_usize(key)? {
        None => Ok(None),
        Some(id) if id < vocab => Ok(Some(id as u32)),
        Some(id) => Err(invalid(
            file.path(),
            format!("`{key}` {id} is outside the vocabulary of {vocab}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tokenizer::gpt2_byte_chars;

    /// A byte-level vocabulary (the 256 byte characters), a few merges and two control tokens.
    fn tiny(pre: &str, bos: Option<u32>) -> tokenizers::Tokenizer {
        let bytes = gpt2_byte_chars();
        let mut tokens: Vec<String> = bytes.iter().map(|c| c.to_string()).collect();
        let g = bytes[b' ' as usize];
        let merges = vec![format!("{g} h"), "e l".to_string(), format!("{g}h el")];
        tokens.extend([format!("{g}h"), "el".into(), format!("{g}hel")]);
        tokens.extend(["<|im_start|>".to_string(), "<|im_end|>".to_string()]);
        let mut types = vec![1i64; tokens.len()];
        let n = types.len();
        types[n - 2] = CONTROL;
        types[n - 1] = CONTROL;
        let spec = tokenizer_json(&tokens, &merges, &types, pre, bos).unwrap();
        tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&spec).unwrap()).unwrap()
    }

    #[test]
    fn merges_specials_and_round_trip() {
        for pre in ["default", "smollm", "qwen2", "llama-bpe"] {
            let t = tiny(pre, None);
            let enc = t.encode(" hel<|im_end|>1", false).unwrap();
            let ids = enc.get_ids();
            assert_eq!(ids[0], 258, "{pre}: {ids:?}");
            assert_eq!(ids[1], 260, "{pre}: {ids:?}");
            assert_eq!(t.decode(ids, false).unwrap(), " hel<|im_end|>1", "{pre}");
            assert_eq!(t.decode(ids, true).unwrap(), " hel1", "{pre}");
        }
    }

    #[test]
    fn digits_split_per_pre_tokenizer() {
        // SmolLM splits every digit apart before the byte-level split.
        let t = tiny("smollm", None);
        let pre = t.get_pre_tokenizer().unwrap();
        use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
        let mut s = PreTokenizedString::from("ab 12345");
        pre.pre_tokenize(&mut s).unwrap();
        let parts = s.get_splits(OffsetReferential::Original, OffsetType::Byte);
        assert_eq!(parts.len(), 7, "{parts:?}");
    }

    #[test]
    fn bos_is_prepended_when_asked() {
        let t = tiny("default", Some(259));
        let ids = t.encode(" hel", true).unwrap().get_ids().to_vec();
        assert_eq!(ids, vec![259, 258]);
        assert!(tokenizer_json(&[], &[], &[], "mystery", None).is_err());
    }
}
