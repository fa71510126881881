// Attention over the paged KV cache.
//
// Cache layout (one buffer per layer for K and one for V): row `slot` holds the keys (values) of every KV head of
// one token, `kv_heads * D` bf16; slot = block_table[j / block_size] * block_size + j % block_size for the j-th
// token of a sequence. Queries are the packed batch's rows, `heads * D` bf16 each.
//
// Sequences are described by four arrays indexed by sequence: row0 (first packed row of its chunk), q_len,
// ctx (tokens in the cache, the chunk included: query i of the chunk sits at position ctx - q_len + i and sees
// keys 0..=that position) and table0 (offset of its block table in `tables`).
//
// attn_prefill_dD: FlashAttention-2-style tiling on tensor cores (mma.sync m16n8k16, bf16 in, f32 accumulate),
// no dense mask: a block takes 64 query rows of one sequence and one head, loops over 64-key tiles up to its last
// row's position with an online softmax. Work items (`work`, pairs of sequence index and 64-row tile index) list
// the tiles, so prompts of any lengths share one launch.
//
// HiP sparse attention (kernels/hip.cu builds the lists): both kernels take an optional list of 64-key tiles per
// work item (or decode row) and KV head, `lists + (item * kv_heads + kvh) * stride`: entry 0 the tile count, then
// the tiles in ascending order. A null `lists`, or a count of LIST_DENSE, visits every tile up to the last row.
//
// attn_decode_dD + attn_combine: one query row per sequence (decode). A block takes one sequence, one KV head (all
// its query heads at once, so each key is read once per group) and one split of the context; the combine kernel
// merges the splits' partial softmax sums (flash-decoding).

#define TILE 64
#define PAD 8
#define LIST_DENSE 0xffffffffu

// The tile list of work item `item` and KV head `kvh`, or null when it attends densely.
__device__ __forceinline__ const u32* tile_list(const u32* __restrict__ lists, int stride, int item, int kv_heads,
                                                int kvh) {
    if (lists == nullptr) return nullptr;
    const u32* l = lists + ((size_t)item * kv_heads + kvh) * stride;
    return l[0] == LIST_DENSE ? nullptr : l;
}

// Loads keys and values [first, first + TILE) of one KV head into registers (`fetch_kv`: rows past `last` are
// zeros), then into shared memory (`store_kv`). Every thread issues all its 16-byte loads before storing any, so a
// tile costs one memory round trip, and the decode kernel fetches the next tile while it computes on this one.
template <int D>
struct KvTile {
    static constexpr int chunks = D / 8;                // 16-byte pieces per row
    static constexpr int iters = TILE * chunks / 128;  // blockDim.x is 128
    uint4 k[iters], v[iters];
};

// Element offset of 16-byte piece `piece` of key/value row j of one KV head in the paged cache.
__device__ __forceinline__ size_t kv_offset(const u32* __restrict__ table, int block_size, int kv_width, int head_off,
                                            int j, int piece) {
    return ((size_t)table[j / block_size] * block_size + (j % block_size)) * kv_width + head_off + piece * 8;
}

template <int D>
__device__ __forceinline__ void fetch_kv(KvTile<D>& t, const bf16_t* __restrict__ kc, const bf16_t* __restrict__ vc,
                                         const u32* __restrict__ table, int block_size, int kv_width, int head_off,
                                         int first, int last) {
#pragma unroll
    for (int it = 0; it < KvTile<D>::iters; ++it) {
        const int c = threadIdx.x + it * 128, r = c / KvTile<D>::chunks, piece = c - r * KvTile<D>::chunks;
        const int j = first + r;
        t.k[it] = t.v[it] = make_uint4(0, 0, 0, 0);
        if (j <= last) {
            const size_t at = kv_offset(table, block_size, kv_width, head_off, j, piece);
            t.k[it] = *reinterpret_cast<const uint4*>(kc + at);
            t.v[it] = *reinterpret_cast<const uint4*>(vc + at);
        }
    }
}

template <int D>
__device__ __forceinline__ void store_kv(const KvTile<D>& t, bf16_t (*kdst)[D + PAD], bf16_t (*vdst)[D + PAD]) {
#pragma unroll
    for (int it = 0; it < KvTile<D>::iters; ++it) {
        const int c = threadIdx.x + it * 128, r = c / KvTile<D>::chunks, piece = c - r * KvTile<D>::chunks;
        *reinterpret_cast<uint4*>(&kdst[r][piece * 8]) = t.k[it];
        *reinterpret_cast<uint4*>(&vdst[r][piece * 8]) = t.v[it];
    }
}

