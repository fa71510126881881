//! The domain types of question answering: what a question asks for ([`QaRequest`] and its options) and what an
//! answer carries ([`Answer`], [`PassageAttribution`], [`AttributionInfo`], [`TokenAttribution`], [`QaRelation`],
//! [`QaTimings`]). They are also the `/v1/qa` wire format (serde, with utoipa schemas for the OpenAPI spec).

use engram_engine::{AttentionMode, HipParams};
use serde::{Deserialize, Serialize};

/// How the values are estimated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Estimator {
    /// Exact Shapley values up to 10 players; beyond, permutation sampling for passages and ContextCite for
    /// sentences (whose dozens of players would need thousands of permutation prompts).
    #[default]
    Auto,
    /// Permutation sampling (128 permutations in antithetic pairs), whatever the number of players.
    Permutation,
    /// Banzhaf values from 1,024 random coalitions (each player in with probability 1/2).
    Banzhaf,
    /// ContextCite: a LASSO surrogate fitted to `qa.contextcite_ablations` random ablations (each player in with
    /// probability 1/2), on the logit of the answer's probability for the `log_prob` value.
    #[serde(rename = "contextcite")]
    ContextCite,
}

/// What a passage subset is worth for a generated answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ValueFunction {
    /// The answer's teacher-forced log-probability.
    #[default]
    LogProb,
    /// 1 when the answer's log-probability stays within ln 2 of the full prompt's, else 0 (TextGenSHAP's
    /// answer-change indicator, as "is the answer still the likely one").
    AnswerKept,
}

/// What to attribute the answer to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AttributionLevel {
    /// No attributions.
    None,
    /// One value per retrieved passage (the default).
    #[default]
    Passages,
    /// Passage values, then values for runs of words of the passage with the largest value (`token_attribution`).
    Tokens,
    /// Values of the passages' sentences (`sentence_attribution`; ContextCite's granularity); each passage's
    /// value is the sum of its sentences'.
    Sentences,
}

/// A question.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QaRequest {
    /// The question.
    #[schema(min_length = 1)]
    pub question: String,
    /// How many passages to retrieve (default `retrieval.default_top_k`, at most `retrieval.max_top_k`).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub top_k: Option<usize>,
    /// Retrieval method (default `bm25`).
    #[serde(default)]
    pub retriever: Option<String>,
    /// `none`, `passages` (default) or `tokens`.
    #[serde(default)]
    pub attribution: AttributionLevel,
    /// Stream the answer as server-sent events: `token` events carry the answer's text as it is made (one per
    /// generated token; an extractive answer in one), then `attribution` (`{attribution, passages: [value and
    /// standard error per passage]}`), then `done` with the whole response; a failure after the stream started is
    /// an `error` event (`{error: {code, message}}`). Bad requests are still plain 4xx JSON errors.
    #[serde(default)]
    pub stream: bool,
    /// Rounds of retrieval (IRCoT-style, 1 to 4, default 1): after the first, each round retrieves `top_k` more
    /// passages with a reasoning step as the query (the model's, or the reader's best new sentence without one).
    #[serde(default)]
    pub iterations: Option<usize>,
    /// How coalition prompts are computed for generated answers' attributions: `joint` (each coalition's prompt
    /// written out and computed in full: exact, about one prefill per coalition), `separate` (each passage encoded
    /// once after the instruction and question, a coalition's answer attending to its passages only: the
    /// Fusion-in-Decoder approximation, a coalition costs its answer's tokens) or `auto` (the default: `joint` up
    /// to 5 players on a GPU, `separate` on the CPU or beyond).
    #[serde(default)]
    pub passage_encoding: PassageEncoding,
    /// The estimator: `auto` (default: exact Shapley up to 10 players; beyond, permutation sampling for passages
    /// and ContextCite for sentences), `permutation`, `banzhaf` or `contextcite`.
    #[serde(default)]
    pub estimator: Estimator,
    /// For generated answers, what a passage subset is worth: `log_prob` (default, the answer's teacher-forced
    /// log-probability) or `answer_kept` (TextGenSHAP's answer-change indicator: 1 while the answer's
    /// log-probability stays within ln 2 of the full prompt's). The extractive reader has its own value.
    #[serde(default)]
    pub value: ValueFunction,
    /// How the model attends while it writes the answer (and, with `iterations`, its reasoning steps):
    /// `{"kind": "dense"}` or `{"kind": "hip", "block_q": 64, "block_k": 64, "top_k": 32, "sink_tokens": 64,
    /// "recent_tokens": 512, "min_context": 4096}` (HiP sparse attention for prompts past `min_context` tokens;
    /// every parameter optional, with those defaults). Omitted: the engine's `[engine.attention]`. Attribution
    /// always scores its coalition prompts with dense attention. Checked even without a model (a bad one is a 400
    /// naming `attention`); the extractive reader ignores it.
    #[serde(default, deserialize_with = "whole_attention")]
    #[schema(schema_with = attention_schema)]
    pub attention: Option<AttentionMode>,
}

