//! Health, readiness, metrics, OpenAPI, docs, request ids and the UI page.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Db, TestApp};
use serde_json::json;

#[tokio::test]
async fn operations_endpoints() {
    let t = TestApp::start(Db::Sqlite, |_| {}).await;
    let (s, b) = t.get("/healthz").await;
    assert_eq!((s, b["status"].as_str()), (StatusCode::OK, Some("ok")));

    let mut ready = false;
    for _ in 0..100 {
        let (s, b) = t.get("/readyz").await;
        if s == StatusCode::OK {
            assert_eq!(b["checks"]["backend"], "sqlite");
            ready = true;
            break;
        }
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ready, "readyz never turned ready");

    t.ingest(&json!({"title": "x", "text": "metrics are counted"}))
        .await;
    let (s, body) = t.get("/metrics").await;
    assert_eq!(s, StatusCode::OK);
    let text = body.as_str().unwrap();
    assert!(text.contains("engram_documents_ingested_total"), "{text}");
    assert!(
        text.contains(
            "engram_http_requests_total{method=\"POST\",route=\"/v1/documents\",status=\"202\"}"
        ),
        "{text}"
    );

    let (s, spec) = t.get("/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    for path in [
        "/v1/documents",
        "/v1/documents/{id}",
        "/v1/jobs/{id}",
        "/v1/retrieve",
        "/readyz",
        "/v1/embeddings",
    ] {
        assert!(
            spec["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI spec"
        );
    }
    let (s, _, _) = t
        .send(Request::get("/docs/").body(Body::empty()).unwrap())
        .await;
    assert_eq!(s, StatusCode::OK);

    let (s, headers, page) = t.send(Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.as_str().unwrap().contains("Engram"));
    assert!(
        headers.get("x-request-id").is_some(),
        "a request id is assigned"
    );

    let (_, headers, _) = t
        .send(
            Request::get("/healthz")
                .header("x-request-id", "abc-123")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        headers.get("x-request-id").unwrap(),
        "abc-123",
        "a given request id is propagated"
    );
    t.finish().await;
}

#[tokio::test]
async fn readyz_reports_postgres_backend() {
    let t = TestApp::start(Db::Postgres, |_| {}).await;
    for _ in 0..100 {
        let (s, b) = t.get("/readyz").await;
        if s == StatusCode::OK {
            assert_eq!(b["checks"]["backend"], "postgres");
            t.finish().await;
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("readyz never turned ready");
}

/// Every API and operations route of `ROUTES` is in the OpenAPI spec, with its method.
#[tokio::test]
async fn the_spec_lists_every_route() {
    let t = TestApp::start(Db::Sqlite, |_| {}).await;
    let (_, spec) = t.get("/openapi.json").await;
    for route in engram::server::auth::ROUTES {
        if matches!(route.path, "/" | "/docs/" | "/openapi.json") {
            continue;
        }
        let method = route.method.to_ascii_lowercase();
        let op = &spec["paths"][route.path][&method];
        assert!(
            op.is_object(),
            "{} {} missing from the OpenAPI spec",
            route.method,
            route.path
        );
        if route.access != engram::server::auth::Access::Public {
            for code in ["401", "403", "500", "503"] {
                assert!(
                    op["responses"][code].is_object(),
                    "{} {} does not document {code}",
                    route.method,
                    route.path
                );
            }
        }
    }
    t.finish().await;
}
