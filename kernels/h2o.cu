// H2O (heavy-hitter) KV eviction: the attention score of every cached key (per slot and KV head, f32), and the
// compaction of each head's kept keys into a sequence's first slots. CPU references: the CPU backend's
// reset_scores, accumulate_attention, read_scores and compact_kv (src/engine/backend/cpu.rs).

// Most (query row, query head) pairs one accumulation block holds (rows_per_block * group <= H2O_PAIRS).
#define H2O_PAIRS 16
#define H2O_THREADS 128

// Zeroes the scores of `n` slots in every layer (`scores` holds `layers` blocks of `layer_stride` floats).
extern "C" __global__ void h2o_reset(float* __restrict__ scores, const u32* __restrict__ slots, int n, int kv_heads,
                                     long long layer_stride) {
    PDL_ENTER();
    const int i = blockIdx.x, layer = blockIdx.y;
    if (i >= n) return;
    for (int h = threadIdx.x; h < kv_heads; h += blockDim.x)
        scores[layer * layer_stride + (size_t)slots[i] * kv_heads + h] = 0.0f;
}

// The dot products of one key (head_dim D, bf16) with the block's query vectors (`qs`, scaled, f32).
template <int D>
__device__ __forceinline__ void h2o_dots(const bf16_t* __restrict__ key, const float (*qs)[D], int pairs,
                                         float* dots) {
#pragma unroll
    for (int p = 0; p < H2O_PAIRS; ++p) dots[p] = 0.0f;
    for (int d = 0; d < D; d += 8) {
        float k[8];
        load8_bf16(key + d, k);
#pragma unroll
        for (int p = 0; p < H2O_PAIRS; ++p) {
            if (p < pairs) {
#pragma unroll
                for (int e = 0; e < 8; ++e) dots[p] += qs[p][d + e] * k[e];
            }
        }
    }
}

// Adds to every key's score the attention probability the block's query rows give it, summed over the query
// heads of one KV head. Block: (work item, KV head); a work item is (chunk, first row) of `rows_per_block`
// consecutive rows of a tracked chunk. Two passes over the keys: the softmax maximum and sum of each (row, head),
// then each key's probabilities, added with atomics (several blocks' rows see the same keys).
template <int D>
__device__ void h2o_accumulate(const bf16_t* __restrict__ q, const bf16_t* __restrict__ kc, float* __restrict__ scores,
                               const u32* __restrict__ work, const u32* __restrict__ row0,
                               const u32* __restrict__ q_len, const u32* __restrict__ ctx,
                               const u32* __restrict__ table0, const u32* __restrict__ tables, int heads,
                               int kv_heads, int block_size, float scale, int rows_per_block) {
    // `scores` points at this layer's block.
    __shared__ float qs[H2O_PAIRS][D];
    __shared__ float red_m[H2O_PAIRS][H2O_THREADS / 32];
    __shared__ float red_l[H2O_PAIRS][H2O_THREADS / 32];
    __shared__ float fin_m[H2O_PAIRS], fin_l[H2O_PAIRS];
    PDL_ENTER();
    const int chunk = work[2 * blockIdx.x], first = work[2 * blockIdx.x + 1], kvh = blockIdx.y;
    const int group = heads / kv_heads;
    const int rows = min(rows_per_block, (int)q_len[chunk] - first);
    const int pairs = rows * group;
    const int base = (int)ctx[chunk] - (int)q_len[chunk] + first;  // context position of the first row
    const u32* table = tables + table0[chunk];
    const int kv_width = kv_heads * D;
    for (int x = threadIdx.x; x < pairs * D; x += blockDim.x) {
        const int p = x / D, d = x % D, r = p / group, g = p % group;
        const size_t row = row0[chunk] + first + r;
        qs[p][d] = bf2f(q[(row * heads + kvh * group + g) * D + d]) * scale;
    }
    __syncthreads();
    const int last = base + rows - 1;  // the last row's newest key
    float m[H2O_PAIRS], l[H2O_PAIRS], dots[H2O_PAIRS];
#pragma unroll
    for (int p = 0; p < H2O_PAIRS; ++p) {
        m[p] = NEG_INF;
        l[p] = 0.0f;
    }
    for (int j = threadIdx.x; j <= last; j += blockDim.x) {
        const size_t slot = (size_t)table[j / block_size] * block_size + j % block_size;
        h2o_dots<D>(kc + slot * kv_width + kvh * D, qs, pairs, dots);
#pragma unroll
        for (int p = 0; p < H2O_PAIRS; ++p) {
            if (p < pairs && j <= base + p / group) {
                const float nm = fmaxf(m[p], dots[p]);
                l[p] = l[p] * __expf(m[p] - nm) + __expf(dots[p] - nm);
                m[p] = nm;
            }
        }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
    for (int p = 0; p < H2O_PAIRS; ++p) {
        if (p < pairs) {
            const float wm = warp_max(m[p]);
            const float wl = warp_sum(m[p] == NEG_INF ? 0.0f : l[p] * __expf(m[p] - wm));
            if (lane == 0) {
                red_m[p][warp] = wm;
                red_l[p][warp] = wl;
            }
        }
    }
    __syncthreads();
    if (threadIdx.x < pairs) {
        const int p = threadIdx.x;
        float bm = NEG_INF, bl = 0.0f;
        for (int w = 0; w < warps; ++w) bm = fmaxf(bm, red_m[p][w]);
        for (int w = 0; w < warps; ++w)
            if (red_m[p][w] != NEG_INF) bl += red_l[p][w] * __expf(red_m[p][w] - bm);
        fin_m[p] = bm;
        fin_l[p] = bl;
    }
    __syncthreads();
    for (int j = threadIdx.x; j <= last; j += blockDim.x) {
        const size_t slot = (size_t)table[j / block_size] * block_size + j % block_size;
        h2o_dots<D>(kc + slot * kv_width + kvh * D, qs, pairs, dots);
        float total = 0.0f;
#pragma unroll
        for (int p = 0; p < H2O_PAIRS; ++p)
            if (p < pairs && j <= base + p / group) total += __expf(dots[p] - fin_m[p]) / fin_l[p];
        atomicAdd(scores + slot * kv_heads + kvh, total);
    }
}

#define H2O_ACCUMULATE(D)                                                                                        \
    extern "C" __global__ void __launch_bounds__(H2O_THREADS) h2o_accumulate_d##D(                              \
        const bf16_t* q, const bf16_t* kc, float* scores, const u32* work, const u32* row0, const u32* q_len,    \
        const u32* ctx, const u32* table0, const u32* tables, int heads, int kv_heads, int block_size,          \
        float scale, int rows_per_block, long long layer_offset) {                                                \
        h2o_accumulate<D>(q, kc, scores + layer_offset, work, row0, q_len, ctx, table0, tables, heads, kv_heads, block_size,    \
                          scale, rows_per_block);                                                                 \
    }
