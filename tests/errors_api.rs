//! Bad input: every case answers the error envelope with a stable code, and nothing is half-written.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{fixture, multipart, Db, TestApp};
use serde_json::{json, Value};

fn assert_envelope(body: &Value, code: &str) {
    let e = &body["error"];
    assert_eq!(e["code"], code, "{body}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].is_string(), "{body}");
    assert!(e.get("param").is_some(), "{body}");
}

async fn raw_post(t: &TestApp, uri: &str, ct: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let (s, _, b) = t
        .send(
            Request::post(uri)
                .header("content-type", ct)
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
    (s, b)
}

async fn nothing_stored(t: &TestApp) {
    assert_eq!(t.app.store.counts().await.unwrap(), (0, 0));
    let (_, page) = t.get("/v1/documents").await;
    assert_eq!(page["total"], 0);
}

async fn bad_json_bodies(db: Db) {
    let t = TestApp::start(db, |_| {}).await;
    let (s, b) = raw_post(
        &t,
        "/v1/documents",
        "application/json",
        b"{\"title\": \"x\", ".to_vec(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "invalid_json");

    let (s, b) = t
        .post_json(
            "/v1/documents",
            &json!({"documents": [{"title": "ok", "text": "fine"}, {"title": "bad", "text": 42}]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "invalid_field");
    assert_eq!(b["error"]["param"], "documents[1].text");

    let (s, b) = t
        .post_json("/v1/documents", &json!({"title": "x", "txet": "typo"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "invalid_field");

    let (s, b) = t
        .post_json(
            "/v1/documents",
            &json!([{"title": "ok", "text": "fine"}, {"title": "empty", "text": "  \n "}]),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_envelope(&b, "empty_text");
    assert_eq!(b["error"]["param"], "[1].text");

    let (s, b) = t
        .post_json("/v1/documents", &json!({"documents": []}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_envelope(&b, "no_documents");

    let (s, b) = t
        .post_json("/v1/documents", &json!({"text": "x", "metadata": [1]}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(b["error"]["param"], "metadata");

    let mut invalid = b"{\"title\": \"t\", \"text\": \"caf".to_vec();
    invalid.extend_from_slice(&[0xC3, 0x28]);
    invalid.extend_from_slice(b"\"}");
    let (s, b) = raw_post(&t, "/v1/documents", "application/json", invalid).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "invalid_utf8");

    let (s, b) = t
        .post_json(
            "/v1/documents",
            &json!([{"title": "ok", "text": "fine"}, {"title": "nul", "text": "a\u{0}b"}]),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "invalid_text");

    let (s, b) = raw_post(&t, "/v1/documents", "text/csv", b"a,b".to_vec()).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_envelope(&b, "unsupported_media_type");

    nothing_stored(&t).await;
    t.finish().await;
}
both_backends!(bad_json_bodies, bad_json_bodies);

async fn bad_uploads(db: Db) {
    let t = TestApp::start(db, |_| {}).await;
    let good = std::fs::read(fixture("docs/lighthouse.txt")).unwrap();
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "report.docx",
            std::fs::read(fixture("docs/bad.docx")).unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "corrupt.pdf",
            std::fs::read(fixture("docs/corrupt.pdf")).unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_pdf",
        ),
        (
            "latin1.txt",
            b"caf\xe9 au lait".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_utf8",
        ),
        (
            "blank.txt",
            b"   \n\n  ".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_text",
        ),
        (
            "broken.jsonl",
            b"{\"title\":\"a\",\"text\":\"b\"}\n{nope\n".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
        ),
    ];
    for (name, bytes, status, code) in cases {
        // A good file first: the whole upload must be refused, so it must not be stored either.
        let (ct, body) = multipart(&[("file", "lighthouse.txt", &good), ("file", name, &bytes)]);
        let (s, b) = raw_post(&t, "/v1/documents", &ct, body).await;
        assert_eq!(s, status, "{name}: {b}");
        assert_envelope(&b, code);
    }
    let (ct, body) = multipart(&[("attachment", "a.txt", b"hello")]);
    let (s, b) = raw_post(&t, "/v1/documents", &ct, body).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "invalid_field");
    nothing_stored(&t).await;
    t.finish().await;
}
both_backends!(bad_uploads, bad_uploads);

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let t = TestApp::start(Db::Sqlite, |c| c.server.max_body_bytes = 4096).await;
    let big = "word ".repeat(2000);
    let (s, b) = t
        .post_json("/v1/documents", &json!({"title": "big", "text": big}))
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_envelope(&b, "payload_too_large");
    let (ct, body) = multipart(&[("file", "big.txt", big.as_bytes())]);
    let (s, b) = raw_post(&t, "/v1/documents", &ct, body).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");
    assert_envelope(&b, "payload_too_large");
    let (s, b) = t.post_json("/v1/retrieve", &json!({"query": big})).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_envelope(&b, "payload_too_large");
    nothing_stored(&t).await;
    t.finish().await;
}

#[tokio::test]
async fn unknown_ids_and_routes_get_404() {
    let t = TestApp::start(Db::Sqlite, |_| {}).await;
    for uri in ["/v1/documents/nope", "/v1/jobs/nope", "/v1/nothing-here"] {
        let (s, b) = t.get(uri).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(b["error"]["type"], "not_found_error");
    }
    let (s, b) = t.delete("/v1/documents/nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_envelope(&b, "not_found");
    let (s, b) = t.delete("/v1/jobs/nope").await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_envelope(&b, "method_not_allowed");
    t.finish().await;
}

#[tokio::test]
async fn bad_retrieve_requests() {
    let t = TestApp::start(Db::Sqlite, |_| {}).await;
    let cases = [
        (
            json!({"query": ""}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_query",
            Some("query"),
        ),
        (
            json!({"query": "x", "top_k": 0}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("top_k"),
        ),
        (
            json!({"query": "x", "top_k": 100000}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("top_k"),
        ),
        (
            json!({"query": "x", "top_k": "five"}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("top_k"),
        ),
        (
            json!({"query": "x", "method": "magic"}),
            StatusCode::BAD_REQUEST,
            "unknown_method",
            Some("method"),
        ),
        (
            json!({"q": "x"}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            None,
        ),
    ];
    for (body, status, code, param) in cases {
        let (s, b) = t.post_json("/v1/retrieve", &body).await;
        assert_eq!(s, status, "{body}: {b}");
        assert_envelope(&b, code);
        if let Some(p) = param {
            assert_eq!(b["error"]["param"], p);
        }
    }
    let (s, b) = t.get("/v1/documents?limit=0").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(b["error"]["param"], "limit");
    let (s, b) = t.get("/v1/documents?limit=abc").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_envelope(&b, "invalid_query");
    t.finish().await;
}

/// A request for `route` (placeholders filled in), with `headers`.
fn route_request(route: &engram::server::auth::Route, headers: &[(&str, &str)]) -> Request<Body> {
    let uri = route.path.replace("{id}", "some-id");
    let mut req = Request::builder().method(route.method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if route.method == "POST" {
        req.header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap()
    } else {
        req.body(Body::empty()).unwrap()
    }
}

#[tokio::test]
async fn with_a_key_every_route_but_the_probes_needs_it() {
    use engram::server::auth::{Access, ROUTES};
    let t = TestApp::start(Db::Sqlite, |c| c.server.api_key = Some("s3cret".into())).await;
    for route in ROUTES {
        let (s, _, b) = t.send(route_request(route, &[])).await;
        if route.access == Access::Public {
            assert_ne!(
                s,
                StatusCode::UNAUTHORIZED,
                "{} {}: {b}",
                route.method,
                route.path
            );
            continue;
        }
        assert_eq!(
            s,
            StatusCode::UNAUTHORIZED,
            "{} {}: {b}",
            route.method,
            route.path
        );
        assert_envelope(&b, "unauthorized");
        let (s, _, b) = t
            .send(route_request(route, &[("authorization", "Bearer wrong")]))
            .await;
        assert_eq!(
            s,
            StatusCode::UNAUTHORIZED,
            "{} {}",
            route.method,
            route.path
        );
        assert_envelope(&b, "invalid_api_key");
        for key in ["Bearer s3cret", "bearer s3cret", "BEARER  s3cret"] {
            let (s, _, b) = t
                .send(route_request(route, &[("authorization", key)]))
                .await;
            assert_ne!(
                s,
                StatusCode::UNAUTHORIZED,
                "{} {} with {key}: {b}",
                route.method,
                route.path
            );
        }
        let (s, _, _) = t
            .send(route_request(route, &[("x-api-key", "s3cret")]))
            .await;
        assert_ne!(
            s,
            StatusCode::UNAUTHORIZED,
            "{} {}",
            route.method,
            route.path
        );
    }
    let (s, _) = t.get("/no/such/route").await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "unknown routes reveal nothing without the key"
    );
    let doc = json!({"title": "t", "text": "some text"});
    let (s, _, b) = t
        .send(
            Request::post("/v1/documents")
                .header("content-type", "application/json")
                .header("authorization", "Bearer s3cret")
                .body(Body::from(doc.to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    t.finish().await;
}

#[tokio::test]
async fn metrics_and_ui_can_be_made_public() {
    let t = TestApp::start(Db::Sqlite, |c| {
        c.server.api_key = Some("s3cret".into());
        c.server.public_metrics = true;
        c.server.public_ui = true;
    })
    .await;
    for uri in ["/metrics", "/", "/openapi.json", "/healthz"] {
        let (s, b) = t.get(uri).await;
        assert_eq!(s, StatusCode::OK, "{uri}: {b}");
    }
    let (s, _) = t.get("/v1/documents").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    t.finish().await;
}

#[tokio::test]
async fn foreign_hosts_and_origins_are_refused() {
    let t = TestApp::start(Db::Sqlite, |_| {}).await;
    let get = |host: &str| {
        Request::get("/v1/documents")
            .header("host", host)
            .body(Body::empty())
            .unwrap()
    };
    let (s, _, b) = t.send(get("evil.example:8080")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert_envelope(&b, "host_not_allowed");
    for host in ["localhost:8080", "127.0.0.1:8080", "[::1]:8080"] {
        let (s, _, b) = t.send(get(host)).await;
        assert_eq!(s, StatusCode::OK, "{host}: {b}");
    }
    let (s, _, _) = t
        .send(
            Request::get("/healthz")
                .header("host", "10.1.2.3:8080")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "probes answer whatever the host");

    let post = |origin: &str| {
        Request::post("/v1/documents")
            .header("host", "localhost:8080")
            .header("origin", origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from("title=x&text=y"))
            .unwrap()
    };
    for origin in ["http://evil.example", "null"] {
        let (s, _, b) = t.send(post(origin)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{origin}: {b}");
        assert_envelope(&b, "origin_not_allowed");
    }
    let (s, _, b) = t.send(post("http://localhost:8080")).await;
    assert_eq!(
        s,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "same origin passes the check: {b}"
    );
    let (s, headers, _) = t
        .send(
            Request::options("/v1/retrieve")
                .header("origin", "http://evil.example")
                .header("access-control-request-method", "POST")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert!(
        !headers.contains_key("access-control-allow-origin"),
        "CORS is off by default ({s})"
    );
    nothing_stored(&t).await;
    t.finish().await;
}

#[tokio::test]
async fn cors_answers_configured_origins() {
    let t = TestApp::start(Db::Sqlite, |c| {
        c.server.api_key = Some("s3cret".into());
        c.server.cors_origins = vec!["https://app.example".into()];
    })
    .await;
    let (s, headers, _) = t
        .send(
            Request::options("/v1/retrieve")
                .header("origin", "https://app.example")
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization, content-type",
                )
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert!(s.is_success(), "{s}");
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    let (s, _, b) = t
        .send(
            Request::post("/v1/retrieve")
                .header("origin", "https://app.example")
                .header("authorization", "Bearer s3cret")
                .header("content-type", "application/json")
                .body(Body::from(json!({"query": "x"}).to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    t.finish().await;
}