template <int D>
__device__ __forceinline__ void load_kv_tile(bf16_t (*kdst)[D + PAD], bf16_t (*vdst)[D + PAD],
                                             const bf16_t* __restrict__ kc, const bf16_t* __restrict__ vc,
                                             const u32* __restrict__ table, int block_size, int kv_width,
                                             int head_off, int first, int last) {
    KvTile<D> t;
    fetch_kv<D>(t, kc, vc, table, block_size, kv_width, head_off, first, last);
    store_kv<D>(t, kdst, vdst);
}

// Copies keys and values [first, first + TILE) of one KV head straight into shared memory with cp.async (rows
// past `last` are zeros); the caller commits and waits. No registers are held for the copy.
template <int D>
__device__ __forceinline__ void stage_kv(bf16_t (*kdst)[D + PAD], bf16_t (*vdst)[D + PAD],
                                         const bf16_t* __restrict__ kc, const bf16_t* __restrict__ vc,
                                         const u32* __restrict__ table, int block_size, int kv_width, int head_off,
                                         int first, int last) {
#pragma unroll
    for (int it = 0; it < KvTile<D>::iters; ++it) {
        const int c = threadIdx.x + it * 128, r = c / KvTile<D>::chunks, piece = c - r * KvTile<D>::chunks;
        const int j = first + r;
        const bool ok = j <= last;
        const size_t at = ok ? kv_offset(table, block_size, kv_width, head_off, j, piece) : 0;
        cp_async16(&kdst[r][piece * 8], kc + at, ok);
        cp_async16(&vdst[r][piece * 8], vc + at, ok);
    }
}

