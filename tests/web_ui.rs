//! The web UI: served embedded or from `ENGRAM_WEB_DIR` (through the router), and driven in a real browser
//! (`tests/ui/ui.test.mjs`: playwright-core and Debian's chromium, headless) against a real `engram serve` on the
//! demo corpus. The browser run needs node, `/usr/bin/chromium` (or `CHROMIUM`) and `tests/ui/node_modules`, which
//! `make test` installs (`scripts/ui-test-setup.sh`); when one is missing this test fails and says what to run.
//! Screenshots go to `target/ui-screenshots/`.
#![allow(clippy::disallowed_methods)] // test and benchmark harnesses read their fixtures' locations from the environment

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{free_port, http_get, Db, TestApp};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest the browser run may take before it is killed and the test fails.
const BROWSER_LIMIT: Duration = Duration::from_secs(300);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

async fn get_page(t: &TestApp) -> (StatusCode, String, String) {
    let (status, headers, body) = t.send(Request::get("/").body(Body::empty()).unwrap()).await;
    let kind = headers
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = match body {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    };
    (status, kind, text)
}

/// `GET /` serves the embedded page; with `ENGRAM_WEB_DIR` set, that directory's `index.html` (read at each
/// request), and a clear 500 when it cannot be read. (The only test in this binary that sets the variable; the
/// browser test's server is started without it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_is_embedded_or_read_from_engram_web_dir() {
    let t = TestApp::start(Db::Sqlite, |_| {}).await;
    let embedded = std::fs::read_to_string(root().join("web/index.html")).unwrap();

    std::env::remove_var("ENGRAM_WEB_DIR");
    let (status, kind, page) = get_page(&t).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(kind, "text/html; charset=utf-8");
    assert_eq!(page, embedded);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "<p>edited copy</p>").unwrap();
    std::env::set_var("ENGRAM_WEB_DIR", dir.path());
    let (status, _, page) = get_page(&t).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page, "<p>edited copy</p>");
    std::fs::write(dir.path().join("index.html"), "<p>edited again</p>").unwrap();
    assert_eq!(
        get_page(&t).await.2,
        "<p>edited again</p>",
        "read per request"
    );

    std::env::set_var("ENGRAM_WEB_DIR", dir.path().join("missing"));
    let (status, _, body) = get_page(&t).await;
    std::env::remove_var("ENGRAM_WEB_DIR");
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "web_ui_unreadable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ENGRAM_WEB_DIR"),
        "{body}"
    );
    t.finish().await;
}

fn engram() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_engram"));
    c.current_dir(root())
        .env_remove("DATABASE_URL")
        .env_remove("ENGRAM_WEB_DIR")
        // Below the page's own limit (200), so the browser test can show a real 400 from the server.
        .env("ENGRAM__RETRIEVAL__MAX_TOP_K", "100")
        .env("RUST_LOG", "warn");
    c
}

/// Kills the child (the server, or a browser run past its limit) when dropped, so a failing test leaves nothing
/// running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the browser run needs, or a message saying what is missing and how to install it.
fn browser_prerequisites() -> Result<(PathBuf, PathBuf), String> {
    let fix = "run `make ui-setup` (scripts/ui-test-setup.sh: apt-get install chromium, npm ci in tests/ui)";
    let node = Command::new("node").arg("--version").output();
    match node {
        Ok(out) if out.status.success() => {}
        _ => return Err(format!("node is not installed or does not run; {fix}")),
    }
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !chromium.is_file() {
        return Err(format!("no browser at {}; {fix}", chromium.display()));
    }
    let playwright = root().join("tests/ui/node_modules/playwright-core");
    if !playwright.is_dir() {
        return Err(format!("{} is missing; {fix}", playwright.display()));
    }
    Ok((chromium, root().join("tests/ui/ui.test.mjs")))
}

/// The demo corpus in a fresh data dir, `engram serve` on it, and the browser checks of `tests/ui/ui.test.mjs`:
/// asking (answer, citations, passages with attributions, seeds, graph drawing), documents (drag-and-drop upload
/// of two files with job progress, list, search, open, delete) and errors (a 4xx, an unreachable server, a rejected
/// upload, a failed job).
#[test]
fn web_ui_in_a_real_browser() {
    let (chromium, script) = browser_prerequisites().unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let out = engram()
        .args(["ingest", "--data-dir"])
        .arg(dir.path())
        .arg("corpora/demo/corpus.json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ingest failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ingest_s = started.elapsed().as_secs_f64();

    let addr = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let server = KillOnDrop(
        engram()
            .args(["serve", "--data-dir"])
            .arg(dir.path())
            .args(["--bind", &addr])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    while http_get(&addr, "/readyz").ok().map(|(s, _)| s) != Some(200) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "server never became ready: {}",
            std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready_s = started.elapsed().as_secs_f64();

    let shots = root().join("target/ui-screenshots");
    let mut browser = KillOnDrop(
        Command::new("node")
            .arg(&script)
            .arg(format!("http://{addr}"))
            .arg(&shots)
            .env("CHROMIUM", &chromium)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (mut stdout, mut stderr) = (
        browser.0.stdout.take().unwrap(),
        browser.0.stderr.take().unwrap(),
    );
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let t = Instant::now();
    let status = loop {
        if let Some(s) = browser.0.try_wait().unwrap() {
            break Some(s);
        }
        if t.elapsed() > BROWSER_LIMIT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(browser);
    let (out, err) = (out_reader.join().unwrap(), err_reader.join().unwrap());
    println!("{out}");
    eprintln!("{err}");
    println!(
        "ingest {ingest_s:.1} s, server ready at {ready_s:.1} s, browser checks {:.1} s",
        t.elapsed().as_secs_f64()
    );
    drop(server);
    let status = status.unwrap_or_else(|| panic!("the browser run took over {BROWSER_LIMIT:?}"));
    assert!(
        status.success(),
        "browser checks failed ({status}); screenshots in {}; server log:\n{}",
        shots.display(),
        std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default()
    );
    assert!(
        out.contains("passed: 3 of 3 checks"),
        "the browser run did not report its checks"
    );
}
