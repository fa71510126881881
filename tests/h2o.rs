//! H2O KV eviction on the CPU backend with small random models: a budget that covers the whole sequence changes
//! nothing, a small one bounds the cache while keeping every head's recent window, and the engine's kept sets,
//! tokens and logits match a straightforward reference (a plain-loop transformer over the same weights that keeps
//! each head's keys in a list, accumulates their attention probabilities and drops the lowest-scoring older ones).

use engram_engine::internals::backend::cpu::CpuBackend;
use engram_engine::internals::backend::Backend;
use engram_engine::internals::h2o_decode::{decode, DecodeOptions, DecodeRun};
use engram_engine::internals::kv_cache::{KvCache, KvCacheConfig};
use engram_engine::internals::llama::LlamaModel;
use engram_engine::internals::model::synthetic::synthetic_config;
use engram_engine::internals::model::ModelFiles;
use engram_engine::{BudgetPart, KvBudget};

fn model() -> LlamaModel<CpuBackend> {
    let config = synthetic_config("tiny").unwrap();
    LlamaModel::synthetic(CpuBackend, &config, 11).unwrap()
}

fn prompts() -> Vec<Vec<u32>> {
    [70usize, 45, 90]
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            (0..n)
                .map(|j| ((i * 37 + j * 11 + 5) % 250) as u32)
                .collect()
        })
        .collect()
}

fn run(
    m: &LlamaModel<CpuBackend>,
    budget: Option<KvBudget>,
    slack: usize,
    steps: usize,
) -> (DecodeRun, usize) {
    let cfg = KvCacheConfig {
        block_size: 8,
        num_blocks: 128,
    };
    let mut kv = m.backend_kv(&cfg).unwrap();
    let mut cache = KvCache::new(cfg);
    let options = DecodeOptions {
        steps,
        budget,
        slack,
        chunk: 32,
    };
    let r = decode(
        m,
        &mut kv,
        &mut cache,
        &prompts(),
        &options,
        None,
        &mut |_, _| Ok(()),
    )
    .unwrap();
    (r, cache.usage().used_blocks)
}

fn tokens(heavy: usize, recent: usize) -> KvBudget {
    KvBudget {
        heavy: BudgetPart::Tokens(heavy),
        recent: BudgetPart::Tokens(recent),
    }
}

#[test]
fn a_budget_covering_the_sequence_changes_nothing() {
    let m = model();
    let (full, left) = run(&m, None, 1, 12);
    assert_eq!(left, 0, "everything is released");
    let (covered, _) = run(&m, Some(tokens(60, 60)), 1, 12);
    assert_eq!(covered.tokens, full.tokens);
    assert!(covered
        .states
        .iter()
        .all(|s| s.as_ref().unwrap().evicted == 0));
}

#[test]
fn a_small_budget_bounds_the_cache_and_keeps_the_recent_window() {
    let m = model();
    let (full, _) = run(&m, None, 1, 20);
    let budget = tokens(6, 10);
    for slack in [1, 8] {
        let (r, left) = run(&m, Some(budget), slack, 20);
        assert_eq!(left, 0);
        // Each sequence holds at most budget + slack tokens after the prefill: 16 + 8 in blocks of 8, plus one.
        assert!(
            r.peak_decode_blocks < full.peak_decode_blocks,
            "{} vs {}",
            r.peak_decode_blocks,
            full.peak_decode_blocks
        );
        assert!(
            r.peak_decode_blocks <= 3 * (16 + slack).div_ceil(8) + 3,
            "{}",
            r.peak_decode_blocks
        );
        let c = m.config();
        for (i, s) in r.states.iter().enumerate() {
            let s = s.as_ref().unwrap();
            let total = prompts()[i].len() + 20;
            assert!(s.evicted > 0);
            let len = total - s.evicted;
            assert!(len < 16 + slack);
            // Every layer and head holds the newest `recent` positions and `len` distinct, increasing positions.
            for h in 0..c.num_layers * c.num_kv_heads {
                let pos = s.positions(h, len);
                assert!(pos.windows(2).all(|w| w[0] < w[1]), "{pos:?}");
                assert_eq!(*pos.last().unwrap() as usize, total - 1);
                for p in total - 10..total {
                    assert!(
                        pos.contains(&(p as u32)),
                        "seq {i} head {h}: recent {p} evicted: {pos:?}"
                    );
                }
            }
        }
    }
}