template <int D>
__device__ __forceinline__ void prefill(const bf16_t* __restrict__ q, const bf16_t* __restrict__ kc,
                                        const bf16_t* __restrict__ vc, bf16_t* __restrict__ out,
                                        const u32* __restrict__ work, const u32* __restrict__ row0,
                                        const u32* __restrict__ q_len, const u32* __restrict__ ctx,
                                        const u32* __restrict__ table0, const u32* __restrict__ tables, int heads,
                                        int kv_heads, int block_size, float scale_log2,
                                        const u32* __restrict__ lists, int stride) {
    PDL_ENTER();
    __shared__ __align__(16) bf16_t ks[TILE][D + PAD];
    __shared__ __align__(16) bf16_t vs[TILE][D + PAD];
    const int seq = work[2 * blockIdx.x], tile = work[2 * blockIdx.x + 1];
    const int head = blockIdx.y, kvh = head / (heads / kv_heads);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int ql = q_len[seq], cl = ctx[seq], start = cl - ql;
    const u32* table = tables + table0[seq];
    const int q_width = heads * D, kv_width = kv_heads * D;
    const int tile_rows = min(TILE, ql - tile * TILE);
    // This thread's two query rows (g and g + 8 of its warp's 16) and their positions.
    const int qi0 = tile * TILE + warp * 16 + g, qi1 = qi0 + 8;
    const bool ok0 = qi0 < ql, ok1 = qi1 < ql;
    const int p0 = ok0 ? start + qi0 : start, p1 = ok1 ? start + qi1 : start;
    const bf16_t* q0 = q + (size_t)(row0[seq] + (ok0 ? qi0 : 0)) * q_width + head * D;
    const bf16_t* q1 = q + (size_t)(row0[seq] + (ok1 ? qi1 : 0)) * q_width + head * D;

    u32 qa[D / 16][4];
#pragma unroll
    for (int s = 0; s < D / 16; ++s) {
        qa[s][0] = ok0 ? *reinterpret_cast<const u32*>(q0 + s * 16 + 2 * t) : 0u;
        qa[s][1] = ok1 ? *reinterpret_cast<const u32*>(q1 + s * 16 + 2 * t) : 0u;
        qa[s][2] = ok0 ? *reinterpret_cast<const u32*>(q0 + s * 16 + 8 + 2 * t) : 0u;
        qa[s][3] = ok1 ? *reinterpret_cast<const u32*>(q1 + s * 16 + 8 + 2 * t) : 0u;
    }
    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f;

    const int last_key = start + tile * TILE + tile_rows - 1;  // the block's last row's position
    const u32* list = tile_list(lists, stride, blockIdx.x, kv_heads, kvh);
    const int tiles = list != nullptr ? (int)list[0] : last_key / TILE + 1;
    for (int i = 0; i < tiles; ++i) {
        const int first = list != nullptr ? (int)list[1 + i] * TILE : i * TILE;
        __syncthreads();
        load_kv_tile<D>(ks, vs, kc, vc, table, block_size, kv_width, kvh * D, first, last_key);
        __syncthreads();
        float s[TILE / 8][4];
#pragma unroll
        for (int n = 0; n < TILE / 8; ++n) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
            for (int k = 0; k < D / 16; ++k) {
                u32 b0 = *reinterpret_cast<const u32*>(&ks[n * 8 + g][k * 16 + 2 * t]);
                u32 b1 = *reinterpret_cast<const u32*>(&ks[n * 8 + g][k * 16 + 8 + 2 * t]);
                mma_bf16(s[n], qa[k][0], qa[k][1], qa[k][2], qa[k][3], b0, b1);
            }
        }
        // Scale into the log2 domain, mask the future, and take each row's max over the tile.
        float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
        for (int n = 0; n < TILE / 8; ++n) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                int j = first + n * 8 + 2 * t + e;
                s[n][e] = j <= p0 ? s[n][e] * scale_log2 : NEG_INF;
                s[n][2 + e] = j <= p1 ? s[n][2 + e] * scale_log2 : NEG_INF;
                mx0 = fmaxf(mx0, s[n][e]);
                mx1 = fmaxf(mx1, s[n][2 + e]);
            }
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
        // A row that sees no key of the tile keeps its maximum (and, before its first visible key, -inf: the
        // rescale factor exp2(-inf) is then 0 on an empty accumulator).
        const float b0 = n0 == NEG_INF ? 0.0f : n0, b1 = n1 == NEG_INF ? 0.0f : n1;
        const float a0 = exp2f(m0 - b0), a1 = exp2f(m1 - b1);
        m0 = n0;
        m1 = n1;
        l0 *= a0;
        l1 *= a1;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            o[n][0] *= a0;
            o[n][1] *= a0;
            o[n][2] *= a1;
            o[n][3] *= a1;
        }
#pragma unroll
        for (int n = 0; n < TILE / 8; ++n) {
            s[n][0] = exp2f(s[n][0] - b0);
            s[n][1] = exp2f(s[n][1] - b0);
            s[n][2] = exp2f(s[n][2] - b1);
            s[n][3] = exp2f(s[n][3] - b1);
            l0 += s[n][0] + s[n][1];
            l1 += s[n][2] + s[n][3];
        }
        // O += P V: P's accumulators become A fragments (two 8-key tiles make one 16-key step).
#pragma unroll
        for (int k = 0; k < TILE / 16; ++k) {
            u32 pa0 = pack_bf2(s[2 * k][0], s[2 * k][1]);
            u32 pa1 = pack_bf2(s[2 * k][2], s[2 * k][3]);
            u32 pa2 = pack_bf2(s[2 * k + 1][0], s[2 * k + 1][1]);
            u32 pa3 = pack_bf2(s[2 * k + 1][2], s[2 * k + 1][3]);
            const int r = k * 16 + 2 * t;
#pragma unroll
            for (int n = 0; n < D / 8; ++n) {
                const int d = n * 8 + g;
                u32 vb0 = (u32)vs[r][d] | ((u32)vs[r + 1][d] << 16);
                u32 vb1 = (u32)vs[r + 8][d] | ((u32)vs[r + 9][d] << 16);
                mma_bf16(o[n], pa0, pa1, pa2, pa3, vb0, vb1);
            }
        }
    }
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float r0 = 1.0f / l0, r1 = 1.0f / l1;
    bf16_t* out0 = out + (size_t)(row0[seq] + qi0) * q_width + head * D;
    bf16_t* out1 = out + (size_t)(row0[seq] + qi1) * q_width + head * D;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        if (ok0) *reinterpret_cast<u32*>(out0 + n * 8 + 2 * t) = pack_bf2(o[n][0] * r0, o[n][1] * r0);
        if (ok1) *reinterpret_cast<u32*>(out1 + n * 8 + 2 * t) = pack_bf2(o[n][2] * r1, o[n][3] * r1);
    }
}