H2O_ACCUMULATE(16)
H2O_ACCUMULATE(32)
H2O_ACCUMULATE(64)
H2O_ACCUMULATE(128)

// Scores of `n` slots into `out`, `[layer][kv_head][i]`.
extern "C" __global__ void h2o_read(const float* __restrict__ scores, const u32* __restrict__ slots, int n,
                                    int kv_heads, long long layer_stride, float* __restrict__ out) {
    PDL_ENTER();
    const int i = blockIdx.x, layer = blockIdx.y;
    if (i >= n) return;
    for (int h = threadIdx.x; h < kv_heads; h += blockDim.x)
        out[((size_t)layer * kv_heads + h) * n + i] = scores[layer * layer_stride + (size_t)slots[i] * kv_heads + h];
}

// Compaction, first half: each head's kept keys, values and scores of one layer (`keep`: `[kv_head][n]` cache
// indices into `slots`) copied out to scratch (`tk`, `tv`: `[kv_head][n][D]`; `ts`: `[kv_head][n]`).
extern "C" __global__ void h2o_gather(const bf16_t* __restrict__ kc, const bf16_t* __restrict__ vc,
                                      const float* __restrict__ scores, long long layer_offset,
                                      const u32* __restrict__ slots, const u32* __restrict__ keep, int n,
                                      int kv_heads, int head_dim, bf16_t* __restrict__ tk, bf16_t* __restrict__ tv,
                                      float* __restrict__ ts) {
    PDL_ENTER();
    const float* sc = scores + layer_offset;
    const int j = blockIdx.x, h = blockIdx.y;
    const size_t src = slots[keep[(size_t)h * n + j]];
    const size_t from = (src * kv_heads + h) * head_dim, to = ((size_t)h * n + j) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        tk[to + d] = kc[from + d];
        tv[to + d] = vc[from + d];
    }
    if (threadIdx.x == 0) ts[(size_t)h * n + j] = sc[src * kv_heads + h];
}

// Compaction, second half: scratch row j of each head back to the sequence's slot j.
extern "C" __global__ void h2o_scatter(bf16_t* __restrict__ kc, bf16_t* __restrict__ vc, float* __restrict__ scores,
                                       long long layer_offset, const u32* __restrict__ slots, int n, int kv_heads,
                                       int head_dim, const bf16_t* __restrict__ tk, const bf16_t* __restrict__ tv,
                                       const float* __restrict__ ts) {
    PDL_ENTER();
    float* sc = scores + layer_offset;
    const int j = blockIdx.x, h = blockIdx.y;
    const size_t dst = slots[j];
    const size_t to = (dst * kv_heads + h) * head_dim, from = ((size_t)h * n + j) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        kc[to + d] = tk[from + d];
        vc[to + d] = tv[from + d];
    }
    if (threadIdx.x == 0) sc[dst * kv_heads + h] = ts[(size_t)h * n + j];
}

// Decode rows whose scores the decode attention kernel wrote (`raw`: per decode row and head, every key's score in
// the log2 domain, `raw_stride` apart; `lse`: each row and head's log2-sum-exp): adds each key's probability,
// summed over the query heads of its KV head, to its score. Grid: (tracked decode rows, KV heads, key blocks of
// 256); `rows` lists the tracked rows' decode indices, `ctx`, `table0` their contexts and tables.
extern "C" __global__ void __launch_bounds__(256) h2o_from_raw(const float* __restrict__ raw, int raw_stride,
                                                               const float* __restrict__ lse,
                                                               float* __restrict__ scores, long long layer_offset,
                                                               const u32* __restrict__ rows,
                                                               const u32* __restrict__ ctx,
                                                               const u32* __restrict__ table0,
                                                               const u32* __restrict__ tables, int heads,
                                                               int kv_heads, int block_size) {
    PDL_ENTER();
    const int r = blockIdx.x, kvh = blockIdx.y, j = blockIdx.z * blockDim.x + threadIdx.x;
    if (j >= (int)ctx[r]) return;
    const int group = heads / kv_heads;
    const size_t i = rows[r];
    float total = 0.0f;
    for (int g = 0; g < group; ++g) {
        const size_t h = i * heads + kvh * group + g;
        total += exp2f(raw[h * raw_stride + j] - lse[h]);
    }
    const u32* table = tables + table0[r];
    const size_t slot = (size_t)table[j / block_size] * block_size + j % block_size;
    scores[layer_offset + slot * kv_heads + kvh] += total;  // one row per sequence: no other writer
}
