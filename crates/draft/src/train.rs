//! The training loop of one stage: batches from [`Windows`], the loss differentiated by candle's autograd,
//! gradients clipped to a global norm, AdamW under warm-up and cosine decay; a checkpoint every
//! `checkpoint_every` steps (parameters, moments, step) from which a killed run resumes exactly; a progress bar
//! with tokens/s and loss; every step a row of `loss.csv`, and `loss.svg` drawn from it at the end.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::data::Windows;
use crate::net::DraftNet;
use crate::optim::{clip_scale, grad_norm, learning_rate, AdamW, AdamWConfig};
use crate::{io_error, DraftError};

/// One stage's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct StageConfig {
    /// The stage's name (`pretrain`, `align`): its checkpoints and rows of `loss.csv` carry it.
    pub name: String,
    /// Optimizer steps.
    pub steps: u64,
    /// Windows per batch.
    pub batch_rows: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: u64,
    /// The learning rate at the end, as a share of the peak.
    pub lr_floor: f64,
    /// Largest global gradient norm.
    pub clip: f64,
    /// AdamW's moments and decay.
    pub adamw: AdamWConfig,
    /// Steps between checkpoints.
    pub checkpoint_every: u64,
    /// Seeds the batch order.
    pub seed: u64,
    /// Stop after this many steps of this invocation, without a checkpoint, as a kill would (resume later).
    pub stop_after: Option<u64>,
    /// Draw a progress bar on the terminal.
    pub progress: bool,
}

/// What a stage did.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// The stage.
    pub name: String,
    /// The step it ended at (its total when complete).
    pub step: u64,
    /// Whether every step is done.
    pub complete: bool,
    /// The step it resumed from (0: a fresh start).
    pub resumed_from: u64,
    /// Mean loss of its first and last tenth of the steps run (all of them, across resumes).
    pub first_loss: f64,
    /// See `first_loss`.
    pub last_loss: f64,
    /// Weighted positions trained on, this invocation.
    pub tokens: u64,
    /// Seconds, this invocation.
    pub seconds: f64,
}

/// What a checkpoint records besides its tensors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct CheckpointState {
    stage: String,
    step: u64,
    steps: u64,
    batch_rows: usize,
    seed: u64,
}

/// One row of `loss.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct LossRow {
    /// Stage name.
    pub stage: String,
    /// Step (from 1).
    pub step: u64,
    /// The batch's loss.
    pub loss: f64,
    /// The learning rate used.
    pub lr: f64,
    /// The gradient's global norm before clipping.
    pub grad_norm: f64,
}

/// The header of `loss.csv`.
const CSV_HEADER: &str = "stage,step,loss,lr,grad_norm";

/// Runs (or resumes, or skips when already complete) one stage of training `net` on `windows`, with its
/// checkpoints under `run_dir/checkpoints/NAME` and its losses in `run_dir/loss.csv`.
pub fn train_stage(
    net: &DraftNet,
    windows: &Windows,
    config: &StageConfig,
    run_dir: &Path,
) -> Result<StageReport, DraftError> {
    if config.steps == 0 || config.batch_rows == 0 || config.checkpoint_every == 0 {
        return Err(DraftError::Invalid(
            "steps, batch rows and checkpoint interval must be at least 1".into(),
        ));
    }
    let mut opt = AdamW::new(net.params(), config.adamw)?;
    let ckpt = run_dir.join("checkpoints").join(&config.name);
    let state = CheckpointState {
        stage: config.name.clone(),
        step: 0,
        steps: config.steps,
        batch_rows: config.batch_rows,
        seed: config.seed,
    };
    let start = match read_checkpoint(&ckpt)? {
        Some((saved, params, moments)) => {
            if (CheckpointState {
                step: 0,
                ..saved.clone()
            }) != state
            {
                return Err(DraftError::Checkpoint {
                    path: ckpt,
                    reason: format!(
                        "it was made with other settings ({saved:?}); remove it or use another output directory"
                    ),
                });
            }
            net.load(&params)?;
            opt.restore(&moments, saved.step)?;
            saved.step
        }
        None => 0,
    };
    let csv = run_dir.join("loss.csv");
    let mut rows = read_loss_csv(&csv)?;
    rows.retain(|r| r.stage != config.name || r.step <= start);
    write_loss_csv(&csv, &rows)?;

    let bar = progress_bar(config, start);
    let began = Instant::now();
    let mut tokens = 0u64;
    let mut step = start;
    while step < config.steps {
        if config.stop_after.is_some_and(|n| step - start >= n) {
            break;
        }
        let batch = windows.batch(step, config.batch_rows)?;
        let loss = net.loss(&batch.ids, &batch.targets, &batch.weights)?;
        let grads = loss.backward()?;
        let norm = grad_norm(&grads, net.params())?;
        let lr = learning_rate(
            step,
            config.warmup,
            config.steps,
            config.lr,
            config.lr_floor,
        );
        opt.step(&grads, lr, clip_scale(norm, config.clip))?;
        step += 1;
        tokens += batch.counted as u64;
        let row = LossRow {
            stage: config.name.clone(),
            step,
            loss: loss.to_scalar::<f32>()? as f64,
            lr,
            grad_norm: norm,
        };
        append_loss_row(&csv, &row)?;
        let rate = tokens as f64 / began.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("loss {:.3}, {rate:.0} tokens/s", row.loss));
        bar.inc(1);
        rows.push(row);
        if step % config.checkpoint_every == 0 || step == config.steps {
            write_checkpoint(
                &ckpt,
                &CheckpointState {
                    step,
                    ..state.clone()
                },
                net,
                &opt,
            )?;
        }
    }
    bar.finish_and_clear();
    let mine: Vec<f64> = rows
        .iter()
        .filter(|r| r.stage == config.name)
        .map(|r| r.loss)
        .collect();
    let tenth = (mine.len() / 10).max(1);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
    crate::plot::write_loss_svg(&run_dir.join("loss.svg"), &rows)?;
    Ok(StageReport {
        name: config.name.clone(),
        step,
        complete: step == config.steps,
        resumed_from: start,
        first_loss: mean(&mine[..tenth.min(mine.len())]),
        last_loss: mean(&mine[mine.len().saturating_sub(tenth)..]),
        tokens,
        seconds: began.elapsed().as_secs_f64(),
    })
}