#define MAX_GROUP 8

// The keys of one decode block (sequence blockIdx.x, KV head blockIdx.y, split blockIdx.z): [first, end), the
// sequence's block table and `stat`, the index of the group's first head in part_m / part_l (+ h * splits per
// head). A split past the end of the sequence's context records m = -inf, l = 0 for the group and returns false.
struct DecodeSplit {
    int first, end;
    const u32* table;
    size_t stat;
};

__device__ __forceinline__ bool decode_split(DecodeSplit& d, const u32* __restrict__ ctx,
                                             const u32* __restrict__ table0, const u32* __restrict__ tables,
                                             int heads, int group, int split_len, int splits,
                                             float* __restrict__ part_m, float* __restrict__ part_l) {
    const int seq = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
    d.first = split * split_len;
    d.end = min((int)ctx[seq], d.first + split_len);
    d.table = tables + table0[seq];
    d.stat = ((size_t)seq * heads + kvh * group) * splits + split;
    if (d.first < d.end) return true;
    if (threadIdx.x < group) {
        part_m[d.stat + threadIdx.x * splits] = NEG_INF;
        part_l[d.stat + threadIdx.x * splits] = 0.0f;
    }
    return false;
}

// Partial attention of one sequence's single query row, for the query heads of one KV head, over keys
// [split * split_len, min(ctx, (split + 1) * split_len)). Writes unnormalised partial outputs, maxima (log2
// domain) and sums to part_o [seq][head][split][D], part_m / part_l [seq][head][split]; with a single split it
// writes the normalised bf16 output row instead (no combine pass). Grid: (sequences, kv_heads, splits); 128
// threads.
template <int D>
__device__ __forceinline__ void decode(const bf16_t* __restrict__ q, const bf16_t* __restrict__ kc,
                                       const bf16_t* __restrict__ vc, float* __restrict__ part_o,
                                       float* __restrict__ part_m, float* __restrict__ part_l,
                                       const u32* __restrict__ row0, const u32* __restrict__ ctx,
                                       const u32* __restrict__ table0, const u32* __restrict__ tables, int heads,
                                       int kv_heads, int block_size, float scale_log2, int split_len, int splits,
                                       bf16_t* __restrict__ out) {
    PDL_ENTER();
    __shared__ __align__(16) bf16_t ks[TILE][D + PAD];
    __shared__ __align__(16) bf16_t vs[TILE][D + PAD];
    __shared__ float sc[MAX_GROUP][TILE];
    __shared__ __align__(16) float qs[MAX_GROUP][D];
    __shared__ float stat_m[MAX_GROUP], stat_a[MAX_GROUP], stat_l[MAX_GROUP];
    const int seq = blockIdx.x, kvh = blockIdx.y;
    const int group = heads / kv_heads, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    DecodeSplit span;
    if (!decode_split(span, ctx, table0, tables, heads, group, split_len, splits, part_m, part_l)) return;
    const int first_key = span.first, end_key = span.end;
    const u32* table = span.table;
    const size_t stat = span.stat;
    const int kv_width = kv_heads * D;
    const bf16_t* qrow = q + (size_t)row0[seq] * heads * D + kvh * group * D;
    // group * D <= 8 * 128 values: at most one 16-byte load per thread, all in flight together.
    for (int i = threadIdx.x * 8; i < group * D; i += blockDim.x * 8) {
        float f[8];
        load8_bf16(qrow + i, f);
#pragma unroll
        for (int e = 0; e < 8; ++e) qs[(i + e) / D][(i + e) % D] = f[e];
    }
    if (threadIdx.x < MAX_GROUP) {
        stat_m[threadIdx.x] = NEG_INF;
        stat_l[threadIdx.x] = 0.0f;
    }
    float acc[MAX_GROUP];  // output element d = threadIdx.x (when < D) of each head of the group
#pragma unroll
    for (int h = 0; h < MAX_GROUP; ++h) acc[h] = 0.0f;
    KvTile<D> next;
    fetch_kv<D>(next, kc, vc, table, block_size, kv_width, kvh * D, first_key, min(end_key, first_key + TILE) - 1);
    for (int first = first_key; first < end_key; first += TILE) {
        const int last = min(end_key, first + TILE) - 1;
        __syncthreads();
        store_kv<D>(next, ks, vs);
        __syncthreads();
        if (first + TILE < end_key)  // prefetch the next tile while this one is computed
            fetch_kv<D>(next, kc, vc, table, block_size, kv_width, kvh * D, first + TILE,
                        min(end_key, first + 2 * TILE) - 1);
        // Scores, one key per lane: warp w takes keys (w & 1) * 32 + lane for the heads h = w / 2, w / 2 + 2, ...
        // (16-byte shared-memory reads of the key row, conflict-free per quarter warp; q is a broadcast).
        {
            const int r = (warp & 1) * 32 + lane, h0 = warp >> 1;
            float dot[MAX_GROUP / 2];
#pragma unroll
            for (int i = 0; i < MAX_GROUP / 2; ++i) dot[i] = 0.0f;
#pragma unroll 4
            for (int e = 0; e < D; e += 8) {
                float kf[8];
                load8_bf16(&ks[r][e], kf);
#pragma unroll
                for (int i = 0; i < MAX_GROUP / 2; ++i) {
                    const int h = h0 + 2 * i;
                    if (h < group) {
                        const float4 qa = *reinterpret_cast<const float4*>(&qs[h][e]);
                        const float4 qb = *reinterpret_cast<const float4*>(&qs[h][e + 4]);
                        dot[i] += qa.x * kf[0] + qa.y * kf[1] + qa.z * kf[2] + qa.w * kf[3] + qb.x * kf[4] +
                                  qb.y * kf[5] + qb.z * kf[6] + qb.w * kf[7];
                    }
                }
            }
#pragma unroll
            for (int i = 0; i < MAX_GROUP / 2; ++i) {
                const int h = h0 + 2 * i;
                if (h < group) sc[h][r] = first + r <= last ? dot[i] * scale_log2 : NEG_INF;
            }
        }
        __syncthreads();
        // Softmax bookkeeping, one warp per head: the new running maximum, the rescale factor of what came before,
        // the tile's probabilities (in place) and the running sum.
        for (int h = warp; h < group; h += 4) {
            const float mx = warp_max(fmaxf(sc[h][lane], sc[h][lane + 32]));
            const float m_new = fmaxf(stat_m[h], mx);
            const float p0 = exp2f(sc[h][lane] - m_new), p1 = exp2f(sc[h][lane + 32] - m_new);
            sc[h][lane] = p0;
            sc[h][lane + 32] = p1;
            const float sum = warp_sum(p0 + p1);
            if (lane == 0) {
                const float a = exp2f(stat_m[h] - m_new);
                stat_a[h] = a;
                stat_m[h] = m_new;
                stat_l[h] = stat_l[h] * a + sum;
            }
        }
        __syncthreads();
        // O = O * a + P V: thread d owns output element d of every head; each value row is read once.
        {
            const int d = threadIdx.x;
#pragma unroll
            for (int h = 0; h < MAX_GROUP; ++h)
                if (h < group) acc[h] *= stat_a[h];
            if (d < D) {
#pragma unroll 4
                for (int r = 0; r < TILE; ++r) {
                    const float v = bf2f(vs[r][d]);
#pragma unroll
                    for (int h = 0; h < MAX_GROUP; ++h)
                        if (h < group) acc[h] += sc[h][r] * v;
                }
            }
        }
    }
    const int d = threadIdx.x;
    if (splits == 1) {
        bf16_t* orow = out + (size_t)row0[seq] * heads * D + kvh * group * D;
#pragma unroll
        for (int h = 0; h < MAX_GROUP; ++h)
            if (h < group && d < D) orow[h * D + d] = f2bf(acc[h] / stat_l[h]);
        return;
    }
#pragma unroll
    for (int h = 0; h < MAX_GROUP; ++h) {
        if (h < group) {
            size_t at = stat + (size_t)h * splits;
            if (d < D) part_o[at * D + d] = acc[h];
            if (d == 0) {
                part_m[at] = stat_m[h];
                part_l[at] = stat_l[h];
            }
        }
    }
}

