//! Ingestion, listing, reading, deleting and retrieving documents through the router, on SQLite and PostgreSQL.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{fixture, multipart, Db, TestApp};
use serde_json::json;

async fn ingest_list_get_delete(db: Db) {
    let t = TestApp::start(db, |_| {}).await;
    let job = t
        .ingest(&json!({"documents": [
            {"title": "Kestrel Bridge", "text": "The Kestrel Bridge spans the Ouse at Harlow.\n\nIt opened in 1911.", "metadata": {"lang": "en"}},
            {"title": "Harlow", "text": "Harlow is a market town famous for its clock tower."},
        ]}))
        .await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["counts"]["done"], 2);
    assert_eq!(job["counts"]["total"], 2);
    assert_eq!(job["document_ids"].as_array().unwrap().len(), 2);

    let (status, page) = t.get("/v1/documents?limit=1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total"], 2);
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    let (_, page2) = t.get("/v1/documents?limit=1&offset=1").await;
    assert_ne!(page["data"][0]["id"], page2["data"][0]["id"]);
    let (_, found) = t.get("/v1/documents?q=kestrel").await;
    assert_eq!(found["total"], 1);

    let id = job["document_ids"][0].as_str().unwrap().to_string();
    let (status, doc) = t.get(&format!("/v1/documents/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["title"], "Kestrel Bridge");
    assert_eq!(doc["metadata"]["lang"], "en");
    let text = doc["text"].as_str().unwrap();
    for p in doc["passages"].as_array().unwrap() {
        let (s, e) = (
            p["start_byte"].as_u64().unwrap() as usize,
            p["end_byte"].as_u64().unwrap() as usize,
        );
        assert_eq!(
            &text[s..e],
            p["text"].as_str().unwrap(),
            "offsets point into the document text"
        );
    }

    let hits = t
        .retrieve("When did the bridge over the Ouse open?", 5)
        .await;
    assert_eq!(hits[0]["document_id"], id.as_str());
    assert_eq!(hits[0]["title"], "Kestrel Bridge");
    assert!(hits[0]["score"].as_f64().unwrap() > 0.0);

    let (status, _) = t.delete(&format!("/v1/documents/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = t.get(&format!("/v1/documents/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    let hits = t.retrieve("Kestrel Bridge Ouse 1911", 5).await;
    assert!(
        hits.iter().all(|h| h["document_id"] != id.as_str()),
        "deleted from the BM25 index"
    );
    assert_eq!(t.app.text_index_len(), 1);
    let (status, _) = t.delete(&format!("/v1/documents/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    t.finish().await;
}
both_backends!(ingest_list_get_delete, ingest_list_get_delete);

async fn reingesting_changes_nothing(db: Db) {
    let t = TestApp::start(db, |_| {}).await;
    let docs = json!([
        {"title": "A", "text": "Alpha text about moths."},
        {"title": "B", "text": "Beta text about lamps."},
    ]);
    let first = t.ingest(&docs).await;
    assert_eq!(first["counts"]["done"], 2);
    let before = t.app.store.counts().await.unwrap();
    let second = t.ingest(&docs).await;
    assert_eq!(second["status"], "completed");
    assert_eq!(second["counts"]["done"], 0);
    assert_eq!(second["counts"]["duplicate"], 2);
    assert_eq!(
        second["document_ids"], first["document_ids"],
        "duplicates point at the stored documents"
    );
    assert_eq!(t.app.store.counts().await.unwrap(), before);
    assert_eq!(t.app.text_index_len(), 2);
    t.finish().await;
}
both_backends!(reingesting_changes_nothing, reingesting_changes_nothing);

async fn multipart_upload_of_every_format(db: Db) {
    let t = TestApp::start(db, |_| {}).await;
    let files = [
        "docs/lighthouse.txt",
        "docs/harbour.md",
        "docs/market.html",
        "docs/sample.pdf",
        "docs/notes.jsonl",
    ];
    let contents: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|f| {
            let p = fixture(f);
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    let corpus = br#"[{"title":"Gull Rock","text":"Gull Rock is a skerry."},{"title":"Tern Point","text":"Tern Point has a beacon."}]"#;
    let mut parts: Vec<(&str, &str, &[u8])> = contents
        .iter()
        .map(|(n, b)| ("file", n.as_str(), b.as_slice()))
        .collect();
    parts.push(("file", "corpus.json", corpus));
    let (ct, body) = multipart(&parts);
    let (status, _, accepted) = t
        .send(
            Request::post("/v1/documents")
                .header("content-type", ct)
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    // txt, md, html, pdf = 4 documents; notes.jsonl = 3; corpus.json = 2.
    assert_eq!(accepted["documents"], 9);
    let job = t.wait_job(accepted["job_id"].as_str().unwrap()).await;
    assert_eq!(job["counts"]["done"], 9, "{job}");
    let (_, page) = t.get("/v1/documents?limit=100").await;
    let media: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["media_type"].as_str().unwrap())
        .collect();
    for m in [
        "text/plain",
        "text/markdown",
        "text/html",
        "application/pdf",
        "application/json",
    ] {
        assert!(media.contains(&m), "{m} missing from {media:?}");
    }
    assert!(!t.retrieve("skerry", 1).await.is_empty());
    t.finish().await;
}
both_backends!(
    multipart_upload_of_every_format,
    multipart_upload_of_every_format
);

async fn long_documents_are_chunked_with_offsets(db: Db) {
    let t = TestApp::start(db, |c| {
        c.chunking.max_chars = 200;
        c.chunking.overlap_chars = 40;
    })
    .await;
    let text: String = (0..40)
        .map(|i| format!("Sentence number {i} talks about tide tables and boats. "))
        .collect();
    let job = t.ingest(&json!({"title": "Tides", "text": text})).await;
    let id = job["document_ids"][0].as_str().unwrap();
    let (_, doc) = t.get(&format!("/v1/documents/{id}")).await;
    let passages = doc["passages"].as_array().unwrap();
    assert!(passages.len() > 5);
    let full = doc["text"].as_str().unwrap();
    for p in passages {
        let s = p["start_byte"].as_u64().unwrap() as usize;
        let e = p["end_byte"].as_u64().unwrap() as usize;
        assert!(p["text"].as_str().unwrap().chars().count() <= 200);
        assert_eq!(&full[s..e], p["text"].as_str().unwrap());
    }
    t.finish().await;
}
both_backends!(
    long_documents_are_chunked_with_offsets,
    long_documents_are_chunked_with_offsets
);
