//! Open-IE by the local LLM, in HippoRAG's two steps: the named entities of each passage, then triples given
//! those entities. Prompts are ours, each with one worked example; decoding is constrained to the answer's JSON
//! shape ([`engram_engine::internals::constrain`]), so every answer parses, even from a random-weight model. All passages
//! of a call are submitted at once, so the engine batches them (prepacked prefill, continuous batching).

use super::fallback::FallbackExtractor;
use super::{Extraction, Extractor, OpenIeError, PassageInput, Triple};
use engram_engine::ChatMessage;
use engram_engine::SamplingParams;
use engram_engine::{EngineError, GenerationEvent, GenerationRequest, Generator};
use engram_engine::{JsonConstraint, JsonShape};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;

/// Bumped whenever the prompts or shapes change, so cached extractions of older prompts are not reused.
const PROMPT_VERSION: u32 = 1;

/// Limits of the LLM extractor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LlmExtractorLimits {
    /// Most entities per passage.
    pub max_entities: usize,
    /// Most triples per passage.
    pub max_triples: usize,
    /// Most bytes of one entity or triple element.
    pub max_phrase_bytes: usize,
    /// Most new tokens of one answer.
    pub max_tokens: usize,
}

impl Default for LlmExtractorLimits {
    fn default() -> Self {
        Self {
            max_entities: 24,
            max_triples: 32,
            max_phrase_bytes: 64,
            max_tokens: 768,
        }
    }
}

const NER_SYSTEM: &str = "You find the named entities of a passage for a knowledge graph. Answer with JSON only, \
in the form {\"named_entities\":[...]}: every person, place, organisation, creative work, event, date and number \
the passage names, each once, spelled as in the passage.";

const TRIPLES_SYSTEM: &str = "You turn a passage into facts for a knowledge graph. Answer with JSON only, in the \
form {\"triples\":[[subject,relation,object],...]}. Each fact links one of the given named entities to another \
entity or key phrase of the passage through a short relation. Replace pronouns by the names they stand for.";

const EXAMPLE_TITLE: &str = "Marrow Bridge";
const EXAMPLE_TEXT: &str =
    "The Marrow Bridge is a stone arch bridge over the River Tavy in Kelbrook. The \
engineer Ada Penrose designed it in 1821, and it carried the Kelbrook mail road until 1930.";
const EXAMPLE_ENTITIES: &str = r#"{"named_entities":["Marrow Bridge","River Tavy","Kelbrook","Ada Penrose","1821","Kelbrook mail road","1930"]}"#;
const EXAMPLE_TRIPLES: &str = r#"{"triples":[["Marrow Bridge","is a","stone arch bridge"],["Marrow Bridge","crosses","River Tavy"],["Marrow Bridge","located in","Kelbrook"],["Ada Penrose","designed","Marrow Bridge"],["Marrow Bridge","designed in","1821"],["Marrow Bridge","carried","Kelbrook mail road"],["Marrow Bridge","carried the mail road until","1930"]]}"#;

/// The extractor that asks the generation model.
#[derive(Debug)]
pub struct LlmExtractor {
    generator: Arc<dyn Generator>,
    name: String,
    limits: LlmExtractorLimits,
    ner: Arc<JsonConstraint>,
    triples: Arc<JsonConstraint>,
    /// For passages whose prompts do not fit the model's context window.
    fallback: FallbackExtractor,
}

impl LlmExtractor {
    /// An extractor over `generator`'s model.
    pub fn new(
        generator: Arc<dyn Generator>,
        limits: LlmExtractorLimits,
    ) -> Result<Self, OpenIeError> {
        let phrase = || JsonShape::String {
            max_bytes: limits.max_phrase_bytes,
        };
        let ner_shape = JsonShape::Object(vec![(
            "named_entities".into(),
            JsonShape::Array {
                item: Box::new(phrase()),
                min_items: 0,
                max_items: limits.max_entities,
            },
        )]);
        let triples_shape = JsonShape::Object(vec![(
            "triples".into(),
            JsonShape::Array {
                item: Box::new(JsonShape::Array {
                    item: Box::new(phrase()),
                    min_items: 3,
                    max_items: 3,
                }),
                min_items: 0,
                max_items: limits.max_triples,
            },
        )]);
        let compile = |shape: &JsonShape| {
            JsonConstraint::new(shape, generator.tokenizer())
                .map(Arc::new)
                .map_err(|e| OpenIeError::Extract(e.to_string()))
        };
        let (ner, triples) = (compile(&ner_shape)?, compile(&triples_shape)?);
        let needed = ner.min_tokens().max(triples.min_tokens());
        if limits.max_tokens < needed {
            return Err(OpenIeError::Extract(format!(
                "max_tokens {} is below the {needed} tokens of an empty answer",
                limits.max_tokens
            )));
        }
        Ok(Self {
            name: format!("llm-v{PROMPT_VERSION}:{}", generator.model_name()),
            generator,
            limits,
            ner,
            triples,
            fallback: FallbackExtractor::default(),
        })
    }

