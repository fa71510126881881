//! The tokenizer (`tokenizer.json`), the chat template and special tokens (`tokenizer_config.json` or
//! `chat_template.jinja`) and the generation defaults (`generation_config.json`).
//!
//! Chat templates render with minijinja the way transformers renders them with Jinja2: `trim_blocks` and
//! `lstrip_blocks` on, Python string methods through minijinja-contrib's pycompat, a `raise_exception`
//! function, and `bos_token`/`eos_token`/`pad_token`/`unk_token` variables.

use std::fmt;
use std::path::{Path, PathBuf};

use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::config::OneOrMany;
use super::{invalid, read_text, ModelError};

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, …
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// `generation_config.json`: the model's sampling defaults and stop tokens.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(from = "RawGeneration")]
pub struct GenerationConfig {
    /// The beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// Tokens that end generation (`eos_token_id`, an int or a list in the JSON).
    pub eos_token_ids: Vec<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    pub top_p: Option<f32>,
    /// Top-k sampling.
    pub top_k: Option<usize>,
    /// Sample (true) or decode greedily (false).
    pub do_sample: Option<bool>,
    /// Default generation length.
    pub max_new_tokens: Option<usize>,
    /// Repetition penalty (1.0 = none).
    pub repetition_penalty: Option<f32>,
}

#[derive(Deserialize)]
struct RawGeneration {
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    do_sample: Option<bool>,
    max_new_tokens: Option<usize>,
    repetition_penalty: Option<f32>,
}

impl From<RawGeneration> for GenerationConfig {
    fn from(r: RawGeneration) -> Self {
        Self {
            bos_token_id: r.bos_token_id,
            eos_token_ids: r.eos_token_id.map(OneOrMany::into_vec).unwrap_or_default(),
            temperature: r.temperature,
            top_p: r.top_p,
            top_k: r.top_k,
            do_sample: r.do_sample,
            max_new_tokens: r.max_new_tokens,
            repetition_penalty: r.repetition_penalty,
        }
    }
}

/// Special token strings of `tokenizer_config.json`, passed to the chat template.
#[derive(Debug, Clone, Default)]
pub(crate) struct SpecialTokens {
    pub(crate) bos: Option<String>,
    pub(crate) eos: Option<String>,
    pub(crate) pad: Option<String>,
    pub(crate) unk: Option<String>,
}

/// A tokenizer with its chat template, special tokens and generation defaults.
#[derive(Clone)]
pub struct ModelTokenizer {
    inner: tokenizers::Tokenizer,
    /// The compiled chat template (`None`: the model has none; `Err`: it does not compile).
    chat: Option<Result<Environment<'static>, String>>,
    special: SpecialTokens,
    generation: GenerationConfig,
    /// `tokenizer.json` (named in errors), or a description of a tokenizer built in code.
    source: PathBuf,
}

const TEMPLATE: &str = "chat";

