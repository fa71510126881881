//! The CPU backend: candle-core tensors (f32) for the matrix products, plain loops split over the cores for the
//! element-wise steps and for attention over the paged cache.

use std::sync::Arc;

use super::cpu_attention::{
    flat_masks, hip_masks, row_owners, row_probabilities, row_spans, slot_of, Operands,
};
use super::cpu_tensor::{op_err, CpuTensor};
use super::{AttentionBatch, Backend, BackendError, KvLayout};
use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

/// Runs the model on the CPU with candle-core.
#[derive(Debug, Clone, Default)]
pub struct CpuBackend;

/// K and V of every layer: `[num_blocks * block_size, kv_heads * head_dim]` each, row per slot; and the H2O
/// attention score of every slot and KV head (`[num_blocks * block_size, kv_heads]` per layer).
#[derive(Debug)]
pub struct CpuKv {
    layout: KvLayout,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    scores: Vec<Vec<f32>>,
}

/// The rows, columns and data of a 2-D tensor.
fn host(x: &CpuTensor, op: &'static str) -> Result<(Vec<f32>, usize, usize), BackendError> {
    let x = x.dense(op)?;
    let (r, c) = x.dims2().map_err(op_err(op))?;
    let data = x
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(op_err(op))?;
    Ok((data, r, c))
}

fn tensor(
    data: Vec<f32>,
    rows: usize,
    cols: usize,
    op: &'static str,
) -> Result<CpuTensor, BackendError> {
    Tensor::from_vec(data, (rows, cols), &Device::Cpu)
        .map(CpuTensor::Dense)
        .map_err(op_err(op))
}

/// Multiply-adds of an attention call (keys × head width × heads) below which it runs on one thread.
const PARALLEL_ATTENTION_WORK: usize = 1 << 16;

/// Runs `f(first_row, rows)` over contiguous chunks of `out`'s rows on every core (rayon's pool).
fn par_rows(out: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    use rayon::prelude::*;
    let rows = out.len() / width.max(1);
    let threads = rayon::current_num_threads().min(rows.max(1));
    if threads <= 1 || rows * width < 16_384 {
        f(0, out);
        return;
    }
    let per = rows.div_ceil(threads);
    out.par_chunks_mut(per * width)
        .enumerate()
        .for_each(|(i, chunk)| f(i * per, chunk));
}

