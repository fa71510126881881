// Token selection on the GPU. Greedy decoding takes the argmax of each row of logits; sampling at a temperature
// takes the argmax of logits / T + Gumbel noise, which draws exactly from softmax(logits / T) (the Gumbel-max
// trick), so only one token id per row crosses to the host. Ties go to the lowest id, as on the CPU.

// One block per row (blockDim.x a power of two, at most 1024). sample == 0: greedy.
extern "C" __global__ void select_tokens(const bf16_t* __restrict__ logits, int vocab, u32* __restrict__ out,
                                         float inv_temp, u64 seed, int sample) {
    __shared__ float best_v[1024];
    __shared__ int best_i[1024];
    const bf16_t* row = logits + (size_t)blockIdx.x * vocab;
    float bv = NEG_INF;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float v = bf2f(row[i]);
        if (sample) {
            float u = unit_open(mix64(seed ^ mix64(((u64)blockIdx.x << 32) | (u32)i)));
            v = v * inv_temp - __logf(-__logf(u));
        }
        if (v > bv || (v == bv && i < bi)) { bv = v; bi = i; }
    }
    best_v[threadIdx.x] = bv;
    best_i[threadIdx.x] = bi;
    __syncthreads();
    for (int s = blockDim.x >> 1; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float ov = best_v[threadIdx.x + s];
            int oi = best_i[threadIdx.x + s];
            if (ov > best_v[threadIdx.x] || (ov == best_v[threadIdx.x] && oi < best_i[threadIdx.x])) {
                best_v[threadIdx.x] = ov;
                best_i[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = (u32)(best_i[0] == 0x7fffffff ? 0 : best_i[0]);
}