// The same computation as `decode` on tensor cores, for group <= 8 query heads per KV head: the group's heads are
// the rows of a 16-row mma tile (rows >= group are zero and unused). The block copies 64-key tiles of K and V into
// shared memory with cp.async (no registers held for the copy, so four blocks fit a multiprocessor and overlap
// each other's copies: measured faster than two stages per block at three blocks); warp w takes keys 16w .. 16w + 15
// of every tile and keeps its own running maximum, sum and output for them, and the four warps' states are merged
// at the end. Same grid, outputs and partial-result layout as `decode`; 128 threads.
// One 64-key tile of decode_mma for one warp: scores of its 16 keys (the first at `key`, the tile's last valid key
// at `last`) against the group's query rows, the online-softmax update of m and l, and O += P V.
template <int D>
__device__ __forceinline__ void decode_mma_tile(const bf16_t (*ks)[D + PAD], const bf16_t (*vs)[D + PAD],
                                                const u32 (*qa)[2], float (*o)[4], float& m, float& l, int key,
                                                int last, int key0, float scale_log2, float* __restrict__ raw) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    if (key > last) return;  // this warp's keys are past the end of the context
    float s[2][4];
#pragma unroll
    for (int n = 0; n < 2; ++n) {
        s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
        for (int k = 0; k < D / 16; ++k) {
            const u32 b0 = *reinterpret_cast<const u32*>(&ks[key0 + n * 8 + g][k * 16 + 2 * t]);
            const u32 b1 = *reinterpret_cast<const u32*>(&ks[key0 + n * 8 + g][k * 16 + 8 + 2 * t]);
            mma_bf16(s[n], qa[k][0], 0u, qa[k][1], 0u, b0, b1);
        }
    }
    float mx = NEG_INF;
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int j = key + n * 8 + 2 * t + e;
            s[n][e] = j <= last ? s[n][e] * scale_log2 : NEG_INF;
            mx = fmaxf(mx, s[n][e]);
            if (raw != nullptr && j <= last) raw[j] = s[n][e];  // H2O: this head's score of key j (log2 domain)
        }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m, mx);  // finite: key `key` <= last is visible
    const float a = exp2f(m - m_new);
    m = m_new;
    l *= a;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        o[n][0] *= a;
        o[n][1] *= a;
    }
    float p[2][2];
