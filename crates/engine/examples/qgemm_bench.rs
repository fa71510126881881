//! Prefill-sized products with quantized weights (random, Qwen2.5-0.5B and -1.5B shapes): the panel GEMM of
//! `backend::qgemm` against dequantizing the whole weight and running candle's f32 matmul, in the same run.
//! `cargo run --release -p engram-engine --example qgemm_bench`
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use engram_engine::internals::backend::qgemm;
use std::time::Instant;

fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() / reps as f64
}

fn main() {
    for (dtype, n, k, m) in [
        (GgmlDType::Q5_0, 4864usize, 896usize, 128usize),
        (GgmlDType::Q4K, 8960, 1536, 128),
        (GgmlDType::Q6K, 1536, 8960, 128),
        (GgmlDType::Q4K, 8960, 1536, 512),
        (GgmlDType::Q4K, 8960, 1536, 1),
        (GgmlDType::Q6K, 1536, 8960, 1),
        (GgmlDType::Q5_0, 4864, 896, 1),
    ] {
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let data = q.data().unwrap();
        let whole = time(5, || {
            let deq = q.dequantize(&Device::Cpu).unwrap();
            std::hint::black_box(x.matmul(&deq.t().unwrap()).unwrap());
        });
        let panels = time(5, || {
            std::hint::black_box(qgemm::matmul_t(dtype, &data, n, k, &xs).unwrap());
        });
        let gmac = (m * n * k) as f64 / 1e9;
        println!(
            "{dtype:?} [{n}x{k}] m={m}: whole-weight dequantize + matmul {:.2} ms ({:.1} GMAC/s), panels {:.2} ms ({:.1} GMAC/s), {:.2}x",
            whole * 1e3,
            gmac / whole,
            panels * 1e3,
            gmac / panels,
            whole / panels
        );
    }
}
