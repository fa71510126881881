//! The `engram` binary as a user runs it: serve (with graceful shutdown), ingest, reindex, eval, config errors.

mod common;

use common::{free_port, http_get};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn engram() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_engram"));
    c.env_remove("DATABASE_URL").env("RUST_LOG", "warn");
    c
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn serve_as_documented_then_shut_down_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = engram()
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args(["--bind", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut ready = false;
    while started.elapsed() < Duration::from_secs(60) {
        if let Ok((200, body)) = http_get(&addr, "/readyz") {
            assert!(body.contains("ready"), "{body}");
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ready, "server never became ready");
    assert_eq!(http_get(&addr, "/healthz").unwrap().0, 200);
    let (status, page) = http_get(&addr, "/").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("Engram"));
    assert!(
        dir.path().join("engram.db").exists(),
        "SQLite file in the data dir"
    );
    assert!(
        dir.path().join("tantivy").is_dir(),
        "BM25 index in the data dir"
    );

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "server did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}

#[test]
fn ingest_twice_is_idempotent_and_reindex_and_eval_work() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = root().join("corpora/demo/corpus.json");
    let run = |args: &[&str]| {
        let out = engram()
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (_, err) = run(&["ingest", corpus.to_str().unwrap()]);
    assert!(err.contains("40 new, 0 unchanged, 0 failed"), "{err}");
    let (_, err) = run(&["ingest", corpus.to_str().unwrap()]);
    assert!(err.contains("0 new, 40 unchanged, 0 failed"), "{err}");
    assert!(err.contains("store holds 40 documents"), "{err}");
    let (_, err) = run(&["reindex"]);
    assert!(err.contains("reindexed 40 passages"), "{err}");
    let questions = root().join("corpora/demo/questions.json");
    let (out, _) = run(&[
        "eval",
        "--questions",
        questions.to_str().unwrap(),
        "--corpus",
        corpus.to_str().unwrap(),
        "--retriever",
        "bm25",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["retriever"], "bm25");
    assert_eq!(report["questions"], 12);
    for key in ["recall@2", "recall@5", "mean_latency_ms"] {
        assert!(report[key].is_number(), "{key} in {report}");
    }
}

#[test]
fn bad_configuration_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("engram.toml");
    std::fs::write(&cfg, "[chunking]\nmax_chars = 100\noverlap_chars = 90\n").unwrap();
    let out = engram()
        .arg("--config")
        .arg(&cfg)
        .args(["serve"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("overlap_chars"), "{err}");

    let out = engram()
        .env("ENGRAM__SERVER__BIND", "not-an-address")
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.bind"), "{err}");

    let out = engram()
        .args(["ingest", "--data-dir"])
        .arg(dir.path())
        .arg(root().join("tests/fixtures/docs/bad.docx"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported file type"));
}

#[test]
fn ingest_applies_the_configured_nesting_limit() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("deep.html");
    std::fs::write(&page, "<div>".repeat(20) + "text" + &"</div>".repeat(20)).unwrap();
    let data = dir.path().join("data");
    let ingest = |limit: &str| {
        engram()
            .env("ENGRAM__LIMITS__MAX_NESTING_DEPTH", limit)
            .args(["ingest", "--data-dir"])
            .arg(&data)
            .arg(&page)
            .output()
            .unwrap()
    };
    let refused = ingest("8");
    assert!(
        !refused.status.success(),
        "20 nested divs pass a limit of 8"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("deep.html") && stderr.contains("8"),
        "{stderr}"
    );
    assert!(ingest("64").status.success(), "20 nested divs within 64");
}
