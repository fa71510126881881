//! Typed, layered configuration: compiled defaults → `engram.toml` → `ENGRAM__SECTION__KEY` environment variables
//! (and `DATABASE_URL`) → command-line flags. [`Config::load`] merges the layers and [`Config::validate`] checks the
//! result, naming the offending key.

use crate::graph::GraphConfig;
use crate::index::vectors::RemoteQdrantConfig;
use crate::ingest::chunker::ChunkConfig;
use crate::retrieve::hybrid::HybridConfig;
use engram_engine::EngineConfig;
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or has a key of the wrong type or name.
    #[error("configuration error: {0}")]
    Load(Box<figment::Error>),
    /// A value is out of range or malformed.
    #[error("invalid configuration value for `{key}`: {message}")]
    Invalid {
        /// The dotted key, e.g. `server.bind`.
        key: &'static str,
        /// What is wrong and what to use instead.
        message: String,
    },
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        ConfigError::Load(Box::new(e))
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP server settings.
    pub server: ServerConfig,
    /// Where data lives.
    pub storage: StorageConfig,
    /// How documents are split into passages.
    pub chunking: ChunkConfig,
    /// Retrieval defaults and limits.
    pub retrieval: RetrievalConfig,
    /// The sentence-embedding model.
    pub embedding: EmbeddingConfig,
    /// Where passage vectors are kept.
    pub vectors: VectorsConfig,
    /// The knowledge graph and its retrievers.
    pub graph: GraphConfig,
    /// The generation engine.
    pub engine: EngineConfig,
    /// Question answering and attribution.
    pub qa: QaConfig,
    /// Per-request limits on input size and cost.
    pub limits: LimitsConfig,
    /// Logging.
    pub log: LogConfig,
}

/// HTTP server settings (`[server]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port to listen on.
    pub bind: String,
    /// When set, every route but `/healthz` and `/readyz` (and `/metrics` and the web UI when made public)
    /// requires `Authorization: Bearer KEY` (or `X-API-Key: KEY`).
    pub api_key: Option<String>,
    /// With a key set: whether `/metrics` answers without it.
    pub public_metrics: bool,
    /// With a key set: whether the web UI (`/`), `/docs` and `/openapi.json` answer without it (the page's own
    /// API calls still need the key).
    pub public_ui: bool,
    /// Host names (with or without `:port`) the server answers to; requests with another `Host` get 403
    /// `host_not_allowed` (against DNS rebinding). Empty: `localhost`, `127.0.0.1`, `[::1]` and the bind
    /// address's host. `*` allows any host.
    pub allowed_hosts: Vec<String>,
    /// Origins (`scheme://host[:port]`) allowed to call the API from a browser: CORS is answered for them and
    /// their state-changing requests pass the Origin check. Empty (the default): CORS off, only same-origin
    /// browser requests may change state.
    pub cors_origins: Vec<String>,
    /// Largest accepted request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Seconds a request may take until its response starts (503 `request_timeout` beyond; a stream, once
    /// started, is not cut).
    pub request_timeout_secs: u64,
    /// Seconds a client may take to send a request body (408 `body_timeout` beyond).
    pub body_timeout_secs: u64,
    /// Seconds a client may take to send a request's headers (the connection is closed beyond).
    pub header_timeout_secs: u64,
    /// Most connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Seconds a `DELETE /v1/documents/{id}` waits for the ingestion worker to finish indexing that document
    /// (409 `document_busy` beyond).
    pub delete_wait_secs: u64,
    /// Seconds to wait for in-flight requests at shutdown.
    pub shutdown_grace_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            api_key: None,
            public_metrics: false,
            public_ui: false,
            allowed_hosts: Vec::new(),
            cors_origins: Vec::new(),
            max_body_bytes: 64 * 1024 * 1024,
            request_timeout_secs: 300,
            body_timeout_secs: 60,
            header_timeout_secs: 10,
            max_connections: 1024,
            delete_wait_secs: 30,
            shutdown_grace_secs: 10,
        }
    }
}