impl ModelTokenizer {
    /// Loads `dir/tokenizer.json` (required), `dir/tokenizer_config.json` (optional: `chat_template` as a string
    /// or a list of `{name, template}`, special tokens as strings or `{content: …}`), `dir/chat_template.jinja`
    /// (optional, wins over the config's template) and `dir/generation_config.json` (optional).
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let file = dir.join("tokenizer.json");
        if !file.is_file() {
            let hint = "a Hugging Face model directory needs tokenizer.json".to_string();
            return Err(ModelError::Missing { path: file, hint });
        }
        let inner = tokenizers::Tokenizer::from_file(&file).map_err(|e| invalid(&file, e))?;
        let (mut template, special) = match optional_json(&dir.join("tokenizer_config.json"))? {
            Some((path, json)) => parse_tokenizer_config(&path, &json)?,
            None => (None, SpecialTokens::default()),
        };
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            template = Some(read_text(&jinja, "chat template")?);
        }
        let generation = match optional_json(&dir.join("generation_config.json"))? {
            Some((path, json)) => serde_json::from_value(json).map_err(|e| invalid(&path, e))?,
            None => GenerationConfig::default(),
        };
        Ok(Self::from_parts(inner, template, special, generation, file))
    }

    /// Assembles a tokenizer from parts (used for tokenizers built in code).
    pub(crate) fn from_parts(
        inner: tokenizers::Tokenizer,
        template: Option<String>,
        special: SpecialTokens,
        generation: GenerationConfig,
        source: PathBuf,
    ) -> Self {
        let chat = template.map(|t| compile_template(t).map_err(|e| e.to_string()));
        Self {
            inner,
            chat,
            special,
            generation,
            source,
        }
    }

    /// Token ids of `text`; `add_special_tokens` applies the tokenizer's post-processor (e.g. a leading `<s>`).
    /// Special-token strings inside `text` are recognised either way.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, ModelError> {
        let encoding = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| invalid(&self.source, format!("encoding failed: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`; ids outside the vocabulary decode to nothing.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, ModelError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| invalid(&self.source, format!("decoding failed: {e}")))
    }

    /// Renders the chat template over `messages`, ending with the assistant's header when
    /// `add_generation_prompt`. [`ModelError::Template`] when the model has no template or it fails.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ModelError> {
        let env = match &self.chat {
            None => {
                return Err(ModelError::Template(format!(
                    "{} has no chat template (no chat_template in tokenizer_config.json, no chat_template.jinja)",
                    self.source.display()
                )))
            }
            Some(Err(e)) => return Err(ModelError::Template(format!("does not compile: {e}"))),
            Some(Ok(env)) => env,
        };
        let s = &self.special;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            // transformers passes these as None when not given (`tools is not none` must be false)
            tools => (), documents => (),
            bos_token => s.bos, eos_token => s.eos, pad_token => s.pad, unk_token => s.unk,
        };
        let render = env.get_template(TEMPLATE).and_then(|t| t.render(ctx));
        render.map_err(|e| ModelError::Template(describe(&e)))
    }

    /// The generation defaults (`generation_config.json`).
    pub fn generation(&self) -> &GenerationConfig {
        &self.generation
    }

    /// The stop tokens: `generation_config.json`'s `eos_token_id`s, then the tokenizer config's `eos_token`.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        let mut ids = self.generation.eos_token_ids.clone();
        let eos = self
            .special
            .eos
            .as_deref()
            .and_then(|t| self.token_to_id(t));
        ids.extend(eos.filter(|id| !ids.contains(id)));
        ids
    }

    /// The vocabulary size, added tokens included (may be smaller than the model's embedding).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token string (special tokens included).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The string of a token id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Writes the tokenizer as a Hugging Face directory holds it: `tokenizer.json`, `tokenizer_config.json` (the
    /// special token strings) and `generation_config.json` (the stop ids), so that [`Self::load`] reads back the
    /// same tokens and stop ids (not the chat template: a directory written here serves as a draft model, which
    /// never renders one).
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        let file = dir.join("tokenizer.json");
        self.inner
            .save(&file, false)
            .map_err(|e| invalid(&file, format!("cannot write: {e}")))?;
        let s = &self.special;
        let config: serde_json::Map<String, Value> = [
            ("bos_token", &s.bos),
            ("eos_token", &s.eos),
            ("pad_token", &s.pad),
            ("unk_token", &s.unk),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_string(), Value::String(v.clone()?))))
        .collect();
        let config = Value::Object(config);
        let generation = serde_json::json!({
            "bos_token_id": self.generation.bos_token_id,
            "eos_token_id": self.eos_token_ids(),
        });
        for (name, value) in [
            ("tokenizer_config.json", config),
            ("generation_config.json", generation),
        ] {
            let file = dir.join(name);
            fs_err::write(&file, value.to_string()).map_err(|e| invalid(&file, e))?;
        }
        Ok(())
    }
}

impl fmt::Debug for ModelTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelTokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .field("chat_template", &self.chat.as_ref().map(|c| c.is_ok()))
            .field("special", &self.special)
            .field("generation", &self.generation)
            .finish()
    }
}

fn compile_template(template: String) -> Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_template_owned(TEMPLATE, template)?;
    Ok(env)
}

/// A minijinja error with its causes.
fn describe(e: &minijinja::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        msg.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    msg
}

fn optional_json(path: &Path) -> Result<Option<(PathBuf, Value)>, ModelError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = read_text(path, "")?;
    let json = serde_json::from_str(&text).map_err(|e| invalid(path, e))?;
    Ok(Some((path.to_path_buf(), json)))
}