    /// The named entities of each text (questions, for query understanding): the first step alone.
    pub fn entities_of(
        &self,
        passages: &[PassageInput<'_>],
    ) -> Result<Vec<Vec<String>>, OpenIeError> {
        let prompts = passages.iter().map(ner_messages).collect();
        let answers = self.ask(prompts, &self.ner)?;
        Ok(answers
            .into_iter()
            .map(|a| a.map(|json| parse_entities(&json)).unwrap_or_default())
            .collect())
    }

    /// Submits every prompt at once and collects the answers in order (`None`: the prompt does not fit).
    fn ask(
        &self,
        prompts: Vec<Vec<ChatMessage>>,
        constraint: &Arc<JsonConstraint>,
    ) -> Result<Vec<Option<String>>, OpenIeError> {
        let tokenizer = self.generator.tokenizer();
        let mut streams: Vec<Option<UnboundedReceiver<GenerationEvent>>> = Vec::new();
        for messages in prompts {
            let text = tokenizer
                .apply_chat_template(&messages, true)
                .map_err(|e| OpenIeError::Extract(e.to_string()))?;
            let prompt = tokenizer
                .encode(&text, false)
                .map_err(|e| OpenIeError::Extract(e.to_string()))?;
            let room = self.generator.max_context().saturating_sub(prompt.len());
            if room < constraint.min_tokens() {
                streams.push(None);
                continue;
            }
            let params = SamplingParams {
                temperature: 0.0,
                max_tokens: self.limits.max_tokens.min(room),
                ..SamplingParams::default()
            };
            let request = GenerationRequest {
                prompt,
                params,
                constraint: Some(constraint.clone()),
                kv_budget: None,
                attention: None,
            };
            match self.generator.submit(request) {
                Ok(rx) => streams.push(Some(rx)),
                Err(EngineError::TooLong { .. } | EngineError::ConstraintBudget { .. }) => {
                    streams.push(None)
                }
                Err(e) => return Err(OpenIeError::Extract(e.to_string())),
            }
        }
        streams
            .into_iter()
            .map(|rx| rx.map(collect).transpose())
            .collect()
    }
}

/// Reads a request's stream to the end; its text.
fn collect(mut rx: UnboundedReceiver<GenerationEvent>) -> Result<String, OpenIeError> {
    let mut text = String::new();
    while let Some(event) = rx.blocking_recv() {
        match event {
            GenerationEvent::Token(t) => text.push_str(&t.text),
            GenerationEvent::Done { .. } => return Ok(text),
            GenerationEvent::Failed(e) => return Err(OpenIeError::Extract(e)),
        }
    }
    Err(OpenIeError::Extract(
        "the engine dropped a request unanswered".into(),
    ))
}

fn passage_block(p: &PassageInput<'_>) -> String {
    format!("Title: {}\nPassage: {}", p.title, p.text)
}

fn ner_messages(p: &PassageInput<'_>) -> Vec<ChatMessage> {
    let example = PassageInput {
        title: EXAMPLE_TITLE,
        text: EXAMPLE_TEXT,
    };
    vec![
        ChatMessage::new("system", NER_SYSTEM),
        ChatMessage::new("user", passage_block(&example)),
        ChatMessage::new("assistant", EXAMPLE_ENTITIES),
        ChatMessage::new("user", passage_block(p)),
    ]
}

fn triples_messages(p: &PassageInput<'_>, entities: &[String]) -> Vec<ChatMessage> {
    let example = PassageInput {
        title: EXAMPLE_TITLE,
        text: EXAMPLE_TEXT,
    };
    let with_entities = |p: &PassageInput<'_>, entities: &str| {
        format!("{}\nNamed entities: {entities}", passage_block(p))
    };
    let list = serde_json::json!({ "named_entities": entities }).to_string();
    vec![
        ChatMessage::new("system", TRIPLES_SYSTEM),
        ChatMessage::new("user", with_entities(&example, EXAMPLE_ENTITIES)),
        ChatMessage::new("assistant", EXAMPLE_TRIPLES),
        ChatMessage::new("user", with_entities(p, &list)),
    ]
}

