//! Test harness: a real Engram app on SQLite (temp dir) or PostgreSQL (127.0.0.1:5432 database `test`, one schema
//! per test), driven through the router.
#![allow(dead_code)]
#![allow(clippy::disallowed_methods)] // test and benchmark harnesses read their fixtures' locations from the environment

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use engram::app::App;
use engram::config::Config;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Runs an async test body once per backend: `both_backends!(name, body_fn);`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body($crate::common::Db::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$body($crate::common::Db::Postgres).await
            }
        }
    };
}

/// PostgreSQL server the tests use (never skipped: an unreachable server fails the test).
pub fn postgres_base_url() -> String {
    std::env::var("ENGRAM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh, empty schema in the test database; its URL puts it first on the search path.
pub async fn fresh_postgres_url() -> (String, String) {
    sqlx::any::install_default_drivers();
    let base = postgres_base_url();
    let admin = sqlx::AnyPool::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {base} is required by the test suite: {e}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Drop schemas that earlier crashed runs left behind (older than an hour).
    let stale: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'engram_t_%'",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    for s in stale {
        let ts: u64 = s
            .split('_')
            .nth(2)
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        if ts + 3600 < now {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {s} CASCADE"))
                .execute(&admin)
                .await;
        }
    }
    let schema = format!("engram_t_{now}_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    (
        format!("{base}{sep}options=-c%20search_path%3D{schema}"),
        schema,
    )
}

/// A running app: router, worker, and the resources to clean up.
pub struct TestApp {
    pub app: Arc<App>,
    pub router: Router,
    pub dir: tempfile::TempDir,
    pub db: Db,
    pub database_url: Option<String>,
    schema: Option<String>,
    worker: CancellationToken,
}

impl TestApp {
    /// Starts an app on `db` with the default config, adjusted by `tweak`.
    pub async fn start(db: Db, tweak: impl FnOnce(&mut Config)) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let (database_url, schema) = match db {
            Db::Sqlite => (None, None),
            Db::Postgres => {
                let (url, schema) = fresh_postgres_url().await;
                (Some(url), Some(schema))
            }
        };
        Self::start_in(db, dir, database_url, schema, tweak).await
    }

    /// Starts an app over an existing data dir and database (to test restarts).
    pub async fn start_in(
        db: Db,
        dir: tempfile::TempDir,
        database_url: Option<String>,
        schema: Option<String>,
        tweak: impl FnOnce(&mut Config),
    ) -> TestApp {
        let mut config = Config::default();
        config.storage.data_dir = dir.path().to_path_buf();
        config.storage.database_url = database_url.clone();
        // Embeddings only where a test asks for them (`c.embedding.enabled = true`): the model is slow in debug.
        config.embedding.enabled = false;
        tweak(&mut config);
        config.validate().unwrap();
        let app = App::open(config).await.unwrap();
        if let Some(schema) = &schema {
            let current: String = sqlx::query_scalar("SELECT current_schema()::text")
                .fetch_one(app.store.pool())
                .await
                .unwrap();
            assert_eq!(
                &current, schema,
                "each PostgreSQL test runs in its own schema"
            );
        }
        let worker = CancellationToken::new();
        {
            let app = app.clone();
            let token = worker.clone();
            tokio::spawn(async move {
                app.pipeline.index_pending().await.unwrap();
                app.set_ready();
                app.pipeline.clone().run_worker(token).await;
            });
        }
        let router = engram::server::router(app.clone());
        TestApp {
            app,
            router,
            dir,
            db,
            database_url,
            schema,
            worker,
        }
    }

    /// Stops the worker and closes the database, keeping the data dir and schema (for a restart).
    pub async fn stop(self) -> (tempfile::TempDir, Option<String>, Option<String>) {
        self.worker.cancel();
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.app.store.close().await;
        (self.dir, self.database_url, self.schema)
    }

    /// Stops and drops the PostgreSQL schema.
    pub async fn finish(self) {
        let (_dir, _url, schema) = self.stop().await;
        if let Some(schema) = schema {
            let admin = sqlx::AnyPool::connect(&postgres_base_url()).await.unwrap();
            sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(&admin)
                .await
                .unwrap();
            admin.close().await;
        }
    }

    /// Sends a request through the router; returns status, headers and the body as JSON (or a JSON string).
    pub async fn send(&self, req: Request<Body>) -> (StatusCode, HeaderMap, Value) {
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, headers, body)
    }

    pub async fn get(&self, uri: &str) -> (StatusCode, Value) {
        let (s, _, b) = self
            .send(Request::get(uri).body(Body::empty()).unwrap())
            .await;
        (s, b)
    }

    pub async fn post_json(&self, uri: &str, body: &Value) -> (StatusCode, Value) {
        let (s, _, b) = self
            .send(
                Request::post(uri)
                    .header("content-type", "application/json")
                    .body(Body::from(body.to_string()))
                    .unwrap(),
            )
            .await;
        (s, b)
    }

    pub async fn delete(&self, uri: &str) -> (StatusCode, Value) {
        let (s, _, b) = self
            .send(Request::delete(uri).body(Body::empty()).unwrap())
            .await;
        (s, b)
    }

    /// Polls a job until it is no longer queued or running; returns its final record.
    pub async fn wait_job(&self, job_id: &str) -> Value {
        // Generous: embedding the 1,890 MuSiQue passages in a debug build takes about a minute on 2 cores.
        let deadline = std::time::Instant::now() + Duration::from_secs(600);
        while std::time::Instant::now() < deadline {
            let (status, job) = self.get(&format!("/v1/jobs/{job_id}")).await;
            assert_eq!(status, StatusCode::OK, "{job}");
            let s = job["status"].as_str().unwrap().to_string();
            if s != "queued" && s != "running" {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("job {job_id} did not finish");
    }

    /// Posts documents and waits for the job; returns the job record.
    pub async fn ingest(&self, body: &Value) -> Value {
        let (status, accepted) = self.post_json("/v1/documents", body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
        self.wait_job(accepted["job_id"].as_str().unwrap()).await
    }

    /// Retrieves with BM25.
    pub async fn retrieve(&self, query: &str, top_k: usize) -> Vec<Value> {
        let (status, body) = self
            .post_json(
                "/v1/retrieve",
                &serde_json::json!({"query": query, "top_k": top_k, "method": "bm25"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["passages"].as_array().unwrap().clone()
    }
}

/// A multipart/form-data body with `(field, file name, bytes)` parts; returns (content type, body).
pub fn multipart(parts: &[(&str, &str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "engram-test-boundary-7d1f";
    let mut body = Vec::new();
    for (field, file, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        body.extend_from_slice(
            format!("Content-Disposition: form-data; name=\"{field}\"; filename=\"{file}\"\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(b"Content-Type: application/octet-stream\r\n\r\n");
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Path of a test fixture.
pub fn fixture(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The MuSiQue data directory (`ENGRAM_MUSIQUE_DIR`, default `../shared/data/musique`).
pub fn musique_dir() -> std::path::PathBuf {
    std::env::var("ENGRAM_MUSIQUE_DIR")
        .map(Into::into)
        .unwrap_or_else(|_| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/musique")
        })
}

/// The embedding model directory (`ENGRAM_EMBED_MODEL_DIR`, default `models/all-MiniLM-L6-v2`, fetched by
/// `make setup`).
pub fn model_dir() -> std::path::PathBuf {
    std::env::var("ENGRAM_EMBED_MODEL_DIR")
        .map(Into::into)
        .unwrap_or_else(|_| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2")
        })
}

/// A GGUF model in the model cache (`ENGRAM_MODEL_CACHE`, default `~/.cache/engram/models`, filled by
/// `scripts/fetch-model.sh NAME`), `None` when it has not been fetched.
pub fn cached_llm(file: &str) -> Option<std::path::PathBuf> {
    let cache = std::env::var("ENGRAM_MODEL_CACHE")
        .map(std::path::PathBuf::from)
        .or_else(|_| {
            std::env::var("HOME").map(|h| std::path::Path::new(&h).join(".cache/engram/models"))
        })
        .ok()?;
    let path = cache.join(file);
    path.is_file().then_some(path)
}

/// A plain HTTP/1.1 GET; returns (status, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

/// A port free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
