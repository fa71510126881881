//! Times `qdot::matmul_t` on Qwen2.5-0.5B's shapes (random weights): `cargo run --release -p engram-engine --example qdot_bench`.
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use engram_engine::internals::backend::qdot::{matmul_t, QKind};
use std::time::Instant;

fn main() {
    gemm_rate();
    crossover();
    {
        // 24 distinct gate/up weights, as the model's layers: read from memory, not cache.
        let (n, k) = (9728usize, 896usize);
        let ws: Vec<QTensor> = (0..24)
            .map(|_| {
                let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
                QTensor::quantize(&w, GgmlDType::Q5_0).unwrap()
            })
            .collect();
        let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.1).sin()).collect();
        let t = Instant::now();
        let mut bytes = 0;
        for _ in 0..5 {
            for q in &ws {
                let data = q.data().unwrap();
                bytes += data.len();
                std::hint::black_box(matmul_t(QKind::Q5_0, &data, n, k, &x));
            }
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "24 layers of Q5_0 {n}x{k}: {:.3} ms per layer, {:.1} GB/s",
            s * 1e3 / 120.0,
            bytes as f64 / s / 1e9
        );
    }
    for (dtype, n, k, m) in [
        (GgmlDType::Q5_0, 4864usize, 896usize, 1usize),
        (GgmlDType::Q5_0, 9728, 896, 1),
        (GgmlDType::Q8_0, 151_936, 896, 1),
        (GgmlDType::Q4_1, 1536, 576, 1),
        (GgmlDType::Q5_0, 4864, 896, 128),
    ] {
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let data = q.data().unwrap();
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.1).sin()).collect();
        let kind = QKind::of(dtype).unwrap();
        let _ = matmul_t(kind, &data, n, k, &x);
        let reps = (200_000_000 / (data.len() * m.min(8))).max(3);
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(matmul_t(kind, &data, n, k, &x));
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "{dtype:?} {n}x{k} m={m}: {:.3} ms, {:.1} GB/s of weights, {:.1} GMAC/s",
            s * 1e3,
            data.len() as f64 / s / 1e9,
            (n * k * m) as f64 / s / 1e9
        );
    }
}

fn gemm_rate() {
    for (m, n, k) in [
        (128usize, 9728usize, 896usize),
        (128, 896, 4864),
        (512, 9728, 896),
    ] {
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        let _ = x.matmul(&w.t().unwrap()).unwrap();
        let t = Instant::now();
        for _ in 0..5 {
            std::hint::black_box(x.matmul(&w.t().unwrap()).unwrap());
        }
        let s = t.elapsed().as_secs_f64() / 5.0;
        println!(
            "f32 GEMM {m}x{k} @ {k}x{n}: {:.2} ms, {:.1} GMAC/s",
            s * 1e3,
            (m * n * k) as f64 / s / 1e9
        );
    }
}

fn crossover() {
    use engram_engine::internals::backend::qgemm;
    let (n, k) = (9728usize, 896usize);
    let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, GgmlDType::Q5_0).unwrap();
    let data = q.data().unwrap();
    for m in [4usize, 8, 16, 32, 64] {
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.1).sin()).collect();
        let t = Instant::now();
        for _ in 0..5 {
            std::hint::black_box(matmul_t(QKind::Q5_0, &data, n, k, &x));
        }
        let a = t.elapsed().as_secs_f64() / 5.0;
        let t = Instant::now();
        for _ in 0..5 {
            std::hint::black_box(qgemm::matmul_t(GgmlDType::Q5_0, &data, n, k, &x).unwrap());
        }
        let b = t.elapsed().as_secs_f64() / 5.0;
        println!(
            "m={m}: int8 {:.2} ms, dequantized panels + GEMM {:.2} ms",
            a * 1e3,
            b * 1e3
        );
    }
}