/// Loads the parameters of a stage's last checkpoint into `net`; `None` when the stage has none.
pub fn load_stage_params(
    net: &DraftNet,
    run_dir: &Path,
    stage: &str,
) -> Result<Option<u64>, DraftError> {
    match read_checkpoint(&run_dir.join("checkpoints").join(stage))? {
        Some((state, params, _)) => {
            net.load(&params)?;
            Ok(Some(state.step))
        }
        None => Ok(None),
    }
}

fn progress_bar(config: &StageConfig, start: u64) -> indicatif::ProgressBar {
    if !config.progress {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(config.steps);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(config.name.clone());
    bar.set_position(start);
    bar
}

type Checkpoint = (
    CheckpointState,
    HashMap<String, Tensor>,
    HashMap<String, Tensor>,
);

fn read_checkpoint(dir: &Path) -> Result<Option<Checkpoint>, DraftError> {
    let state_file = dir.join("state.json");
    if !state_file.is_file() {
        return Ok(None);
    }
    let bad = |reason: String| DraftError::Checkpoint {
        path: dir.to_path_buf(),
        reason,
    };
    let text = fs_err::read_to_string(&state_file).map_err(|e| bad(e.to_string()))?;
    let state: CheckpointState = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let load = |name: &str| {
        candle_core::safetensors::load(dir.join(name), &candle_core::Device::Cpu)
            .map_err(|e| bad(format!("{name}: {e}")))
    };
    Ok(Some((
        state,
        load("params.safetensors")?,
        load("optimizer.safetensors")?,
    )))
}

/// Writes the checkpoint beside its final place, then swaps it in, so a kill leaves the old one or the new one.
fn write_checkpoint(
    dir: &Path,
    state: &CheckpointState,
    net: &DraftNet,
    opt: &AdamW,
) -> Result<(), DraftError> {
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        fs_err::remove_dir_all(&tmp).map_err(io_error(&tmp))?;
    }
    fs_err::create_dir_all(&tmp).map_err(io_error(&tmp))?;
    let params: HashMap<String, Tensor> = net
        .params()
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    candle_core::safetensors::save(&params, tmp.join("params.safetensors"))?;
    candle_core::safetensors::save(&opt.state(), tmp.join("optimizer.safetensors"))?;
    let json =
        serde_json::to_string_pretty(state).map_err(|e| DraftError::Invalid(e.to_string()))?;
    let state_file = tmp.join("state.json");
    fs_err::write(&state_file, json).map_err(io_error(&state_file))?;
    let old = dir.with_extension("old");
    if dir.exists() {
        if old.exists() {
            fs_err::remove_dir_all(&old).map_err(io_error(&old))?;
        }
        fs_err::rename(dir, &old).map_err(io_error(dir))?;
    }
    fs_err::rename(&tmp, dir).map_err(io_error(dir))?;
    if old.exists() {
        fs_err::remove_dir_all(&old).map_err(io_error(&old))?;
    }
    Ok(())
}

/// The rows of `loss.csv` (none when it does not exist).
pub fn read_loss_csv(path: &Path) -> Result<Vec<LossRow>, DraftError> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = fs_err::read_to_string(path).map_err(io_error(path))?;
    let bad =
        |line: usize| DraftError::Invalid(format!("{} line {line} is malformed", path.display()));
    text.lines()
        .enumerate()
        .skip(1)
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() != 5 {
                return Err(bad(i + 1));
            }
            let num = |s: &str| s.parse::<f64>().map_err(|_| bad(i + 1));
            Ok(LossRow {
                stage: f[0].to_string(),
                step: f[1].parse().map_err(|_| bad(i + 1))?,
                loss: num(f[2])?,
                lr: num(f[3])?,
                grad_norm: num(f[4])?,
            })
        })
        .collect()
}

fn csv_line(r: &LossRow) -> String {
    format!(
        "{},{},{:.6},{:.6e},{:.4}\n",
        r.stage, r.step, r.loss, r.lr, r.grad_norm
    )
}

fn write_loss_csv(path: &Path, rows: &[LossRow]) -> Result<(), DraftError> {
    let mut text = format!("{CSV_HEADER}\n");
    rows.iter().for_each(|r| text.push_str(&csv_line(r)));
    fs_err::write(path, text).map_err(io_error(path))
}

fn append_loss_row(path: &Path, row: &LossRow) -> Result<(), DraftError> {
    use std::io::Write;
    let mut f = fs_err::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_error(path))?;
    f.write_all(csv_line(row).as_bytes())
        .map_err(io_error(path))
}

/// Where a stage keeps its checkpoints under `run_dir`.
pub fn checkpoint_dir(run_dir: &Path, stage: &str) -> PathBuf {
    run_dir.join("checkpoints").join(stage)
}
