//! Prefill-sized products with quantized weights (random, Qwen2.5-0.5B and -1.5B shapes): the panel GEMM of
//! `backend::qgemm` (f32 kernels, and AMX bf16 tiles or AVX512-BF16 dot products where the CPU has them) against dequantizing the whole weight
//! and running candle's f32 matmul, in the same run.
//! `cargo run --release -p engram-engine --example qgemm_bench`
use candle_core::quantized::QMatMul;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Module;
use candle_core::{Device, Tensor};
use engram_engine::internals::backend::kdot;
use engram_engine::internals::backend::qgemm::{self, PanelKernel};
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
        let panels = |kernel| {
            time(5, || {
                let out = qgemm::matmul_t_with(kernel, dtype, &data, n, k, &xs).unwrap();
                std::hint::black_box(out);
            })
        };
        let f32_panels = panels(PanelKernel::F32);
        let gmac = (m * n * k) as f64 / 1e9;
        print!(
            "{dtype:?} [{n}x{k}] m={m}: whole-weight dequantize + matmul {:.2} ms ({:.1} GMAC/s), f32 panels {:.2} ms ({:.1} GMAC/s, {:.2}x)",
            whole * 1e3,
            gmac / whole,
            f32_panels * 1e3,
            gmac / f32_panels,
            whole / f32_panels
        );
        for (kernel, name) in [
            (PanelKernel::Tiles, "AMX tiles"),
            (PanelKernel::Bf16, "AVX512-BF16"),
        ] {
            if kernel.usable(k) {
                let t = panels(kernel);
                print!(
                    ", {name} {:.2} ms ({:.1} GMAC/s, {:.2}x the f32 panels)",
                    t * 1e3,
                    gmac / t,
                    f32_panels / t
                );
            }
        }
        if m < 16 && kdot::supports(dtype) {
            let qm = QMatMul::from_arc(std::sync::Arc::new(QTensor::quantize(&w, dtype).unwrap()))
                .unwrap();
            let candle = time(20, || {
                std::hint::black_box(qm.forward(&x).unwrap());
            });
            let ours = time(20, || {
                std::hint::black_box(kdot::matmul_t(dtype, &data, n, k, &xs).unwrap());
            });
            print!(
                "; decode: candle QMatMul {:.2} ms, kdot {:.2} ms ({:.2}x)",
                candle * 1e3,
                ours * 1e3,
                candle / ours
            );
        }
        println!();
    }
}