#pragma unroll
    for (int n = 0; n < 2; ++n) {
        p[n][0] = exp2f(s[n][0] - m_new);
        p[n][1] = exp2f(s[n][1] - m_new);
        l += p[n][0] + p[n][1];
    }
    const u32 pa0 = pack_bf2(p[0][0], p[0][1]), pa2 = pack_bf2(p[1][0], p[1][1]);
    const int r = key0 + 2 * t;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        const int d = n * 8 + g;
        const u32 vb0 = (u32)vs[r][d] | ((u32)vs[r + 1][d] << 16);
        const u32 vb1 = (u32)vs[r + 8][d] | ((u32)vs[r + 9][d] << 16);
        mma_bf16(o[n], pa0, 0u, pa2, 0u, vb0, vb1);
    }
}

template <int D>
__device__ __forceinline__ void decode_mma(const bf16_t* __restrict__ q, const bf16_t* __restrict__ kc,
                                           const bf16_t* __restrict__ vc, float* __restrict__ part_o,
                                           float* __restrict__ part_m, float* __restrict__ part_l,
                                           const u32* __restrict__ row0, const u32* __restrict__ ctx,
                                           const u32* __restrict__ table0, const u32* __restrict__ tables,
                                           int heads, int kv_heads, int block_size, float scale_log2,
                                           int split_len, int splits, bf16_t* __restrict__ out,
                                           float* __restrict__ raw, int raw_stride, float* __restrict__ lse,
                                           const u32* __restrict__ lists, int stride) {
    PDL_ENTER();
    __shared__ __align__(16) bf16_t ks[TILE][D + PAD];
    __shared__ __align__(16) bf16_t vs[TILE][D + PAD];
    __shared__ float wm[4][MAX_GROUP], wl[4][MAX_GROUP];
    const int seq = blockIdx.x, kvh = blockIdx.y;
    const int group = heads / kv_heads, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2,
              t = lane & 3;
    // Dense: this split's keys [first_key, end_key) tile by tile. HiP: this split's share of the row's tile list.
    const u32* list = tile_list(lists, stride, seq, kv_heads, kvh);
    DecodeSplit span;
    int tile_begin = 0, tile_end;
    if (list != nullptr) {
        const int n = list[0], per = (n + splits - 1) / splits;
        tile_begin = blockIdx.z * per;
        tile_end = min(n, tile_begin + per);
        span.first = 0;
        span.end = ctx[seq];
        span.table = tables + table0[seq];
        span.stat = ((size_t)seq * heads + kvh * group) * splits + blockIdx.z;
        if (tile_begin >= tile_end) {
            if (threadIdx.x < group) {
                part_m[span.stat + threadIdx.x * splits] = NEG_INF;
                part_l[span.stat + threadIdx.x * splits] = 0.0f;
            }
            return;
        }
    } else {
        if (!decode_split(span, ctx, table0, tables, heads, group, split_len, splits, part_m, part_l)) return;
        tile_end = (span.end - span.first + TILE - 1) / TILE;
    }
    const int first_key = span.first, end_key = span.end;
    const u32* table = span.table;
    const size_t stat = span.stat;
    const int kv_width = kv_heads * D;
    // A fragments of q: row g is head g of the group (zero past the group); rows g + 8 are always zero.
    const bool has_row = g < group;
    const bf16_t* qrow = q + (size_t)row0[seq] * heads * D + (kvh * group + (has_row ? g : 0)) * D;
    u32 qa[D / 16][2];
#pragma unroll
    for (int k = 0; k < D / 16; ++k) {
        qa[k][0] = has_row ? *reinterpret_cast<const u32*>(qrow + k * 16 + 2 * t) : 0u;
        qa[k][1] = has_row ? *reinterpret_cast<const u32*>(qrow + k * 16 + 8 + 2 * t) : 0u;
    }
    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m = NEG_INF, l = 0.0f;  // row g's running maximum (log2 domain) and sum over this warp's keys
    const int key0 = warp * 16;   // this warp's keys within a tile
    // H2O: where row g's scores go (every key of the context, all splits together), if asked for.
    float* raw_g = raw != nullptr && has_row ? raw + ((size_t)seq * heads + kvh * group + g) * raw_stride : nullptr;
    for (int i = tile_begin; i < tile_end; ++i) {
        const int first = list != nullptr ? (int)list[1 + i] * TILE : first_key + i * TILE;
        const int last = min(end_key, first + TILE) - 1;
        __syncthreads();  // every warp is done with the previous tile
        stage_kv<D>(ks, vs, kc, vc, table, block_size, kv_width, kvh * D, first, last);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
        decode_mma_tile<D>(ks, vs, qa, o, m, l, first + key0, last, key0, scale_log2, raw_g);
    }
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    // Merge the four warps: row g's output columns n * 8 + 2t, +1 go to shared memory (reusing the key tile).
    __syncthreads();
    float(*wo)[MAX_GROUP][D] = reinterpret_cast<float(*)[MAX_GROUP][D]>(&ks[0][0]);
    if (has_row) {
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            wo[warp][g][n * 8 + 2 * t] = o[n][0];
            wo[warp][g][n * 8 + 2 * t + 1] = o[n][1];
        }
        if (t == 0) {
            wm[warp][g] = m;
            wl[warp][g] = l;
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < group * D; i += blockDim.x) {
        const int h = i / D, d = i - h * D;
        float mx = NEG_INF;
#pragma unroll
        for (int w = 0; w < 4; ++w) mx = fmaxf(mx, wm[w][h]);
        float num = 0.0f, den = 0.0f;
#pragma unroll
        for (int w = 0; w < 4; ++w) {
            const float f = wm[w][h] == NEG_INF ? 0.0f : exp2f(wm[w][h] - mx);
            num += wo[w][h][d] * f;
            den += wl[w][h] * f;
        }
        if (splits == 1) {
            out[(size_t)row0[seq] * heads * D + (kvh * group + h) * D + d] = f2bf(num / den);
            if (lse != nullptr && d == 0) lse[(size_t)seq * heads + kvh * group + h] = mx + __log2f(den);
        } else {
            const size_t at = stat + (size_t)h * splits;
            part_o[at * D + d] = num;
            if (d == 0) {
                part_m[at] = mx;
                part_l[at] = den;
            }
        }
    }
}