/// Reads `attention` as one value, so that any error inside it (an unknown `kind` included) names `attention`
/// itself, as the OpenAI-compatible endpoints do.
fn whole_attention<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<AttentionMode>, D::Error> {
    Option::<serde_json::Value>::deserialize(deserializer)?
        .map(|v| AttentionMode::deserialize(v).map_err(serde::de::Error::custom))
        .transpose()
}

/// The OpenAPI schema of an `attention` object (the engine's [`AttentionMode`], which has no schema of its own),
/// shared by `/v1/qa` and the OpenAI-compatible endpoints: `{"kind": "dense"}`, or `{"kind": "hip", ...}` with
/// HiP's integer parameters, each optional with [`HipParams::default`]'s value. The ranges are the engine's
/// ([`HipParams::validate`]): block sizes 1 to 4096, `top_k` 1 to 256.
pub fn attention_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{
        AdditionalProperties, ObjectBuilder, OneOfBuilder, Schema, Type,
    };
    let kind = |name: &str| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some([name]))
    };
    let closed = || Some(AdditionalProperties::<Schema>::FreeForm(false));
    let d = HipParams::default();
    let int = |min: usize, max: Option<usize>, default: usize, what: &str| {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(min))
            .maximum(max)
            .default(Some(default.into()))
            .description(Some(what))
    };
    let dense = ObjectBuilder::new()
        .description(Some("Every row attends to all earlier keys."))
        .property("kind", kind("dense"))
        .required("kind")
        .additional_properties(closed());
    let hip = ObjectBuilder::new()
        .description(Some(
            "HiP sparse attention: each block of query rows attends to the top_k key blocks a tree search picks, \
             plus the sink and the recent window, once the context exceeds min_context tokens.",
        ))
        .property("kind", kind("hip"))
        .property(
            "block_q",
            int(1, Some(4096), d.block_q, "Query rows that share one search."),
        )
        .property(
            "block_k",
            int(1, Some(4096), d.block_k, "Keys per key block, the unit the search keeps."),
        )
        .property(
            "top_k",
            int(1, Some(256), d.top_k, "Key blocks each query block keeps besides the sink and the window."),
        )
        .property(
            "sink_tokens",
            int(0, None, d.sink_tokens, "Tokens at the start always attended."),
        )
        .property(
            "recent_tokens",
            int(0, None, d.recent_tokens, "Latest tokens always attended by every row."),
        )
        .property(
            "min_context",
            int(0, None, d.min_context, "Contexts up to this many tokens stay dense."),
        )
        .required("kind")
        .additional_properties(closed());
    Schema::OneOf(
        OneOfBuilder::new()
            .item(dense)
            .item(hip)
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .build(),
    )
}

/// How coalition prompts are computed (see [`QaRequest::passage_encoding`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PassageEncoding {
    /// `joint` up to [`JOINT_MAX_PASSAGES`] players when the model runs on a GPU, `separate` otherwise (the CPU
    /// computes the 32 joint prompts of 5 passages in about 6.6 times the separate mode's time, for a linear
    /// datamodeling score 0.12 higher and top-k drops within 3%: BENCHMARKS.md, attribution faithfulness).
    #[default]
    Auto,
    /// Each coalition's prompt computed in full.
    Joint,
    /// Each passage encoded once; coalitions attend to their passages' keys.
    Separate,
}

/// Most players for which `auto` computes every coalition prompt in full on a GPU (2^5 = 32 prompts).
pub const JOINT_MAX_PASSAGES: usize = 5;

impl PassageEncoding {
    /// `joint` or `separate` for `players` players, the model running on `device` (`cpu`, `cuda`).
    pub fn resolve(self, players: usize, device: &str) -> Self {
        match self {
            Self::Auto if players <= JOINT_MAX_PASSAGES && device != "cpu" => Self::Joint,
            Self::Auto => Self::Separate,
            other => other,
        }
    }