/// The chat template and special tokens of a `tokenizer_config.json`.
fn parse_tokenizer_config(
    file: &Path,
    json: &Value,
) -> Result<(Option<String>, SpecialTokens), ModelError> {
    let template = match json.get("chat_template") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(Value::Array(list)) => {
            let named = |want: Option<&str>| {
                list.iter()
                    .find(|e| want.is_none_or(|w| e.get("name").and_then(Value::as_str) == Some(w)))
            };
            let entry = named(Some("default")).or_else(|| named(None));
            let template = entry
                .and_then(|e| e.get("template"))
                .and_then(Value::as_str);
            let reason = "chat_template list without a {name, template} entry";
            Some(template.ok_or_else(|| invalid(file, reason))?.to_string())
        }
        Some(_) => {
            return Err(invalid(
                file,
                "chat_template is neither a string nor a list",
            ))
        }
    };
    let token = |key: &str| -> Result<Option<String>, ModelError> {
        match json.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => match v.get("content").and_then(Value::as_str) {
                Some(s) => Ok(Some(s.to_string())),
                None => Err(invalid(
                    file,
                    format!("`{key}` is neither a string nor {{content: …}}"),
                )),
            },
        }
    };
    let special = SpecialTokens {
        bos: token("bos_token")?,
        eos: token("eos_token")?,
        pad: token("pad_token")?,
        unk: token("unk_token")?,
    };
    Ok((template, special))
}

/// GPT-2's byte-to-character mapping: printable Latin-1 bytes map to themselves, the others to U+0100 onwards.
pub fn gpt2_byte_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        out[b as usize] = if matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF) {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(next - 1).unwrap_or('\u{FFFD}')
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_tokenizer_loads_back_with_the_same_tokens_and_stops() {
        let t = crate::model::synthetic::synthetic_tokenizer(512);
        let dir = tempfile::tempdir().unwrap();
        t.save(dir.path()).unwrap();
        let back = ModelTokenizer::load(dir.path()).unwrap();
        let text = "Where was the bridge built?";
        assert_eq!(
            back.encode(text, false).unwrap(),
            t.encode(text, false).unwrap()
        );
        assert_eq!(back.eos_token_ids(), t.eos_token_ids());
        assert_eq!(back.vocab_size(), t.vocab_size());
    }

    #[test]
    fn generation_config_eos_int_or_list() {
        let g: GenerationConfig =
            serde_json::from_str(r#"{"eos_token_id": 7, "temperature": 0.6}"#).unwrap();
        assert_eq!((g.eos_token_ids, g.temperature), (vec![7], Some(0.6)));
        let g: GenerationConfig =
            serde_json::from_str(r#"{"eos_token_id": [1, 2], "top_k": 20, "bos_token_id": null}"#)
                .unwrap();
        assert_eq!(
            (g.eos_token_ids, g.top_k, g.bos_token_id),
            (vec![1, 2], Some(20), None)
        );
    }

    #[test]
    fn tokenizer_config_forms() {
        let json = serde_json::json!({
            "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}],
            "bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>", "pad_token": null,
        });
        let (t, s) = parse_tokenizer_config(Path::new("tc.json"), &json).unwrap();
        assert_eq!(
            (t.as_deref(), s.bos.as_deref(), s.eos.as_deref(), s.pad),
            (Some("D"), Some("<s>"), Some("</s>"), None)
        );
        let bad = serde_json::json!({"chat_template": 3});
        let err = parse_tokenizer_config(Path::new("tc.json"), &bad).unwrap_err();
        assert!(err.to_string().contains("tc.json"));
    }

    #[test]
    fn templates_use_pycompat_and_raise_exception() {
        let tpl = "{% for m in messages %}{{ m.content.strip().upper() }}\n{% endfor %}\
                   {% if messages|length > 1 %}{{ raise_exception('too many') }}{% endif %}";
        let env = compile_template(tpl.to_string()).unwrap();
        let one = [ChatMessage::new("user", "  hi ")];
        let ctx = minijinja::context! { messages => one };
        assert_eq!(
            env.get_template(TEMPLATE).unwrap().render(ctx).unwrap(),
            "HI\n"
        );
        let two = [ChatMessage::new("user", "a"), ChatMessage::new("user", "b")];
        let err = env
            .get_template(TEMPLATE)
            .unwrap()
            .render(minijinja::context! { messages => two });
        assert!(describe(&err.unwrap_err()).contains("too many"));
    }

    #[test]
    fn context_matches_transformers() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<ModelTokenizer>();
        let mut tok = crate::model::synthetic::synthetic_tokenizer(512);
        let tpl =
            "{{ bos_token }}{% if tools is not none %}T{% endif %}{{ messages[0]['content'] }}\n";
        tok.chat = Some(compile_template(tpl.into()).map_err(|e| e.to_string()));
        let text = tok.apply_chat_template(&[ChatMessage::new("user", "x")], false);
        assert_eq!(text.unwrap(), "<s>x", "no trailing newline, no tools");
        tok.chat = Some(compile_template("{% for %}".into()).map_err(|e| e.to_string()));
        let err = tok.apply_chat_template(&[], false).unwrap_err();
        assert!(matches!(err, ModelError::Template(_)), "{err}");
    }
}