fn rms_norm_rows(x: &mut [f32], weight: &[f32], eps: f32) {
    let width = weight.len();
    for row in x.chunks_exact_mut(width) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / width as f32;
        let scale = 1.0 / (ms + eps).sqrt();
        for (v, w) in row.iter_mut().zip(weight) {
            *v = *v * scale * w;
        }
    }
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Kv = CpuKv;

    fn run_step<R: Send>(&self, step: impl FnOnce() -> R + Send) -> R {
        rayon::scope(|_| step())
    }

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn weight(&self, host: &Tensor) -> Result<CpuTensor, BackendError> {
        host.to_dtype(DType::F32)
            .and_then(|t| t.contiguous())
            .map(CpuTensor::Dense)
            .map_err(op_err("weight"))
    }

    fn quantized_weight(&self, q: &Arc<QTensor>) -> Result<CpuTensor, BackendError> {
        CpuTensor::from_qtensor(q)
    }

    fn alloc_kv(&self, layout: KvLayout) -> Result<CpuKv, BackendError> {
        let n = layout.num_blocks * layout.block_size * layout.kv_heads * layout.head_dim;
        let slots = layout.num_blocks * layout.block_size * layout.kv_heads;
        Ok(CpuKv {
            layout,
            k: (0..layout.layers).map(|_| vec![0.0; n]).collect(),
            v: (0..layout.layers).map(|_| vec![0.0; n]).collect(),
            scores: (0..layout.layers).map(|_| vec![0.0; slots]).collect(),
        })
    }

    fn embed(&self, table: &CpuTensor, ids: &[u32]) -> Result<CpuTensor, BackendError> {
        table.rows(ids).map(CpuTensor::Dense)
    }

    fn rms_norm(
        &self,
        x: &CpuTensor,
        weight: &CpuTensor,
        eps: f32,
    ) -> Result<CpuTensor, BackendError> {
        let (mut data, r, c) = host(x, "rms_norm")?;
        let w = weight
            .dense("rms_norm")?
            .to_vec1::<f32>()
            .map_err(op_err("rms_norm"))?;
        par_rows(&mut data, c, |_, rows| rms_norm_rows(rows, &w, eps));
        tensor(data, r, c, "rms_norm")
    }

    fn add_rms_norm(
        &self,
        residual: &mut CpuTensor,
        delta: &CpuTensor,
        weight: &CpuTensor,
        eps: f32,
    ) -> Result<CpuTensor, BackendError> {
        self.add(residual, delta)?;
        self.rms_norm(residual, weight, eps)
    }

    fn add(&self, residual: &mut CpuTensor, delta: &CpuTensor) -> Result<(), BackendError> {
        let sum = (residual.dense("add")? + delta.dense("add")?).map_err(op_err("add"))?;
        *residual = CpuTensor::Dense(sum);
        Ok(())
    }

    fn linear(
        &self,
        x: &CpuTensor,
        w: &CpuTensor,
        bias: Option<&CpuTensor>,
    ) -> Result<CpuTensor, BackendError> {
        let y = w.matmul_t(x.dense("linear")?)?;
        match bias {
            Some(b) => y
                .broadcast_add(b.dense("linear")?)
                .map(CpuTensor::Dense)
                .map_err(op_err("linear")),
            None => Ok(CpuTensor::Dense(y)),
        }
    }

    fn rope(
        &self,
        x: &mut CpuTensor,
        head_dim: usize,
        positions: &[u32],
        inv_freq: &[f32],
    ) -> Result<(), BackendError> {
        let (mut data, r, c) = host(x, "rope")?;
        if r != positions.len() || c % head_dim != 0 || inv_freq.len() * 2 != head_dim {
            return Err(BackendError::Shape {
                op: "rope",
                reason: format!(
                    "{r}x{c} activations, {} positions, head_dim {head_dim}, {} frequencies",
                    positions.len(),
                    inv_freq.len()
                ),
            });
        }
        let half = head_dim / 2;
        par_rows(&mut data, c, |first, rows| {
            for (i, row) in rows.chunks_exact_mut(c).enumerate() {
                let pos = positions[first + i] as f32;
                let (sin, cos): (Vec<f32>, Vec<f32>) =
                    inv_freq.iter().map(|f| (pos * f).sin_cos()).unzip();
                for head in row.chunks_exact_mut(head_dim) {
                    for j in 0..half {
                        let (a, b) = (head[j], head[j + half]);
                        head[j] = a * cos[j] - b * sin[j];
                        head[j + half] = b * cos[j] + a * sin[j];
                    }
                }
            }
        });
        *x = tensor(data, r, c, "rope")?;
        Ok(())
    }

    fn swiglu(&self, gate: &CpuTensor, up: &CpuTensor) -> Result<CpuTensor, BackendError> {
        let (mut g, r, c) = host(gate, "swiglu")?;
        let (u, _, _) = host(up, "swiglu")?;
        par_rows(&mut g, c, |first, rows| {
            let u = &u[first * c..first * c + rows.len()];
            for (gv, uv) in rows.iter_mut().zip(u) {
                *gv = *gv / (1.0 + (-*gv).exp()) * uv;
            }
        });
        tensor(g, r, c, "swiglu")
    }

    fn write_kv(
        &self,
        kv: &mut CpuKv,
        layer: usize,
        k: &CpuTensor,
        v: &CpuTensor,
        slots: &[u32],
    ) -> Result<(), BackendError> {
        let (kd, r, width) = host(k, "write_kv")?;
        let (vd, _, _) = host(v, "write_kv")?;
        let l = kv.layout;
        let capacity = (l.num_blocks * l.block_size) as u32;
        if r != slots.len()
            || width != l.kv_heads * l.head_dim
            || slots.iter().any(|&s| s >= capacity)
        {
            return Err(BackendError::Shape {
                op: "write_kv",
                reason: format!("{r} rows of width {width} for {} slots", slots.len()),
            });
        }
        for (i, &slot) in slots.iter().enumerate() {
            let dst = slot as usize * width;
            kv.k[layer][dst..dst + width].copy_from_slice(&kd[i * width..(i + 1) * width]);
            kv.v[layer][dst..dst + width].copy_from_slice(&vd[i * width..(i + 1) * width]);
        }
        Ok(())
    }

    fn attention(
        &self,
        q: &CpuTensor,
        kv: &CpuKv,
        layer: usize,
        heads: usize,
        batch: &AttentionBatch,
    ) -> Result<CpuTensor, BackendError> {
        let (qd, tokens, width) = host(q, "attention")?;
        let l = kv.layout;
        let hd = l.head_dim;
        if width != heads * hd || !heads.is_multiple_of(l.kv_heads) {
            return Err(BackendError::Shape {
                op: "attention",
                reason: format!("query width {width} for {heads} heads of {hd}"),
            });
        }
        let owner = row_owners(batch, tokens, "attention")?;
        let (kc, vc) = (&kv.k[layer], &kv.v[layer]);
        let masks = hip_masks(
            &Operands {
                q: &qd,
                k: kc,
                heads,
                kv_heads: l.kv_heads,
                head_dim: hd,
            },
            batch,
        );
        let group = heads / l.kv_heads;
        let kv_width = l.kv_heads * hd;
        let bs = batch.block_size;
        let mut out = vec![0.0f32; tokens * width];
        // One unit of work per (token, head), so that a decode step's few rows still spread over the cores.
        let keys: usize = owner.iter().map(|&(_, pos)| pos + 1).sum();
        let units_per_task = if keys * hd * heads < PARALLEL_ATTENTION_WORK {
            tokens * heads
        } else {
            (tokens * heads).div_ceil(rayon::current_num_threads() * 4)
        };
        let units = |first: usize, out: &mut [f32]| {
            let mut probs = Vec::new();
            for (i, oh) in out.chunks_exact_mut(hd).enumerate() {
                let (t, h) = ((first + i) / heads, (first + i) % heads);
                let (s, _) = owner[t];
                let table = &batch.seqs[s].block_table;
                let qh = &qd[t * width + h * hd..t * width + (h + 1) * hd];
                let off = (h / group) * hd;
                let spans = row_spans(&masks, batch, owner[t], h / group, l.kv_heads);
                row_probabilities(qh, kc, table, bs, kv_width, off, &spans, &mut probs);
                let key_slots = spans.iter().flat_map(|r| r.clone());
                for (w, j) in probs.iter().zip(key_slots) {
                    let base = slot_of(table, bs, j) * kv_width + off;
                    for (o, v) in oh.iter_mut().zip(&vc[base..base + hd]) {
                        *o += w * v;
                    }
                }
            }
        };
        {
            use rayon::prelude::*;
            out.par_chunks_mut(units_per_task.max(1) * hd)
                .enumerate()
                .for_each(|(task, chunk)| units(task * units_per_task, chunk));
        }
        tensor(out, tokens, width, "attention")
    }

    fn hip_mask(
        &self,
        q: &CpuTensor,
        kv: &CpuKv,
        layer: usize,
        heads: usize,
        batch: &AttentionBatch,
    ) -> Result<Vec<u32>, BackendError> {
        let (qd, _, width) = host(q, "hip_mask")?;
        let l = kv.layout;
        if width != heads * l.head_dim || !heads.is_multiple_of(l.kv_heads) {
            return Err(BackendError::Shape {
                op: "hip_mask",
                reason: format!("query width {width} for {heads} heads of {}", l.head_dim),
            });
        }
        let ops = Operands {
            q: &qd,
            k: &kv.k[layer],
            heads,
            kv_heads: l.kv_heads,
            head_dim: l.head_dim,
        };
        Ok(flat_masks(&hip_masks(&ops, batch)))
    }

    fn supports_h2o(&self) -> bool {
        true
    }

    fn reset_scores(&self, kv: &mut CpuKv, slots: &[u32]) -> Result<(), BackendError> {
        let l = kv.layout;
        let capacity = (l.num_blocks * l.block_size) as u32;
        if slots.iter().any(|&s| s >= capacity) {
            return Err(BackendError::Shape {
                op: "reset_scores",
                reason: format!("a slot beyond {capacity}"),
            });
        }
        for layer in &mut kv.scores {
            for &slot in slots {
                let at = slot as usize * l.kv_heads;
                layer[at..at + l.kv_heads].fill(0.0);
            }
        }
        Ok(())
    }

    fn accumulate_attention(
        &self,
        q: &CpuTensor,
        kv: &mut CpuKv,
        layer: usize,
        heads: usize,
        batch: &AttentionBatch,
        tracked: &[usize],
    ) -> Result<(), BackendError> {
        let (qd, tokens, width) = host(q, "accumulate_attention")?;
        let l = kv.layout;
        let hd = l.head_dim;
        if width != heads * hd
            || !heads.is_multiple_of(l.kv_heads)
            || tracked.iter().any(|&s| s >= batch.seqs.len())
        {
            return Err(BackendError::Shape {
                op: "accumulate_attention",
                reason: format!(
                    "query width {width} for {heads} heads of {hd}, chunks {tracked:?}"
                ),
            });
        }
        let owner = row_owners(batch, tokens, "accumulate_attention")?;
        let (kc, scores) = (&kv.k[layer], &mut kv.scores[layer]);
        let group = heads / l.kv_heads;
        let kv_width = l.kv_heads * hd;
        let bs = batch.block_size;
        let mut probs = Vec::new();
        for (t, &(s, pos)) in owner.iter().enumerate() {
            if !tracked.contains(&s) {
                continue;
            }
            let table = &batch.seqs[s].block_table;
            for h in 0..heads {
                let qh = &qd[t * width + h * hd..t * width + (h + 1) * hd];
                let kvh = h / group;
                let all = 0..pos + 1;
                let spans = std::slice::from_ref(&all);
                row_probabilities(qh, kc, table, bs, kv_width, kvh * hd, spans, &mut probs);
                for (j, p) in probs.iter().enumerate() {
                    scores[slot_of(table, bs, j) * l.kv_heads + kvh] += p;
                }
            }
        }
        Ok(())
    }

    fn read_scores(&self, kv: &CpuKv, slots: &[u32]) -> Result<Vec<f32>, BackendError> {
        let l = kv.layout;
        let capacity = (l.num_blocks * l.block_size) as u32;
        if slots.iter().any(|&s| s >= capacity) {
            return Err(BackendError::Shape {
                op: "read_scores",
                reason: format!("a slot beyond {capacity}"),
            });
        }
        let mut out = Vec::with_capacity(l.layers * l.kv_heads * slots.len());
        for layer in &kv.scores {
            for h in 0..l.kv_heads {
                out.extend(slots.iter().map(|&s| layer[s as usize * l.kv_heads + h]));
            }
        }
        Ok(out)
    }

    fn compact_kv(
        &self,
        kv: &mut CpuKv,
        slots: &[u32],
        keep: &[u32],
        n: usize,
    ) -> Result<(), BackendError> {
        let l = kv.layout;
        super::check_compaction(&l, slots, keep, n)?;
        let (hd, kvh) = (l.head_dim, l.kv_heads);
        let kv_width = kvh * hd;
        for layer in 0..l.layers {
            for h in 0..kvh {
                let list = &keep[(layer * kvh + h) * n..][..n];
                // Ascending sources never lie before their destination, so a forward pass moves each once.
                for (j, &i) in list.iter().enumerate() {
                    let (from, to) = (slots[i as usize] as usize, slots[j] as usize);
                    if from == to {
                        continue;
                    }
                    for buf in [&mut kv.k[layer], &mut kv.v[layer]] {
                        buf.copy_within(
                            from * kv_width + h * hd..from * kv_width + (h + 1) * hd,
                            to * kv_width + h * hd,
                        );
                    }
                    kv.scores[layer][to * kvh + h] = kv.scores[layer][from * kvh + h];
                }
            }
        }
        Ok(())
    }

    fn gather_rows(&self, x: &CpuTensor, rows: &[u32]) -> Result<CpuTensor, BackendError> {
        x.dense("gather_rows")?;
        x.rows(rows).map(CpuTensor::Dense)
    }

    fn to_host(&self, x: &CpuTensor) -> Result<(Vec<f32>, usize, usize), BackendError> {
        host(x, "to_host")
    }

    fn concat_rows(&self, parts: &[&CpuTensor]) -> Result<CpuTensor, BackendError> {
        CpuTensor::concat_rows(parts)
    }

    fn rope_qkv_write(
        &self,
        qkv: &CpuTensor,
        kv: &mut CpuKv,
        layer: usize,
        heads: usize,
        positions: &[u32],
        slots: &[u32],
        inv_freq: &[f32],
    ) -> Result<CpuTensor, BackendError> {
        let hd = kv.layout.head_dim;
        let (q_width, kv_width) = (heads * hd, kv.layout.kv_heads * hd);
        let qkv = qkv.dense("rope_qkv_write")?;
        let part = |start: usize, len: usize| {
            qkv.narrow(1, start, len)
                .and_then(|t| t.contiguous())
                .map(CpuTensor::Dense)
                .map_err(op_err("rope_qkv_write"))
        };
        let (mut q, mut k, v) = (
            part(0, q_width)?,
            part(q_width, kv_width)?,
            part(q_width + kv_width, kv_width)?,
        );
        self.rope(&mut q, hd, positions, inv_freq)?;
        self.rope(&mut k, hd, positions, inv_freq)?;
        self.write_kv(kv, layer, &k, &v, slots)?;
        Ok(q)
    }

    fn swiglu_packed(&self, gate_up: &CpuTensor) -> Result<CpuTensor, BackendError> {
        let gate_up = gate_up.dense("swiglu_packed")?;
        let (_, c) = gate_up.dims2().map_err(op_err("swiglu_packed"))?;
        let half = |start: usize| {
            gate_up
                .narrow(1, start, c / 2)
                .and_then(|t| t.contiguous())
                .map(CpuTensor::Dense)
                .map_err(op_err("swiglu_packed"))
        };
        self.swiglu(&half(0)?, &half(c / 2)?)
    }

    fn random_weight(
        &self,
        shape: &[usize],
        seed: u64,
        offset: f32,
        std: f32,
    ) -> Result<CpuTensor, BackendError> {
        crate::model::synthetic::random_host_tensor(shape, seed, offset, std)
            .map(CpuTensor::Dense)
            .map_err(op_err("random_weight"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SeqChunk;

    fn t(data: &[f32], r: usize, c: usize) -> CpuTensor {
        CpuTensor::Dense(Tensor::from_slice(data, (r, c), &Device::Cpu).unwrap())
    }

    #[test]
    fn linear_is_x_times_w_transposed_plus_bias() {
        let b = CpuBackend;
        let x = t(&[1.0, 2.0], 1, 2);
        let w = t(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], 3, 2);
        let bias = Tensor::from_slice(&[0.5f32, 0.0, -1.0], 3, &Device::Cpu)
            .unwrap()
            .into();
        let y = b.linear(&x, &w, Some(&bias)).unwrap();
        assert_eq!(b.to_host(&y).unwrap().0, vec![1.5, 2.0, 2.0]);
    }

    #[test]
    fn attention_over_pages_matches_a_dense_reference() {
        // One sequence of 3 tokens in blocks [2, 0] of size 2; one head of dim 2, one KV head.
        let b = CpuBackend;
        let layout = KvLayout {
            layers: 1,
            num_blocks: 3,
            block_size: 2,
            kv_heads: 1,
            head_dim: 2,
        };
        let mut kv = b.alloc_kv(layout).unwrap();
        let keys = [[1.0f32, 0.0], [0.0, 1.0], [1.0, 1.0]];
        let vals = [[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]];
        let k = t(&keys.concat(), 3, 2);
        let v = t(&vals.concat(), 3, 2);
        b.write_kv(&mut kv, 0, &k, &v, &[4, 5, 0]).unwrap();
        let q = t(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], 3, 2);
        let batch = AttentionBatch {
            seqs: vec![SeqChunk {
                q_len: 3,
                context_len: 3,
                block_table: vec![2, 0],
                hip: None,
            }],
            block_size: 2,
        };
        let (out, _, _) = b
            .to_host(&b.attention(&q, &kv, 0, 1, &batch).unwrap())
            .unwrap();
        for (i, qrow) in [[1.0f32, 0.0], [0.0, 1.0], [1.0, 1.0]].iter().enumerate() {
            let s: Vec<f32> = (0..=i)
                .map(|j| (qrow[0] * keys[j][0] + qrow[1] * keys[j][1]) / 2f32.sqrt())
                .collect();
            let m = s.iter().cloned().fold(f32::MIN, f32::max);
            let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f32 = e.iter().sum();
            for d in 0..2 {
                let want: f32 = (0..=i).map(|j| e[j] / z * vals[j][d]).sum();
                assert!((out[i * 2 + d] - want).abs() < 1e-6, "token {i} dim {d}");
            }
        }
    }

    #[test]
    fn rope_rotates_halves_and_keeps_position_zero() {
        let b = CpuBackend;
        let mut x = t(&[1.0, 2.0, 3.0, 4.0, 1.0, 0.0, 0.0, 0.0], 2, 4);
        b.rope(&mut x, 4, &[0, 1], &[1.0, 0.5]).unwrap();
        let (d, _, _) = b.to_host(&x).unwrap();
        assert_eq!(&d[..4], &[1.0, 2.0, 3.0, 4.0]);
        assert!((d[4] - 1f32.cos()).abs() < 1e-6 && (d[6] - 1f32.sin()).abs() < 1e-6);
    }
}