// Merges the splits of attn_decode: out row of seq, head = sum_s o_s 2^(m_s - M) / sum_s l_s 2^(m_s - M).
// Grid: (sequences, heads); D threads (at least 32).
extern "C" __global__ void attn_combine(const float* __restrict__ part_o, const float* __restrict__ part_m,
                                        const float* __restrict__ part_l, const u32* __restrict__ row0,
                                        bf16_t* __restrict__ out, int heads, int head_dim, int splits,
                                        float* __restrict__ lse) {
    PDL_ENTER();
    __shared__ float wm[32], wl[32];
    const int seq = blockIdx.x, head = blockIdx.y, d = threadIdx.x;
    const size_t base = ((size_t)seq * heads + head) * splits;
    if (d < splits) {  // splits <= 32 <= blockDim.x: every split's statistics in one round trip
        wm[d] = part_m[base + d];
        wl[d] = part_l[base + d];
    }
    __syncthreads();
    float mx = NEG_INF;
    for (int s = 0; s < splits; ++s) mx = fmaxf(mx, wm[s]);
    float num = 0.0f, den = 0.0f;
#pragma unroll 8
    for (int s = 0; s < splits; ++s) {
        const float m = wm[s];
        // A split past the end of this sequence's context wrote no partial output (only m = -inf, l = 0).
        if (m == NEG_INF) continue;
        const float w = exp2f(m - mx);
        den += wl[s] * w;
        if (d < head_dim) num += part_o[(base + s) * head_dim + d] * w;
    }
    if (d < head_dim) out[(size_t)row0[seq] * heads * head_dim + head * head_dim + d] = f2bf(num / den);
    // H2O: the row's log2-sum-exp, to turn its raw scores into probabilities.
    if (lse != nullptr && d == 0) lse[(size_t)seq * heads + head] = mx + __log2f(den);
}

