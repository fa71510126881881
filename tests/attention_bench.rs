//! `engram bench attention --kernel` through the binary on the CPU, at tiny contexts and a small head shape: with a
//! `top_k` covering every key block HiP attends to every key, so its outputs equal dense attention's; with a small
//! `top_k` it attends fewer keys and its outputs differ. The JSON report and the table say so.

use std::process::Command;

fn bench(out: &std::path::Path, top_k: &str) -> serde_json::Value {
    let run = Command::new(env!("CARGO_BIN_EXE_engram"))
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .args(["bench", "attention", "--kernel", "--device", "cpu"])
        .args(["--contexts", "256,512", "--batch", "2"])
        .args(["--heads", "4", "--kv-heads", "2", "--head-dim", "32"])
        .args(["--block-q", "64", "--block-k", "64", "--sink", "64"])
        .args(["--recent", "64", "--top-k", top_k])
        .args(["--reps", "2", "--warmup", "1"])
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let table = String::from_utf8_lossy(&run.stdout);
    assert!(table.contains("| Decode | 512 | 2 × 1 |"), "{table}");
    assert!(table.contains("| Prefill | 256 | 1 × 256 |"), "{table}");
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

#[test]
fn hip_covering_every_block_equals_dense_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    // 512 keys are 8 blocks of 64: top_k 8 keeps every candidate.
    let report = bench(&dir.path().join("covering.json"), "8");
    let kernel = &report["kernel"];
    assert_eq!(kernel["hip"]["top_k"], 8);
    assert_eq!(kernel["hip"]["min_context"], 0);
    let cases = kernel["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for c in cases {
        assert_eq!(c["dense"]["status"], "ok", "{c}");
        assert_eq!(c["hip"]["status"], "ok", "{c}");
        assert_eq!(c["dense"]["ms_all"].as_array().unwrap().len(), 2);
        assert!(c["dense"]["ms_median"].as_f64().unwrap() > 0.0);
        assert!(c["speedup"].as_f64().unwrap() > 0.0);
        let diff = c["max_abs_diff"].as_f64().unwrap();
        assert!(diff < 1e-6, "{c}");
        assert_eq!(c["keys_per_row_dense"], c["keys_per_row_hip"]);
        assert!(c["compared_rows"].as_u64().unwrap() >= 2);
        assert!(c["hip"]["peak_bytes"].as_u64().unwrap() > 0);
    }
    let parts = report["part_seconds"].as_array().unwrap();
    assert_eq!(parts[0][0], "kernel");

    // top_k 1 at 512 keys: fewer keys, different outputs.
    let report = bench(&dir.path().join("sparse.json"), "1");
    let cases = report["kernel"]["cases"].as_array().unwrap();
    let long: Vec<_> = cases.iter().filter(|c| c["context"] == 512).collect();
    for c in long {
        let (dense, hip) = (
            c["keys_per_row_dense"].as_f64().unwrap(),
            c["keys_per_row_hip"].as_f64().unwrap(),
        );
        assert!(hip < dense, "{c}");
        assert!(c["max_abs_diff"].as_f64().unwrap() > 0.0, "{c}");
    }
}
