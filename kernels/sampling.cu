// Token selection on the GPU. Greedy decoding takes the argmax of each row of logits; sampling at a temperature
// takes the argmax of logits / T + Gumbel noise, which draws exactly from softmax(logits / T) (the Gumbel-max
// trick), so only one token id per row crosses to the host. Ties go to the lowest id, as on the CPU.

// Token selection split over many blocks per row, for large vocabularies: block (c, row) scans its chunk, then
// folds (value, id) into out[row] with one 64-bit atomicMax on an order-preserving key: the float's bits mapped
// to an unsigned order in the high word, the id's complement in the low word (so ties go to the lowest id).
// out must be zeroed first. Grid: (chunks, rows); blockDim.x a power of two, at most 1024.
__device__ __forceinline__ u64 order_key(float v, int id) {
    u32 b = __float_as_uint(v);
    b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return ((u64)b << 32) | (u32)(0xffffffffu - (u32)id);
}

extern "C" __global__ void select_tokens(const bf16_t* __restrict__ logits, int vocab, int chunk,
                                              u64* __restrict__ out, float inv_temp, u64 seed, int sample) {
    PDL_ENTER();
    __shared__ u64 best[1024];
    const int row = blockIdx.y, start = blockIdx.x * chunk, end = min(vocab, start + chunk);
    const bf16_t* lr = logits + (size_t)row * vocab;
    u64 b = 0;
    for (int i = start + threadIdx.x; i < end; i += blockDim.x) {
        float v = bf2f(lr[i]);
        if (v != v) continue;  // NaN never wins
        if (sample) {
            float u = unit_open(mix64(seed ^ mix64(((u64)row << 32) | (u32)i)));
            v = v * inv_temp - __logf(-__logf(u));
        }
        const u64 key = order_key(v, i);
        b = key > b ? key : b;
    }
    best[threadIdx.x] = b;
    __syncthreads();
    for (int s = blockDim.x >> 1; s > 0; s >>= 1) {
        if (threadIdx.x < s && best[threadIdx.x + s] > best[threadIdx.x]) best[threadIdx.x] = best[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0 && best[0]) atomicMax(out + row, best[0]);
}

// log softmax(logits[row])[tokens[row]] for every row: the teacher-forced log-probabilities of answer scoring, so
// one float per row leaves the GPU instead of the row's logits. Two passes over the row (maximum, then the sum of
// exponentials, in f32). Grid: rows; blockDim.x a multiple of 32, at most 1024.
extern "C" __global__ void token_log_probs(const bf16_t* __restrict__ logits, const u32* __restrict__ tokens,
                                           int vocab, float* __restrict__ out) {
    PDL_ENTER();
    __shared__ float part[32];
    const bf16_t* lr = logits + (size_t)blockIdx.x * vocab;
    float mx = NEG_INF;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) mx = fmaxf(mx, bf2f(lr[i]));
    mx = warp_max(mx);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = mx;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : NEG_INF;
        v = warp_max(v);
        if (threadIdx.x == 0) part[0] = v;
    }
    __syncthreads();
    mx = part[0];
    float sum = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) sum += expf(bf2f(lr[i]) - mx);
    sum = block_sum(sum);
    if (threadIdx.x == 0) out[blockIdx.x] = (bf2f(lr[tokens[blockIdx.x]]) - mx) - logf(sum);
}