/// Per-request limits (`[limits]`): each bounds what one request may cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Deepest nesting of JSON bodies and documents, HTML elements, PDF arrays and dictionaries, and Markdown
    /// block quotes and lists (`nesting_too_deep` beyond; JSON also stops at serde_json's own 127).
    pub max_nesting_depth: usize,
    /// Longest `query` (retrieve) or `question` (qa), in bytes (`query_too_long` beyond).
    pub max_query_bytes: usize,
    /// Most terms (whitespace-separated words) in a query or question (`too_many_terms` beyond).
    pub max_query_terms: usize,
    /// Most passages one question may gather: `top_k` times `iterations` (`too_many_passages` beyond).
    pub max_qa_passages: usize,
    /// Most inputs of one `/v1/embeddings` request (`too_many_inputs` beyond).
    pub max_embedding_inputs: usize,
    /// Most bytes of text, all inputs together, of one `/v1/embeddings` request (`input_too_long` beyond).
    pub max_embedding_bytes: usize,
    /// Longest prompt of `/v1/completions` or messages of `/v1/chat/completions`, in bytes (`prompt_too_long`
    /// beyond), checked before tokenising.
    pub max_prompt_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_nesting_depth: 128,
            max_query_bytes: 4096,
            max_query_terms: 256,
            max_qa_passages: 64,
            max_embedding_inputs: 2048,
            max_embedding_bytes: 1 << 20,
            max_prompt_bytes: 1 << 20,
        }
    }
}

/// Storage settings (`[storage]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Directory for the SQLite database and the indexes.
    pub data_dir: PathBuf,
    /// `postgres://...` to use PostgreSQL instead of the embedded SQLite file (also read from `DATABASE_URL`).
    pub database_url: Option<String>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            database_url: None,
        }
    }
}

/// Retrieval settings (`[retrieval]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrievalConfig {
    /// `top_k` when a request gives none.
    pub default_top_k: usize,
    /// Largest `top_k` a request may ask for.
    pub max_top_k: usize,
    /// Reciprocal-rank fusion for the `hybrid` method.
    pub hybrid: HybridConfig,
}

impl Default for RetrievalConfig {
    fn default() -> Self {
        Self {
            default_top_k: 5,
            max_top_k: 200,
            hybrid: HybridConfig::default(),
        }
    }
}

/// Embedding settings (`[embedding]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddingConfig {
    /// Embed passages at ingestion and offer `dense`, `hybrid` and `/v1/embeddings`. When false, only BM25 runs.
    pub enabled: bool,
    /// Hugging Face model directory (`config.json`, `model.safetensors`, `tokenizer.json`); `make setup` fetches
    /// all-MiniLM-L6-v2 here.
    pub model_dir: PathBuf,
    /// Texts per forward pass.
    pub batch_size: usize,
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            model_dir: PathBuf::from("models/all-MiniLM-L6-v2"),
            batch_size: 32,
        }
    }
}

/// Which vector store holds passage vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum VectorBackend {
    /// Embedded qdrant-edge in `DATA_DIR/vectors`.
    #[default]
    Edge,
    /// A Qdrant server (`[vectors.qdrant]`, or `QDRANT_URL`).
    Qdrant,
}

/// Vector store settings (`[vectors]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct VectorsConfig {
    /// `edge` (embedded, default) or `qdrant` (remote).
    pub backend: VectorBackend,
    /// The remote Qdrant, used when `backend = "qdrant"`.
    pub qdrant: RemoteQdrantConfig,
}

/// Question answering and attribution (`[qa]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QaConfig {
    /// Coalition prompts scored per engine call in the joint attribution mode (each call's sequences are released
    /// before the next); 1 scores every coalition prompt alone and in full, the separate-scoring baseline.
    pub coalitions_per_call: usize,
    /// Random ablations the `contextcite` estimator fits its surrogate to (2 to 4096).
    pub contextcite_ablations: usize,
}

