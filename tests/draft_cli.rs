//! `engram draft train` through the binary on the synthetic tiny target: it reads the training text, has the
//! target write and answer its own prompts, trains both stages, writes a model directory that loads, and a rerun
//! resumes (nothing left to train); bad input is refused with a message that names it.

use std::path::Path;
use std::process::Command;

fn engram() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_engram"));
    c.env_remove("DATABASE_URL").env("RUST_LOG", "warn");
    c
}

fn train(text: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut c = engram();
    c.args([
        "draft",
        "train",
        "--model",
        "synthetic:tiny",
        "--window",
        "32",
    ])
    .args([
        "--batch",
        "4",
        "--pretrain-steps",
        "8",
        "--align-steps",
        "6",
    ])
    .args([
        "--free-text-prompts",
        "6",
        "--qa-prompts",
        "3",
        "--checkpoint-every",
        "4",
    ])
    .arg("--text")
    .arg(text)
    .arg("--out")
    .arg(out)
    .args(extra);
    c.output().unwrap()
}

#[test]
fn draft_train_builds_a_loadable_draft_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("corpus.json");
    let passages: Vec<serde_json::Value> = (0..24)
        .map(|i| {
            serde_json::json!({
                "title": format!("Town {i}"),
                "text": format!("Town {i} lies on the river Avel. Its bridge was built in {} by the guild.", 1800 + i),
            })
        })
        .collect();
    std::fs::write(&text, serde_json::to_string(&passages).unwrap()).unwrap();
    let out = dir.path().join("draft");
    let run = train(&text, &out, &["--width", "64"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["stages"][0]["step"], 8);
    assert_eq!(report["stages"][1]["step"], 6);
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "loss.csv",
        "loss.svg",
        "align-data.jsonl",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let align = std::fs::read_to_string(out.join("align-data.jsonl")).unwrap();
    assert!(align.lines().count() >= 6, "{align}");
    let files = engram_engine::ModelFiles::load(&out.display().to_string()).unwrap();
    assert_eq!(files.config.vocab_size, 512);
    assert_eq!(files.config.num_layers, 2);
    engram_engine::ModelFiles::load(&out.join("stage1").display().to_string()).unwrap();

    let again = train(&text, &out, &["--width", "64"]);
    assert!(again.status.success());
    let report: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(report["stages"][1]["resumed_from"], 6);
    assert_eq!(report["stages"][1]["tokens"], 0);
}

#[test]
fn bad_draft_settings_and_text_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.pdf");
    std::fs::write(&text, "%PDF").unwrap();
    let run = train(&text, &dir.path().join("d"), &["--width", "64"]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("unsupported extension"));

    let text = dir.path().join("notes.md");
    std::fs::write(&text, "One paragraph.\n\nAnother one.").unwrap();
    let run = train(&text, &dir.path().join("d"), &["--width", "100"]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("multiple of 64"));
}
