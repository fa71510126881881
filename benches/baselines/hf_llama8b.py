"""Hugging Face transformers baselines for the CUDA benchmark (issue 9), on a random-weight Llama-3-8B-shaped model
in bf16: padded batch prefill (the Prepacking paper's baseline), per-prompt SDPA prefill without padding, and
`generate` decode at batch 1 and 64; plus the machine's bf16 GEMM throughput and HBM bandwidth for the rooflines.

The prompts are the ones `engram bench prefill` uses: 64 prompts whose lengths follow a long-tailed distribution
between 16 and 2,048 tokens (the same LCG and formula as `benches/engine.rs`, seed 42).

Run on the GPU machine: `python3 benches/baselines/hf_llama8b.py --out $OUT/hf_baseline.json`.
"""
import argparse
import json
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

MASK64 = (1 << 64) - 1


def lengths(n: int, lo: int, hi: int, seed: int) -> list[int]:
    """Pareto-like lengths in [lo, hi], identical to `benches/engine.rs`'s `lengths`."""
    s, out = seed, []
    for _ in range(n):
        s = (s * 6364136223846793005 + 1442695040888963407) & MASK64
        u = max((s >> 11) / float(1 << 53), 1e-9)
        out.append(min(max(int(lo / u ** (1.0 / 1.2)), lo), hi))
    return out


def prompts(lens: list[int], vocab: int) -> list[list[int]]:
    return [[(i * 7919 + j * 104729) % (vocab - 10) + 5 for j in range(n)] for i, n in enumerate(lens)]


def timed(fn, warmup: int = 1, reps: int = 3) -> tuple[float, int]:
    """Median seconds of `fn` over `reps` runs after `warmup`, with CUDA events; and the peak bytes allocated."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000.0)
    times.sort()
    return times[len(times) // 2], torch.cuda.max_memory_allocated()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="hf_baseline.json")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--decode-steps", type=int, default=128)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=args.layers,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                      rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, attn_implementation="sdpa")
    t0 = time.time()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    res = {"torch": torch.__version__, "transformers": transformers.__version__,
           "gpu": torch.cuda.get_device_name(0), "params": params, "layers": args.layers,
           "model_init_s": time.time() - t0}

    # Rooflines: a large bf16 GEMM and a device-to-device copy.
    a = torch.randn(8192, 8192, device="cuda")
    b = torch.randn(8192, 8192, device="cuda")
    s, _ = timed(lambda: a @ b, warmup=3, reps=10)
    res["gemm_bf16_tflops"] = 2 * 8192 ** 3 / s / 1e12
    x = torch.empty(4 << 30 >> 1, dtype=torch.bfloat16, device="cuda")
    y = torch.empty_like(x)
    s, _ = timed(lambda: y.copy_(x), warmup=3, reps=10)
    res["hbm_copy_gbps"] = 2 * x.numel() * 2 / s / 1e9
    del a, b, x, y
    torch.cuda.empty_cache()

    lens = lengths(64, 16, 2048, 42)
    ps = prompts(lens, cfg.vocab_size)
    res["prompt_lengths"] = lens
    res["real_tokens"] = sum(lens)
    longest = max(lens)
    with torch.inference_mode():
        # Padded batch prefill (right padding; attention mask), last-position logits only.
        ids = torch.zeros(len(ps), longest, dtype=torch.long, device="cuda")
        mask = torch.zeros_like(ids)
        for i, p in enumerate(ps):
            ids[i, : len(p)] = torch.tensor(p)
            mask[i, : len(p)] = 1
        s, peak = timed(lambda: model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1))
        res["padded_prefill"] = {"seconds": s, "peak_bytes": peak, "padded_tokens": len(ps) * longest}
        # One prompt at a time, SDPA, no padding.
        singles = [torch.tensor([p], device="cuda") for p in ps]

        def per_prompt():
            for t in singles:
                model(input_ids=t, use_cache=False, logits_to_keep=1)

        s, peak = timed(per_prompt, warmup=1, reps=1)
        res["per_prompt_sdpa_prefill"] = {"seconds": s, "peak_bytes": peak}

        # Decode with generate: greedy, exactly decode_steps new tokens.
        for batch in (1, 64):
            prompt = torch.tensor([ps[i % len(ps)][:128] + [5] * (128 - len(ps[i % len(ps)][:128]))
                                   for i in range(batch)], device="cuda")
            gen = lambda: model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                         max_new_tokens=args.decode_steps, min_new_tokens=args.decode_steps,
                                         pad_token_id=0)
            s, peak = timed(gen, warmup=1, reps=1)
            res[f"generate_batch{batch}"] = {"seconds": s, "tokens_per_s": batch * args.decode_steps / s,
                                             "prompt_tokens": 128, "new_tokens": args.decode_steps, "peak_bytes": peak}
    print(json.dumps(res, indent=1))
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