impl Default for QaConfig {
    fn default() -> Self {
        Self {
            coalitions_per_call: 16,
            contextcite_ablations: crate::attribution::contextcite::DEFAULT_ABLATIONS,
        }
    }
}

/// How an alias's environment value becomes its key's value.
type AliasValue = fn(&str) -> figment::value::Value;

/// The older performance variables the device scripts set: documented aliases of typed keys, below the
/// `ENGRAM__...` variables (which win). Each maps the value to its key's value.
const ALIASES: &[(&str, &str, AliasValue)] = &[
    ("ENGRAM_GEMV", "engine.cuda.gemv_rows", |v| {
        if v == "0" {
            0.into()
        } else {
            DEFAULT_GEMV_ROWS.into()
        }
    }),
    ("ENGRAM_GEMV_ROWS", "engine.cuda.gemv_rows", alias_value),
    ("ENGRAM_GEMM_TUNE", "engine.cuda.gemm_tune", |v| {
        (v != "0").into()
    }),
    ("ENGRAM_PDL", "engine.cuda.pdl", |v| (v != "0").into()),
    (
        "ENGRAM_DECODE_ATTN",
        "engine.cuda.decode_attention",
        alias_value,
    ),
    (
        "ENGRAM_DECODE_MIN_TILES",
        "engine.cuda.decode_min_tiles",
        alias_value,
    ),
    (
        "ENGRAM_DECODE_BLOCKS_PER_SM",
        "engine.cuda.decode_blocks_per_sm",
        alias_value,
    ),
    (
        "ENGRAM_KERNEL_CACHE",
        "engine.cuda.kernel_cache",
        alias_value,
    ),
    (
        "ENGRAM_QA_COALITIONS_PER_CALL",
        "qa.coalitions_per_call",
        alias_value,
    ),
];

/// `engine.cuda.gemv_rows`'s default, what `ENGRAM_GEMV` set to anything but 0 means.
const DEFAULT_GEMV_ROWS: usize = 3;

/// An environment value as a typed value: a number or boolean where it parses as one, else the string.
fn alias_value(value: &str) -> figment::value::Value {
    value
        .trim()
        .parse()
        .unwrap_or_else(|_| figment::value::Value::from(value.to_string()))
}

/// Where compiled CUDA kernels are cached unless `engine.cuda.kernel_cache` says otherwise:
/// `$XDG_CACHE_HOME/engram/kernels`, else `~/.cache/engram/kernels`.
fn default_kernel_cache(var: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let base = var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("engram").join("kernels"))
}

/// The environment variable naming a directory whose `index.html` the server reads at every `GET /` instead of
/// the embedded page (for work on the page itself).
pub const WEB_DIR_ENV: &str = "ENGRAM_WEB_DIR";

/// The directory [`WEB_DIR_ENV`] names now, if any: read at each request, so an edit needs no restart.
#[allow(clippy::disallowed_methods)]
pub fn web_dir_override() -> Option<PathBuf> {
    std::env::var_os(WEB_DIR_ENV).map(PathBuf::from)
}

/// Logging settings (`[log]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// One JSON object per line instead of human-readable lines.
    pub json: bool,
    /// Filter in `RUST_LOG` syntax, e.g. `info` or `engram=debug,tower_http=info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            json: false,
            level: "info".into(),
        }
    }
}