/// One cached key of the reference: absolute position, key, value, accumulated score.
type Entry = (usize, Vec<f32>, Vec<f32>, f64);

/// A plain-loop Llama over the fixture's weights, one token at a time, with H2O over explicit per-head key lists.
struct Reference {
    files: ModelFiles,
    /// Per layer and KV head, its kept keys in cache order.
    cache: Vec<Vec<Entry>>,
}

impl Reference {
    fn w(&self, name: &str) -> Vec<f32> {
        self.files
            .weights
            .get(name)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    }

    fn matvec(w: &[f32], x: &[f32]) -> Vec<f32> {
        w.chunks_exact(x.len())
            .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    }

    fn rms(x: &[f32], g: &[f32], eps: f32) -> Vec<f32> {
        let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
        let r = 1.0 / (ms + eps).sqrt();
        x.iter().zip(g).map(|(v, w)| v * r * w).collect()
    }

    fn rope(v: &mut [f32], pos: usize, theta: f64) {
        let d = v.len();
        let half = d / 2;
        for j in 0..half {
            let freq = 1.0 / theta.powf(2.0 * j as f64 / d as f64);
            let (s, c) = ((pos as f64 * freq) as f32).sin_cos();
            let (a, b) = (v[j], v[j + half]);
            v[j] = a * c - b * s;
            v[j + half] = b * c + a * s;
        }
    }

    /// Feeds `token` at `pos`; returns the logits.
    fn step(&mut self, token: u32, pos: usize) -> Vec<f32> {
        let c = self.files.config.clone();
        let (h, kvh, d) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let eps = c.rms_norm_eps as f32;
        let hidden = c.hidden_size;
        let embed = self.w("model.embed_tokens.weight");
        let mut x = embed[token as usize * hidden..(token as usize + 1) * hidden].to_vec();
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}.");
            let hn = Self::rms(&x, &self.w(&format!("{p}input_layernorm.weight")), eps);
            let mut q = Self::matvec(&self.w(&format!("{p}self_attn.q_proj.weight")), &hn);
            let mut k = Self::matvec(&self.w(&format!("{p}self_attn.k_proj.weight")), &hn);
            let v = Self::matvec(&self.w(&format!("{p}self_attn.v_proj.weight")), &hn);
            for head in q.chunks_exact_mut(d).chain(k.chunks_exact_mut(d)) {
                Self::rope(head, pos, c.rope_theta);
            }
            for g in 0..kvh {
                let entry = (
                    pos,
                    k[g * d..(g + 1) * d].to_vec(),
                    v[g * d..(g + 1) * d].to_vec(),
                    0.0,
                );
                self.cache[l * kvh + g].push(entry);
            }
            let mut out = vec![0.0f32; h * d];
            for head in 0..h {
                let list = &mut self.cache[l * kvh + head / (h / kvh)];
                let qh = &q[head * d..(head + 1) * d];
                let s: Vec<f32> = list
                    .iter()
                    .map(|e| {
                        qh.iter().zip(&e.1).map(|(a, b)| a * b).sum::<f32>() / (d as f32).sqrt()
                    })
                    .collect();
                let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = s.iter().map(|v| (v - max).exp()).sum();
                for (e, sv) in list.iter_mut().zip(&s) {
                    let prob = (sv - max).exp() / sum;
                    e.3 += prob as f64;
                    for (o, vv) in out[head * d..(head + 1) * d].iter_mut().zip(&e.2) {
                        *o += prob * vv;
                    }
                }
            }
            let o = Self::matvec(&self.w(&format!("{p}self_attn.o_proj.weight")), &out);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let hn = Self::rms(
                &x,
                &self.w(&format!("{p}post_attention_layernorm.weight")),
                eps,
            );
            let gate = Self::matvec(&self.w(&format!("{p}mlp.gate_proj.weight")), &hn);
            let up = Self::matvec(&self.w(&format!("{p}mlp.up_proj.weight")), &hn);
            let act: Vec<f32> = gate
                .iter()
                .zip(&up)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let down = Self::matvec(&self.w(&format!("{p}mlp.down_proj.weight")), &act);
            x.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
        }
        let xn = Self::rms(&x, &self.w("model.norm.weight"), eps);
        Self::matvec(&self.w("lm_head.weight"), &xn)
    }

    /// Drops, per layer and KV head, all but the `recent` newest keys and the `heavy` highest-scoring older ones
    /// (ties: the later), once a list holds `heavy + recent + slack` keys.
    fn evict(&mut self, heavy: usize, recent: usize, slack: usize) {
        for list in &mut self.cache {
            let n = list.len();
            if n < heavy + recent + slack.max(1) {
                continue;
            }
            let older = n - recent;
            let mut order: Vec<usize> = (0..older).collect();
            order.sort_by(|&a, &b| list[b].3.partial_cmp(&list[a].3).unwrap().then(b.cmp(&a)));
            let keep: std::collections::HashSet<usize> =
                order[..heavy].iter().copied().chain(older..n).collect();
            let mut i = 0;
            list.retain(|_| {
                i += 1;
                keep.contains(&(i - 1))
            });
        }
    }
}

