//! Hostile input and load, through the router: inputs nested to crash a parser answer 4xx `nesting_too_deep` and
//! store nothing, a panicking handler answers 500 with the request id and the server goes on, and every request's
//! cost is bounded by a limit that answers 4xx (or 429/503 with `Retry-After`).

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::Router;
use common::{multipart, Db, TestApp};
use engram::config::ServerConfig;
use serde_json::{json, Value};
use tower::ServiceExt;

async fn upload(t: &TestApp, name: &str, bytes: &[u8]) -> (StatusCode, Value) {
    let (ct, body) = multipart(&[("file", name, bytes)]);
    let (s, _, b) = t
        .send(
            Request::post("/v1/documents")
                .header("content-type", ct)
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
    (s, b)
}

async fn raw_post(t: &TestApp, uri: &str, body: String) -> (StatusCode, Value) {
    let (s, _, b) = t
        .send(
            Request::post(uri)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
    (s, b)
}

/// The server still answers, and nothing was stored.
async fn alive_and_empty(t: &TestApp) {
    let (s, b) = t.get("/healthz").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(t.app.store.counts().await.unwrap(), (0, 0));
    let (_, page) = t.get("/v1/documents").await;
    assert_eq!(page["total"], 0);
}

fn assert_code(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
}

/// A PDF whose page dictionary holds an array nested `depth` deep.
fn deep_pdf(depth: usize) -> Vec<u8> {
    let mut pdf = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n".to_vec();
    pdf.extend_from_slice(b"2 0 obj\n<< /Type /Pages /Kids [3 0 R] /Count 1 >>\nendobj\n");
    pdf.extend_from_slice(b"3 0 obj\n<< /Type /Page /Parent 2 0 R /Annots ");
    pdf.extend(std::iter::repeat_n(b'[', depth));
    pdf.extend(std::iter::repeat_n(b']', depth));
    pdf.extend_from_slice(b" >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n");
    pdf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_uploads_are_refused() {
    let t = TestApp::start(Db::Sqlite, |_| {}).await;
    let html = format!(
        "<html><body>{}deep{}</body></html>",
        "<div>".repeat(20_000),
        "</div>".repeat(20_000)
    );
    let (s, b) = upload(&t, "deep.html", html.as_bytes()).await;
    assert_code(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "nesting_too_deep");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deep.html"),
        "{b}"
    );

    let (s, b) = upload(&t, "deep.pdf", &deep_pdf(1_000)).await;
    assert_code(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "nesting_too_deep");

    let deep_json = format!(
        "[{{\"title\": \"t\", \"text\": \"x\", \"metadata\": {{\"a\": {}1{}}}}}]",
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    let (s, b) = upload(&t, "deep.json", deep_json.as_bytes()).await;
    assert_code(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "nesting_too_deep");
    let jsonl = format!(
        "{{\"text\": \"fine\"}}\n{{\"text\": \"x\", \"m\": {}{}}}\n",
        "{\"a\":".repeat(200),
        "}".repeat(200)
    );
    let (s, b) = upload(&t, "deep.jsonl", jsonl.as_bytes()).await;
    assert_code(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "nesting_too_deep");

    let quotes = format!("# Deep\n\n{} quoted\n", "> ".repeat(10_000));
    let (s, b) = upload(&t, "deep.md", quotes.as_bytes()).await;
    assert_code(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "nesting_too_deep");
    let list: String = (0..1_000)
        .map(|i| format!("{}- item {i}\n", "  ".repeat(i)))
        .collect();
    let (s, b) = upload(&t, "list.md", list.as_bytes()).await;
    assert_code(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "nesting_too_deep");

    alive_and_empty(&t).await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nesting_within_the_limit_is_accepted() {
    let t = TestApp::start(Db::Sqlite, |c| c.limits.max_nesting_depth = 64).await;
    let html = format!("{}nested text{}", "<div>".repeat(60), "</div>".repeat(60));
    let (s, b) = upload(&t, "ok.html", html.as_bytes()).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let html = format!("{}nested text{}", "<div>".repeat(65), "</div>".repeat(65));
    let (s, b) = upload(&t, "deep.html", html.as_bytes()).await;
    assert_code(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "nesting_too_deep");
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_bodies_are_refused() {
    let t = TestApp::start(Db::Sqlite, |_| {}).await;
    let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let bodies = [
        (
            "/v1/documents",
            format!(
                "{{\"title\": \"t\", \"text\": \"x\", \"metadata\": {{\"m\": {}}}}}",
                deep(100_000)
            ),
        ),
        (
            "/v1/retrieve",
            format!("{{\"query\": \"q\", \"x\": {}}}", deep(1_000)),
        ),
        ("/v1/qa", format!("{{\"question\": {}}}", deep(129))),
        ("/v1/embeddings", format!("{{\"input\": {}}}", deep(50_000))),
        (
            "/v1/chat/completions",
            format!("{{\"messages\": {}}}", deep(50_000)),
        ),
        ("/v1/completions", deep(50_000)),
    ];
    for (uri, body) in bodies {
        let (s, b) = raw_post(&t, uri, body).await;
        assert_code(s, &b, StatusCode::BAD_REQUEST, "nesting_too_deep");
    }
    alive_and_empty(&t).await;
    t.finish().await;
}

async fn panics(_: axum::extract::Request) -> &'static str {
    panic!("a handler bug")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_answers_500_with_the_request_id() {
    let routes = Router::new()
        .route("/boom", get(panics))
        .route("/fine", get(|| async { "fine" }));
    let router = engram::server::protect(routes, &ServerConfig::default());
    let res = router
        .clone()
        .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let id = res.headers()["x-request-id"].to_str().unwrap().to_string();
    let bytes = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["error"]["code"], "internal_error", "{body}");
    assert_eq!(body["error"]["type"], "server_error", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains(&id),
        "{body} names {id}"
    );
    let res = router
        .oneshot(Request::get("/fine").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "the router goes on serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_input_still_loads() {
    let t = TestApp::start(Db::Sqlite, |_| {}).await;
    let (s, b) = t
        .post_json(
            "/v1/documents",
            &json!({"title": "Fine", "text": "An ordinary document.", "metadata": {"a": [[1, 2], {"b": {}}]}}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let job = t.wait_job(b["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "completed", "{job}");
    t.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Bounded cost

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_over_the_limits_are_refused() {
    let t = TestApp::start(Db::Sqlite, |c| {
        c.limits.max_query_bytes = 64;
        c.limits.max_query_terms = 4;
        c.limits.max_qa_passages = 8;
    })
    .await;
    let long = "x".repeat(65);
    let (s, b) = t.post_json("/v1/retrieve", &json!({"query": long})).await;
    assert_code(s, &b, StatusCode::BAD_REQUEST, "query_too_long");
    assert_eq!(b["error"]["param"], "query");
    let (s, b) = t
        .post_json("/v1/retrieve", &json!({"query": "one two three four five"}))
        .await;
    assert_code(s, &b, StatusCode::BAD_REQUEST, "too_many_terms");
    let (s, b) = t
        .post_json("/v1/retrieve", &json!({"query": "one two three four"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");

    let (s, b) = t.post_json("/v1/qa", &json!({"question": long})).await;
    assert_code(s, &b, StatusCode::BAD_REQUEST, "query_too_long");
    assert_eq!(b["error"]["param"], "question");
    let (s, b) = t
        .post_json("/v1/qa", &json!({"question": "a b c d e f"}))
        .await;
    assert_code(s, &b, StatusCode::BAD_REQUEST, "too_many_terms");
    let (s, b) = t
        .post_json(
            "/v1/qa",
            &json!({"question": "who?", "top_k": 5, "iterations": 2}),
        )
        .await;
    assert_code(s, &b, StatusCode::BAD_REQUEST, "too_many_passages");
    let (s, b) = t
        .post_json(
            "/v1/qa",
            &json!({"question": "who?", "top_k": 4, "iterations": 2}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedding_inputs_over_the_limits_are_refused() {
    let t = TestApp::start(Db::Sqlite, |c| {
        c.limits.max_embedding_inputs = 2;
        c.limits.max_embedding_bytes = 32;
    })
    .await;
    let (s, b) = t
        .post_json("/v1/embeddings", &json!({"input": ["a", "b", "c"]}))
        .await;
    assert_code(s, &b, StatusCode::BAD_REQUEST, "too_many_inputs");
    let (s, b) = t
        .post_json(
            "/v1/embeddings",
            &json!({"input": ["x".repeat(20), "y".repeat(20)]}),
        )
        .await;
    assert_code(s, &b, StatusCode::BAD_REQUEST, "input_too_long");
    let (s, b) = t
        .post_json("/v1/embeddings", &json!({"input": ["fine"]}))
        .await;
    assert_code(
        s,
        &b,
        StatusCode::SERVICE_UNAVAILABLE,
        "embeddings_disabled",
    );
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_over_the_limit_are_refused_before_tokenising() {
    let t = TestApp::start(Db::Sqlite, |c| {
        c.engine.model = Some("synthetic:tiny".into());
        c.limits.max_prompt_bytes = 100;
    })
    .await;
    let (s, b) = t
        .post_json(
            "/v1/completions",
            &json!({"prompt": "p".repeat(101), "max_tokens": 1}),
        )
        .await;
    assert_code(s, &b, StatusCode::BAD_REQUEST, "prompt_too_long");
    assert_eq!(b["error"]["param"], "prompt");
    let (s, b) = t
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "m".repeat(101)}], "max_tokens": 1}),
        )
        .await;
    assert_code(s, &b, StatusCode::BAD_REQUEST, "prompt_too_long");
    assert_eq!(b["error"]["param"], "messages");
    let (s, b) = t
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "wizard", "content": "hi"}], "max_tokens": 1}),
        )
        .await;
    assert_code(s, &b, StatusCode::BAD_REQUEST, "invalid_parameter");
    assert_eq!(b["error"]["param"], "messages[0].role");
    let (s, b) = t
        .post_json(
            "/v1/completions",
            &json!({"prompt": "short", "max_tokens": 2}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    t.finish().await;
}

#[tokio::test]
async fn a_slow_request_times_out_with_503() {
    let routes = Router::new().route(
        "/slow",
        get(|| async {
            std::future::pending::<()>().await;
            "never"
        }),
    );
    let server = ServerConfig {
        request_timeout_secs: 1,
        ..ServerConfig::default()
    };
    let res = engram::server::protect(routes, &server)
        .oneshot(Request::get("/slow").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().contains_key("retry-after"));
    let bytes = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_times_out_with_408() {
    let t = TestApp::start(Db::Sqlite, |c| c.server.body_timeout_secs = 1).await;
    let stalled = futures::stream::pending::<Result<axum::body::Bytes, std::io::Error>>();
    let (s, _, b) = t
        .send(
            Request::post("/v1/retrieve")
                .header("content-type", "application/json")
                .body(Body::from_stream(stalled))
                .unwrap(),
        )
        .await;
    assert_code(s, &b, StatusCode::REQUEST_TIMEOUT, "body_timeout");
    t.finish().await;
}

/// Starts `engram::server::serve` on a free port; returns the address and the shutdown token.
async fn serve(
    tweak: impl FnOnce(&mut engram::config::Config),
) -> (
    String,
    tokio_util::sync::CancellationToken,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = engram::config::Config::default();
    config.storage.data_dir = dir.path().to_path_buf();
    config.embedding.enabled = false;
    tweak(&mut config);
    let app = engram::app::App::open(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let token = tokio_util::sync::CancellationToken::new();
    tokio::spawn(engram::server::serve(app, listener, token.clone()));
    (addr, token, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_headers_are_cut_off_and_connections_are_bounded() {
    use std::io::{Read, Write};
    let (addr, token, _dir) = serve(|c| {
        c.server.header_timeout_secs = 1;
        c.server.max_connections = 1;
    })
    .await;
    let a = addr.clone();
    tokio::task::spawn_blocking(move || {
        // A client that never finishes its headers holds the only connection slot...
        let mut slow = std::net::TcpStream::connect(&a).unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .unwrap();
        let mut waiting = std::net::TcpStream::connect(&a).unwrap();
        waiting
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        // ... until the header timeout closes it, after which the next one is served.
        slow.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let mut buf = Vec::new();
        let _ = slow.read_to_end(&mut buf);
        assert!(
            !String::from_utf8_lossy(&buf).contains("200 OK"),
            "the half-sent request is not answered"
        );
        waiting
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let mut answer = String::new();
        waiting.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    })
    .await
    .unwrap();
    token.cancel();
}

// ---------------------------------------------------------------------------------------------
// Deletes racing ingestion

/// Deletes documents as soon as a running job reports them, while it goes on indexing: every delete answers 204,
/// the job completes with no failed or pending item, and the deleted documents leave nothing behind in the store,
/// the BM25 index or the graph.
async fn deletes_racing_a_job(db: Db) {
    let t = TestApp::start(db, |_| {}).await;
    let docs: Vec<Value> = (0..300)
        .map(|i| {
            json!({"title": format!("Harbour {i}"),
                   "text": format!("Harbour {i} lies on the Avelle. Mayor Quill{i} founded the Guild of Ropers{i} in {}.", 1700 + i)})
        })
        .collect();
    let (s, accepted) = t
        .post_json("/v1/documents", &json!({"documents": docs}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{accepted}");
    let job_id = accepted["job_id"].as_str().unwrap().to_string();
    let mut seen = std::collections::HashSet::new();
    let mut deleted = Vec::new();
    let job = loop {
        let (_, job) = t.get(&format!("/v1/jobs/{job_id}")).await;
        for (i, id) in job["document_ids"].as_array().unwrap().iter().enumerate() {
            let id = id.as_str().unwrap().to_string();
            if i % 3 == 0 && seen.insert(id.clone()) {
                let (s, b) = t.delete(&format!("/v1/documents/{id}")).await;
                assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
                deleted.push(id);
            }
        }
        if !matches!(job["status"].as_str(), Some("queued" | "running")) {
            break job;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["counts"]["pending"], 0, "{job}");
    assert_eq!(job["counts"]["failed"], 0, "{job}");
    assert_eq!(job["counts"]["done"], 300, "{job}");
    assert_eq!(deleted.len(), 100);

    let (docs, passages) = t.app.store.counts().await.unwrap();
    assert_eq!(docs, 200);
    assert_eq!(
        t.app.text_index_len() as i64,
        passages,
        "BM25 holds exactly the stored passages"
    );
    for id in &deleted {
        let (s, _) = t.get(&format!("/v1/documents/{id}")).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
    let hits = t.retrieve("Harbour Avelle Mayor Guild Ropers", 200).await;
    assert!(
        hits.iter()
            .all(|h| !deleted.iter().any(|d| h["document_id"] == d.as_str())),
        "no deleted document is retrieved"
    );
    let pool = t.app.store.pool();
    for table in ["extractions", "triples"] {
        let orphans: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM {table} WHERE passage_id NOT IN (SELECT id FROM passages)"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(orphans, 0, "{table} of deleted passages");
    }
    let pending: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM job_items WHERE status = 'pending'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(pending, 0);
    t.finish().await;
}
both_backends!(deletes_racing_a_job, deletes_racing_a_job);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_utf8_path_is_a_json_400() {
    let t = TestApp::start(Db::Sqlite, |_| {}).await;
    for uri in ["/v1/documents/%FF%FE", "/v1/jobs/%C3%28"] {
        let (s, b) = t.get(uri).await;
        assert_code(s, &b, StatusCode::BAD_REQUEST, "invalid_path");
    }
    let (s, b) = t.delete("/v1/documents/%FF").await;
    assert_code(s, &b, StatusCode::BAD_REQUEST, "invalid_path");
    t.finish().await;
}