/// Entities of a constrained answer, trimmed, without empties or repeats (first spelling kept).
fn parse_entities(json: &str) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        named_entities: Vec<String>,
    }
    let mut out: Vec<String> = Vec::new();
    if let Ok(a) = serde_json::from_str::<Answer>(json) {
        for e in a.named_entities {
            let e = e.trim();
            if !e.is_empty() && !out.iter().any(|o| o == e) {
                out.push(e.to_string());
            }
        }
    }
    out
}

/// Triples of a constrained answer whose three parts are not blank, without repeats.
fn parse_triples(json: &str) -> Vec<Triple> {
    #[derive(serde::Deserialize)]
    struct Answer {
        triples: Vec<[String; 3]>,
    }
    let mut out: Vec<Triple> = Vec::new();
    if let Ok(a) = serde_json::from_str::<Answer>(json) {
        for [s, r, o] in a.triples {
            let t = Triple {
                subject: s.trim().to_string(),
                relation: r.trim().to_string(),
                object: o.trim().to_string(),
            };
            let blank = t.subject.is_empty() || t.relation.is_empty() || t.object.is_empty();
            if !blank && !out.contains(&t) {
                out.push(t);
            }
        }
    }
    out
}

impl Extractor for LlmExtractor {
    fn name(&self) -> &str {
        &self.name
    }

    fn cacheable(&self) -> bool {
        true
    }

    /// Anchors each triple end to the passage's named entities ([`super::anchor`]).
    fn refine(&self, extraction: Extraction) -> Extraction {
        super::anchor::anchor_to_entities(extraction)
    }

    fn question_entities(&self, question: &str) -> Result<Vec<String>, OpenIeError> {
        let input = PassageInput {
            title: "Question",
            text: question,
        };
        Ok(self.entities_of(&[input])?.pop().unwrap_or_default())
    }

    fn extract(&self, passages: &[PassageInput<'_>]) -> Result<Vec<Extraction>, OpenIeError> {
        let mut out = Vec::with_capacity(passages.len());
        for chunk in passages.chunks(PASSAGES_PER_ROUND) {
            out.extend(self.extract_round(chunk)?);
        }
        Ok(out)
    }
}

/// Passages whose requests are in the engine at once (below its queue limit).
const PASSAGES_PER_ROUND: usize = 64;

impl LlmExtractor {
    /// Both steps for up to [`PASSAGES_PER_ROUND`] passages.
    fn extract_round(&self, passages: &[PassageInput<'_>]) -> Result<Vec<Extraction>, OpenIeError> {
        let ner = self.ask(passages.iter().map(ner_messages).collect(), &self.ner)?;
        let entities: Vec<Option<Vec<String>>> = ner
            .iter()
            .map(|a| a.as_deref().map(parse_entities))
            .collect();
        // Step two for the passages that got through step one.
        let asked: Vec<usize> = (0..passages.len())
            .filter(|&i| entities[i].is_some())
            .collect();
        let prompts = asked
            .iter()
            .map(|&i| triples_messages(&passages[i], entities[i].as_deref().unwrap_or(&[])))
            .collect();
        let mut triples: Vec<Option<Option<String>>> = vec![None; passages.len()];
        for (i, answer) in asked.into_iter().zip(self.ask(prompts, &self.triples)?) {
            triples[i] = Some(answer);
        }
        let mut out = Vec::with_capacity(passages.len());
        for (i, p) in passages.iter().enumerate() {
            match (&entities[i], &triples[i]) {
                (Some(e), Some(Some(t))) => out.push(Extraction {
                    entities: e.clone(),
                    triples: parse_triples(t),
                }),
                // Too long for the model's context window: the rule-based extractor instead.
                _ => out.extend(self.fallback.extract(std::slice::from_ref(p))?),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_cleaned() {
        assert_eq!(
            parse_entities(r#"{"named_entities":[" Ada ","Ada","","Kelbrook"]}"#),
            vec!["Ada", "Kelbrook"]
        );
        let t = parse_triples(r#"{"triples":[["a","b","c"],["a"," ","c"],["a","b","c"]]}"#);
        assert_eq!(t.len(), 1);
        assert_eq!(parse_entities("not json"), Vec::<String>::new());
    }

    #[test]
    fn the_worked_example_is_valid_for_the_shapes() {
        assert_eq!(parse_entities(EXAMPLE_ENTITIES).len(), 7);
        assert_eq!(parse_triples(EXAMPLE_TRIPLES).len(), 7);
        for e in parse_entities(EXAMPLE_ENTITIES) {
            assert!(
                EXAMPLE_TEXT.contains(&e) || EXAMPLE_TITLE.contains(&e),
                "{e}"
            );
        }
    }
}