fn argmax(x: &[f32]) -> u32 {
    x.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0 as u32
}

#[test]
fn kept_sets_tokens_and_logits_match_a_reference() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/engine/llama");
    let files = ModelFiles::load(dir).unwrap();
    let m = LlamaModel::new(CpuBackend, &files).unwrap();
    let c = files.config.clone();
    let (heavy, recent, slack, steps) = (6, 8, 3, 30);
    let prompts: Vec<Vec<u32>> = [50u32, 33]
        .iter()
        .map(|&n| (0..n).map(|j| (j * 29 + n) % c.vocab_size as u32).collect())
        .collect();
    let cfg = KvCacheConfig {
        block_size: 4,
        num_blocks: 64,
    };
    let mut kv = m.backend_kv(&cfg).unwrap();
    let mut cache = KvCache::new(cfg);
    let options = DecodeOptions {
        steps,
        budget: Some(tokens(heavy, recent)),
        slack,
        chunk: 16,
    };
    let mut engine_logits: Vec<Vec<f32>> = Vec::new();
    let run = decode(
        &m,
        &mut kv,
        &mut cache,
        &prompts,
        &options,
        None,
        &mut |_, l| {
            engine_logits.push(CpuBackend.to_host(l).unwrap().0);
            Ok(())
        },
    )
    .unwrap();
    let vocab = c.vocab_size;
    for (i, prompt) in prompts.iter().enumerate() {
        let mut r = Reference {
            files: ModelFiles::load(dir).unwrap(),
            cache: vec![Vec::new(); c.num_layers * c.num_kv_heads],
        };
        let mut logits = Vec::new();
        for (pos, &t) in prompt.iter().enumerate() {
            logits = r.step(t, pos);
        }
        r.evict(heavy, recent, slack);
        let mut next = argmax(&logits);
        for (step, step_logits) in engine_logits.iter().enumerate() {
            assert_eq!(run.tokens[i][step], next, "sequence {i} step {step}");
            let logits = r.step(next, prompt.len() + step);
            let ours = &step_logits[i * vocab..(i + 1) * vocab];
            let diff = ours
                .iter()
                .zip(&logits)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                diff < 1e-3,
                "sequence {i} step {step}: logits differ by {diff}"
            );
            next = argmax(&logits);
            r.evict(heavy, recent, slack);
        }
        // The same tokens kept by every layer and head.
        let state = run.states[i].as_ref().unwrap();
        let len = prompt.len() + steps - state.evicted;
        for (h, list) in r.cache.iter().enumerate() {
            let want: Vec<u32> = list.iter().map(|e| e.0 as u32).collect();
            assert_eq!(
                state.positions(h, len),
                want,
                "sequence {i}, layer and head {h}"
            );
        }
        assert!(state.evicted > prompt.len() / 2, "{}", state.evicted);
    }
}