impl Config {
    /// Merges the layers. `file` is the TOML file to read (`engram.toml` in the working directory when `None`; a
    /// missing default file is fine, a missing named file is an error). `env` is the environment to read, so tests
    /// need not touch the process's. `overrides` come from flags and win over everything.
    pub fn load(
        file: Option<&Path>,
        env: &[(String, String)],
        overrides: Figment,
    ) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError::Invalid {
                        key: "--config",
                        message: format!("configuration file {} does not exist", path.display()),
                    });
                }
                fig = fig.merge(Toml::file_exact(path));
            }
            None if Path::new("engram.toml").exists() => {
                fig = fig.merge(Toml::file_exact("engram.toml"))
            }
            None => {}
        }
        let var = |name: &str| {
            env.iter()
                .find(|(k, v)| k == name && !v.is_empty())
                .map(|(_, v)| v.clone())
        };
        for (name, key, value) in ALIASES {
            if let Some(v) = var(name) {
                fig = fig.merge(Serialized::global(key, value(&v)));
            }
        }
        for (key, value) in env.iter().filter(|(k, _)| k.starts_with("ENGRAM__")) {
            let path = key["ENGRAM__".len()..]
                .to_ascii_lowercase()
                .replace("__", ".");
            let parsed: figment::value::Value = value
                .parse()
                .unwrap_or_else(|_| figment::value::Value::from(value.clone()));
            fig = fig.merge(Serialized::global(&path, parsed));
        }
        if let Some(url) = var("DATABASE_URL") {
            fig = fig.merge(Serialized::global("storage.database_url", url));
        }
        if let Some(url) = var("QDRANT_URL") {
            fig = fig
                .merge(Serialized::global("vectors.backend", "qdrant"))
                .merge(Serialized::global("vectors.qdrant.url", url));
        }
        if let Some(key) = var("QDRANT_API_KEY") {
            fig = fig.merge(Serialized::global("vectors.qdrant.api_key", key));
        }
        let mut config: Config = fig.merge(overrides).extract()?;
        if config.engine.cuda.kernel_cache.is_none() {
            config.engine.cuda.kernel_cache = default_kernel_cache(var);
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and formats, naming the key that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_server()?;
        self.validate_limits()?;
        self.validate_retrieval()?;
        self.validate_engine()?;
        self.graph
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid { key, message })?;
        self.validate_vectors()
    }

    /// `[server]` and `[storage]`.
    fn validate_server(&self) -> Result<(), ConfigError> {
        self.server
            .bind
            .parse::<SocketAddr>()
            .map_err(|e| ConfigError::Invalid {
                key: "server.bind",
                message: format!("'{}' is not ADDR:PORT ({e})", self.server.bind),
            })?;
        if self.server.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid {
                key: "server.max_body_bytes",
                message: format!("must be at least 1024 (got {})", self.server.max_body_bytes),
            });
        }
        if matches!(&self.server.api_key, Some(k) if k.trim().is_empty()) {
            return Err(ConfigError::Invalid {
                key: "server.api_key",
                message: "must not be empty; leave it unset to disable authentication".into(),
            });
        }
        if let Some(url) = &self.storage.database_url {
            if !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
            {
                return Err(ConfigError::Invalid {
                    key: "storage.database_url",
                    message: format!(
                        "'{}' is neither postgres://... nor sqlite:...",
                        crate::store::redact(url)
                    ),
                });
            }
        }
        Ok(())
    }

    /// `[limits]`, and the `[server]` timeouts and connection limit.
    fn validate_limits(&self) -> Result<(), ConfigError> {
        let (s, l) = (&self.server, &self.limits);
        for (key, v, lo, hi) in [
            (
                "server.request_timeout_secs",
                s.request_timeout_secs as usize,
                1,
                86_400,
            ),
            (
                "server.body_timeout_secs",
                s.body_timeout_secs as usize,
                1,
                86_400,
            ),
            (
                "server.header_timeout_secs",
                s.header_timeout_secs as usize,
                1,
                3_600,
            ),
            ("server.max_connections", s.max_connections, 1, 1 << 20),
            (
                "server.delete_wait_secs",
                s.delete_wait_secs as usize,
                0,
                3_600,
            ),
            ("limits.max_nesting_depth", l.max_nesting_depth, 2, 100_000),
            ("limits.max_query_bytes", l.max_query_bytes, 16, 1 << 30),
            ("limits.max_query_terms", l.max_query_terms, 1, 1 << 24),
            ("limits.max_qa_passages", l.max_qa_passages, 1, 1 << 16),
            (
                "limits.max_embedding_inputs",
                l.max_embedding_inputs,
                1,
                1 << 20,
            ),
            (
                "limits.max_embedding_bytes",
                l.max_embedding_bytes,
                16,
                1 << 30,
            ),
            ("limits.max_prompt_bytes", l.max_prompt_bytes, 16, 1 << 30),
        ] {
            if v < lo || v > hi {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("must be between {lo} and {hi}, got {v}"),
                });
            }
        }
        for origin in &s.cors_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.ends_with('/')
            {
                return Err(ConfigError::Invalid {
                    key: "server.cors_origins",
                    message: format!("'{origin}' is not an origin like https://app.example.com"),
                });
            }
        }
        Ok(())
    }

    /// `[chunking]` and `[retrieval]`.
    fn validate_retrieval(&self) -> Result<(), ConfigError> {
        self.chunking
            .validate()
            .map_err(|message| ConfigError::Invalid {
                key: "chunking",
                message,
            })?;
        self.retrieval
            .hybrid
            .validate()
            .map_err(|message| ConfigError::Invalid {
                key: "retrieval.hybrid",
                message,
            })?;
        if self.retrieval.max_top_k == 0 {
            return Err(ConfigError::Invalid {
                key: "retrieval.max_top_k",
                message: "must be at least 1".into(),
            });
        }
        if self.retrieval.default_top_k == 0
            || self.retrieval.default_top_k > self.retrieval.max_top_k
        {
            return Err(ConfigError::Invalid {
                key: "retrieval.default_top_k",
                message: format!(
                    "must be between 1 and retrieval.max_top_k ({}), got {}",
                    self.retrieval.max_top_k, self.retrieval.default_top_k
                ),
            });
        }
        Ok(())
    }

    /// `[engine]` (with its speculative, CUDA and attention sections) and `[qa]`.
    fn validate_engine(&self) -> Result<(), ConfigError> {
        let e = &self.engine;
        if let Err(err) = e.device.parse::<engram_engine::DeviceSpec>() {
            return Err(ConfigError::Invalid {
                key: "engine.device",
                message: err.to_string(),
            });
        }
        for (key, v, lo, hi) in [
            ("engine.block_size", e.block_size, 1, 1024),
            ("engine.kv_cache_mib", e.kv_cache_mib, 1, 1 << 20),
            ("engine.token_budget", e.token_budget, 1, 1 << 20),
            ("engine.max_sequences", e.max_sequences, 1, 1 << 16),
            ("engine.max_waiting", e.max_waiting, 1, 1 << 20),
        ] {
            if v < lo || v > hi {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("must be between {lo} and {hi}, got {v}"),
                });
            }
        }
        e.speculative
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid { key, message })?;
        e.cuda.validate().map_err(|message| ConfigError::Invalid {
            key: "engine.cuda",
            message,
        })?;
        e.attention.validate().map_err(|err| ConfigError::Invalid {
            key: "engine.attention",
            message: err.0,
        })?;
        if self.qa.coalitions_per_call == 0 {
            return Err(ConfigError::Invalid {
                key: "qa.coalitions_per_call",
                message: "must be at least 1".into(),
            });
        }
        if !(2..=4096).contains(&self.qa.contextcite_ablations) {
            return Err(ConfigError::Invalid {
                key: "qa.contextcite_ablations",
                message: format!(
                    "must be between 2 and 4096, got {}",
                    self.qa.contextcite_ablations
                ),
            });
        }
        Ok(())
    }

    /// `[embedding]` and `[vectors]`.
    fn validate_vectors(&self) -> Result<(), ConfigError> {
        if self.embedding.batch_size == 0 || self.embedding.batch_size > 1024 {
            return Err(ConfigError::Invalid {
                key: "embedding.batch_size",
                message: format!(
                    "must be between 1 and 1024, got {}",
                    self.embedding.batch_size
                ),
            });
        }
        if self.vectors.backend == VectorBackend::Qdrant {
            let q = &self.vectors.qdrant;
            if !(q.url.starts_with("http://") || q.url.starts_with("https://")) {
                return Err(ConfigError::Invalid {
                    key: "vectors.qdrant.url",
                    message: format!(
                        "'{}' must start with http:// or https:// (the gRPC port, usually 6334)",
                        q.url
                    ),
                });
            }
            if q.collection.trim().is_empty() {
                return Err(ConfigError::Invalid {
                    key: "vectors.qdrant.collection",
                    message: "must not be empty".into(),
                });
            }
            if q.shard_number == 0 || q.replication_factor == 0 {
                return Err(ConfigError::Invalid {
                    key: "vectors.qdrant.shard_number",
                    message: "shard_number and replication_factor must be at least 1".into(),
                });
            }
        }
        Ok(())
    }

    /// The bind address, parsed (valid after [`Config::validate`]).
    pub fn bind_addr(&self) -> SocketAddr {
        self.server
            .bind
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("engram.toml");
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "[server]\nbind = \"0.0.0.0:9000\"\nmax_body_bytes = 4096\n[chunking]\nmax_chars = 500\noverlap_chars = 50\n",
        );
        let cfg = Config::load(
            Some(&file),
            &env(&[
                ("ENGRAM__SERVER__BIND", "127.0.0.1:9100"),
                ("ENGRAM__RETRIEVAL__DEFAULT_TOP_K", "7"),
                ("DATABASE_URL", "postgres://u@h/db"),
                ("UNRELATED", "x"),
            ]),
            Figment::from(Serialized::global("server.bind", "127.0.0.1:9200")),
        )
        .unwrap();
        assert_eq!(cfg.server.bind, "127.0.0.1:9200"); // flag beats env beats file
        assert_eq!(cfg.server.max_body_bytes, 4096); // file beats default
        assert_eq!(cfg.retrieval.default_top_k, 7); // env beats default
        assert_eq!(cfg.chunking.max_chars, 500);
        assert_eq!(
            cfg.storage.database_url.as_deref(),
            Some("postgres://u@h/db")
        );
        assert_eq!(cfg.storage.data_dir, PathBuf::from("data"));
        assert_eq!(cfg.vectors.backend, VectorBackend::Edge);
    }

    #[test]
    fn qdrant_url_selects_the_remote_store() {
        let cfg = Config::load(
            None,
            &env(&[
                ("QDRANT_URL", "http://qdrant:6334"),
                ("QDRANT_API_KEY", "k"),
            ]),
            Figment::new(),
        )
        .unwrap();
        assert_eq!(cfg.vectors.backend, VectorBackend::Qdrant);
        assert_eq!(cfg.vectors.qdrant.url, "http://qdrant:6334");
        assert_eq!(cfg.vectors.qdrant.api_key.as_deref(), Some("k"));
        let err = Config::load(
            None,
            &env(&[
                ("ENGRAM__VECTORS__BACKEND", "qdrant"),
                ("ENGRAM__VECTORS__QDRANT__URL", "qdrant:6334"),
            ]),
            Figment::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("vectors.qdrant.url"), "{err}");
    }

    #[test]
    fn engine_device_is_validated() {
        let cfg = Config::load(
            None,
            &env(&[("ENGRAM__ENGINE__DEVICE", "cuda:1")]),
            Figment::new(),
        )
        .unwrap();
        assert_eq!(cfg.engine.device, "cuda:1");
        assert_eq!(
            Config::load(None, &[], Figment::new())
                .unwrap()
                .engine
                .device,
            "auto"
        );
        let err = Config::load(
            None,
            &env(&[("ENGRAM__ENGINE__DEVICE", "tpu")]),
            Figment::new(),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("engine.device") && msg.contains("cuda:N"),
            "{msg}"
        );
    }

    #[test]
    fn engine_attention_reads_from_the_file_and_the_environment() {
        use engram_engine::{AttentionMode, HipParams};
        let dense = Config::load(None, &[], Figment::new()).unwrap();
        assert_eq!(dense.engine.attention, AttentionMode::Dense {});
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "[engine.attention]\nkind = \"hip\"\ntop_k = 16\nmin_context = 2048\n",
        );
        let cfg = Config::load(Some(&file), &[], Figment::new()).unwrap();
        assert_eq!(
            cfg.engine.attention,
            AttentionMode::Hip(HipParams {
                top_k: 16,
                min_context: 2048,
                ..HipParams::default()
            })
        );
        let cfg = Config::load(
            None,
            &env(&[
                ("ENGRAM__ENGINE__ATTENTION__KIND", "hip"),
                ("ENGRAM__ENGINE__ATTENTION__BLOCK_K", "32"),
            ]),
            Figment::new(),
        )
        .unwrap();
        assert_eq!(cfg.engine.attention.hip().unwrap().block_k, 32);
        // Bad parameters, unknown kinds and unknown fields name the key.
        let file = write(
            dir.path(),
            "[engine.attention]\nkind = \"hip\"\ntop_k = 0\n",
        );
        let err = Config::load(Some(&file), &[], Figment::new()).unwrap_err();
        assert!(
            err.to_string().contains("engine.attention") && err.to_string().contains("top_k"),
            "{err}"
        );
        for body in [
            "[engine.attention]\nkind = \"sparse\"\n",
            "[engine.attention]\nkind = \"hip\"\ntopk = 8\n",
        ] {
            let file = write(dir.path(), body);
            let err = Config::load(Some(&file), &[], Figment::new()).unwrap_err();
            assert!(err.to_string().contains("attention"), "{body}: {err}");
        }
    }

    #[test]
    fn lists_and_limits_come_from_the_environment() {
        let cfg = Config::load(
            None,
            &env(&[
                (
                    "ENGRAM__SERVER__ALLOWED_HOSTS",
                    r#"["engram", "localhost", "127.0.0.1", "[::1]"]"#,
                ),
                ("ENGRAM__LIMITS__MAX_QUERY_TERMS", "32"),
            ]),
            Figment::new(),
        )
        .unwrap();
        assert_eq!(
            cfg.server.allowed_hosts,
            ["engram", "localhost", "127.0.0.1", "[::1]"]
        );
        assert_eq!(cfg.limits.max_query_terms, 32);
        assert_eq!(cfg.limits.max_nesting_depth, 128);
        let err = Config::load(
            None,
            &env(&[("ENGRAM__LIMITS__MAX_NESTING_DEPTH", "0")]),
            Figment::new(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("limits.max_nesting_depth"),
            "{err}"
        );
        let err = Config::load(
            None,
            &env(&[("ENGRAM__SERVER__CORS_ORIGINS", r#"["app.example"]"#)]),
            Figment::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("server.cors_origins"), "{err}");
    }

    #[test]
    fn errors_name_the_bad_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "[server]\nbind = \"nonsense\"\n");
        let err = Config::load(Some(&file), &[], Figment::new()).unwrap_err();
        assert!(err.to_string().contains("server.bind"), "{err}");

        let file = write(dir.path(), "[server]\nbnid = \"127.0.0.1:1\"\n");
        let err = Config::load(Some(&file), &[], Figment::new()).unwrap_err();
        assert!(err.to_string().contains("bnid"), "{err}");

        let err = Config::load(
            None,
            &env(&[("ENGRAM__SERVER__MAX_BODY_BYTES", "lots")]),
            Figment::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("max_body_bytes"), "{err}");

        let err = Config::load(
            None,
            &env(&[("ENGRAM__RETRIEVAL__DEFAULT_TOP_K", "0")]),
            Figment::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("retrieval.default_top_k"), "{err}");

        let err = Config::load(
            None,
            &env(&[("ENGRAM__CHUNKING__OVERLAP_CHARS", "5000")]),
            Figment::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("overlap_chars"), "{err}");

        let missing = dir.path().join("nope.toml");
        assert!(Config::load(Some(&missing), &[], Figment::new()).is_err());
    }
}