#define ATTENTION_KERNELS(D)                                                                                   \
    extern "C" __global__ void __launch_bounds__(128) attn_prefill_d##D(                                     \
        const bf16_t* q, const bf16_t* kc, const bf16_t* vc, bf16_t* out, const u32* work, const u32* row0,  \
        const u32* q_len, const u32* ctx, const u32* table0, const u32* tables, int heads, int kv_heads,    \
        int block_size, float scale_log2, const u32* lists, int stride) {                                    \
        prefill<D>(q, kc, vc, out, work, row0, q_len, ctx, table0, tables, heads, kv_heads, block_size,      \
                   scale_log2, lists, stride);                                                               \
    }                                                                                                        \
    /* raw, raw_stride, lse: H2O's per-key scores and log2-sum-exp; lists, stride: HiP's tile lists (both   \
       read by decode_mma only; null: not wanted). */                                                        \
    extern "C" __global__ void __launch_bounds__(128) attn_decode_d##D(                                      \
        const bf16_t* q, const bf16_t* kc, const bf16_t* vc, float* part_o, float* part_m, float* part_l,    \
        const u32* row0, const u32* ctx, const u32* table0, const u32* tables, int heads, int kv_heads,      \
        int block_size, float scale_log2, int split_len, int splits, bf16_t* out, float* raw,               \
        int raw_stride, float* lse, const u32* lists, int stride) {                                          \
        decode<D>(q, kc, vc, part_o, part_m, part_l, row0, ctx, table0, tables, heads, kv_heads, block_size, \
                  scale_log2, split_len, splits, out);                                                       \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(128, 4) attn_decode_mma_d##D(                               \
        const bf16_t* q, const bf16_t* kc, const bf16_t* vc, float* part_o, float* part_m, float* part_l,    \
        const u32* row0, const u32* ctx, const u32* table0, const u32* tables, int heads, int kv_heads,      \
        int block_size, float scale_log2, int split_len, int splits, bf16_t* out, float* raw,               \
        int raw_stride, float* lse, const u32* lists, int stride) {                                          \
        decode_mma<D>(q, kc, vc, part_o, part_m, part_l, row0, ctx, table0, tables, heads, kv_heads,         \
                      block_size, scale_log2, split_len, splits, out, raw, raw_stride, lse, lists, stride);  \
    }

ATTENTION_KERNELS(16)
ATTENTION_KERNELS(32)
ATTENTION_KERNELS(64)
ATTENTION_KERNELS(128)