    /// The name the API uses: `auto`, `joint` or `separate`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Joint => "joint",
            Self::Separate => "separate",
        }
    }
}

/// The answer and where it came from.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Answer {
    /// The answer text.
    pub text: String,
    /// `generated` (by the model) or `extractive` (a sentence copied from a passage, when no model is loaded).
    pub mode: String,
    /// Extractive answers: index of the passage (in `passages`) that holds it.
    pub passage: Option<usize>,
    /// Extractive answers: start byte offset of the answer in that passage's text.
    pub start_byte: Option<usize>,
    /// Extractive answers: end byte offset of the answer in that passage's text.
    pub end_byte: Option<usize>,
    /// Generated answers: the answer's tokens.
    pub tokens: Option<usize>,
}

/// A passage's share of the answer.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PassageAttribution {
    /// The Shapley value.
    pub value: f64,
    /// Its standard error (0 when exact).
    pub std_error: f64,
}

/// How the attributions were computed.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttributionInfo {
    /// `exact_shapley` or `permutation_shapley`.
    pub method: String,
    /// The value function: `answer_log_prob` (the model's answer, teacher-forced under each passage subset) or
    /// `extractive_best_sentence_score`.
    pub value: String,
    /// Coalitions valued.
    pub evaluations: usize,
    /// Value of all passages together (the values sum to this minus `empty`).
    pub full: f64,
    /// Value of no passage.
    pub empty: f64,
    /// Generated answers: how coalition prompts were computed, `joint` or `separate`.
    pub passage_encoding: Option<String>,
    /// Generated answers: forward passes the model ran for the attribution.
    pub forward_passes: Option<usize>,
    /// Generated answers: prompt tokens the model computed for the attribution.
    pub computed_tokens: Option<usize>,
    /// Generated answers: prompt tokens of every valued coalition's prompt written out in full.
    pub prompt_tokens: Option<usize>,
}

/// A relation of the knowledge graph inside a retrieved passage: one edge of the graph neighbourhood that led to
/// the answer (seed phrase -> relation -> passage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QaRelation {
    /// The subject phrase (normalised).
    pub subject: String,
    /// The relation, as extracted.
    pub relation: String,
    /// The object phrase (normalised).
    pub object: String,
    /// Index (in `passages`) of the passage it was extracted from.
    pub passage: usize,
    /// Whether its subject or object is one of the `seeds`.
    pub seed: bool,
}

/// Token-level attribution (TextGenSHAP's second level): runs of consecutive words of one passage as players, the
/// other passages kept whole, exact Shapley values over the same value function as the passages'.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenAttribution {
    /// Index (in `passages`) of the passage whose words are attributed: the one with the largest value.
    pub passage: usize,
    /// The runs (at most 8), in text order.
    pub spans: Vec<SpanAttribution>,
    /// How the values were computed.
    pub attribution: AttributionInfo,
}

/// Sentence-level attribution: every sentence of the retrieved passages is a player (runs of consecutive
/// sentences of one passage past 64), the value function the passages' would have.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SentenceAttribution {
    /// The sentences, passage by passage, in text order.
    pub sentences: Vec<SentenceValue>,
    /// How the values were computed.
    pub attribution: AttributionInfo,
}

/// One sentence (or run of sentences) of a retrieved passage and its value.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SentenceValue {
    /// Index (in `passages`) of its passage.
    pub passage: usize,
    /// First byte of the sentence in the passage text.
    pub start_byte: usize,
    /// One past its last byte.
    pub end_byte: usize,
    /// Its value.
    pub value: f64,
    /// Standard error (0 for exact values and ContextCite's).
    pub std_error: f64,
}

/// One run of words of the attributed passage and its Shapley value.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SpanAttribution {
    /// First byte of the run in the passage text.
    pub start_byte: usize,
    /// One past its last byte.
    pub end_byte: usize,
    /// Its Shapley value.
    pub value: f64,
    /// Standard error (0 for exact values).
    pub std_error: f64,
}

/// Server-side time per stage, in milliseconds.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QaTimings {
    /// Retrieval.
    pub retrieve_ms: f64,
    /// Reading (answer extraction).
    pub read_ms: f64,
    /// Attribution.
    pub attribution_ms: f64,
    /// The whole request.
    pub total_ms: f64,
}
