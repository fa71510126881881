// HiP attention's mask search (crates/engine/src/hip.rs describes the method and is the reference): for one query
// block and one KV head, the top_k candidate key blocks found by the tree search, turned into the list of 64-key
// tiles the attention kernels visit (sink, chosen blocks, window).
//
// Items (`items`, HIP_FIELDS u32 each, written by the host from the block's plan):
//   0 row_first: packed row of the block's first query row     1 rows: query rows in the block
//   2 seq: the chunk (index into table0)                       3 sparse: 1 when HiP engages, 0 for dense
//   4 top_k    5 block_k (a multiple of 64)    6 sink blocks    7, 8 candidate blocks [start, end)
//   9 window's first block                    10 position of the block's last row
//   11 mask_at: offset of the item's chosen blocks [kv_heads][top_k] in `mask` (HIP_NONE: not wanted)
// Tile lists (`lists`, `stride` u32 per item and KV head): entry 0 is the tile count (HIP_DENSE: attend densely),
// then the tiles in ascending order.

#define HIP_FIELDS 12
#define HIP_NONE 0xffffffffu
#define HIP_DENSE 0xffffffffu
#define HIP_MAX_TOP_K 256
#define HIP_THREADS 256

// Largest logit the block's rows give key `key`, over the query heads of KV head `kvh`: one warp, lanes split
// the head dimension. Every lane returns the result.
template <int D>
__device__ __forceinline__ float hip_score(const bf16_t* __restrict__ q, const bf16_t* __restrict__ kc,
                                           const u32* __restrict__ table, int block_size, int heads, int kv_heads,
                                           int kvh, int row_first, int rows, int key) {
    constexpr int E = D >= 32 ? D / 32 : 1;
    const int lane = threadIdx.x & 31, group = heads / kv_heads;
    const size_t slot = (size_t)table[key / block_size] * block_size + key % block_size;
    const bf16_t* krow = kc + slot * kv_heads * D + kvh * D;
    float k[E];
#pragma unroll
    for (int e = 0; e < E; ++e) k[e] = lane * E + e < D ? bf2f(krow[lane * E + e]) : 0.0f;
    float best = NEG_INF;
    for (int r = 0; r < rows; ++r) {
        for (int h = 0; h < group; ++h) {
            const bf16_t* qrow = q + ((size_t)(row_first + r) * heads + kvh * group + h) * D;
            float s = 0.0f;
#pragma unroll
            for (int e = 0; e < E; ++e)
                if (lane * E + e < D) s += bf2f(qrow[lane * E + e]) * k[e];
            best = fmaxf(best, warp_sum(s));
        }
    }
    return best;
}

template <int D>
__device__ __forceinline__ void hip_search(const bf16_t* __restrict__ q, const bf16_t* __restrict__ kc,
                                           const u32* __restrict__ items, const u32* __restrict__ table0,
                                           const u32* __restrict__ tables, int heads, int kv_heads,
                                           int block_size, u32* __restrict__ lists, int stride,
                                           u32* __restrict__ mask) {
    PDL_ENTER();
    __shared__ int ca[2 * HIP_MAX_TOP_K], cb[2 * HIP_MAX_TOP_K];
    __shared__ float cs[2 * HIP_MAX_TOP_K];
    __shared__ unsigned char keep[2 * HIP_MAX_TOP_K];
    __shared__ int ka[HIP_MAX_TOP_K], kb[HIP_MAX_TOP_K];
    __shared__ int nk, nc, splitting;
    const u32* it = items + (size_t)blockIdx.x * HIP_FIELDS;
    const int kvh = blockIdx.y, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    u32* list = lists + ((size_t)blockIdx.x * kv_heads + kvh) * stride;
    if (it[3] == 0) {
        if (threadIdx.x == 0) list[0] = HIP_DENSE;
        return;
    }
    const int row_first = it[0], rows = it[1], top_k = it[4], bk = it[5], sink = it[6];
    const int c0 = it[7], c1 = it[8], win = it[9], last_pos = it[10];
    const u32* table = tables + table0[it[2]];
    const int n = c1 - c0;
    if (threadIdx.x == 0) {
        if (n <= top_k) {
            for (int i = 0; i < n; ++i) ka[i] = c0 + i, kb[i] = c0 + i + 1;
            nk = n;
        } else {
            for (int i = 0; i < top_k; ++i) {
                ka[i] = c0 + (int)((long long)i * n / top_k);
                kb[i] = c0 + (int)((long long)(i + 1) * n / top_k);
            }
            nk = top_k;
        }
    }
    __syncthreads();
    while (n > top_k) {
        // Split every chunk of several blocks in two (block order is kept).
        if (threadIdx.x == 0) {
            int c = 0, any = 0;
            for (int i = 0; i < nk; ++i) {
                if (kb[i] - ka[i] > 1) {
                    const int mid = ka[i] + (kb[i] - ka[i]) / 2;
                    ca[c] = ka[i], cb[c++] = mid;
                    ca[c] = mid, cb[c++] = kb[i];
                    any = 1;
                } else {
                    ca[c] = ka[i], cb[c++] = kb[i];
                }
            }
            nc = c;
            splitting = any;
        }
        __syncthreads();
        if (!splitting) break;
        // Score each chunk by its representative key (the key in its middle), one warp per chunk.
        for (int c = warp; c < nc; c += warps) {
            const int key = (ca[c] + cb[c]) * bk / 2;
            const float s = hip_score<D>(q, kc, table, block_size, heads, kv_heads, kvh, row_first, rows, key);
            if ((threadIdx.x & 31) == 0) cs[c] = s;
        }
        __syncthreads();
        // Keep the top_k best; equal scores keep the earlier chunk.
        for (int c = threadIdx.x; c < nc; c += blockDim.x) {
            int rank = 0;
            const float s = cs[c];
            for (int j = 0; j < nc; ++j) rank += cs[j] > s || (cs[j] == s && j < c);
            keep[c] = rank < top_k;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int k = 0;
            for (int c = 0; c < nc; ++c)
                if (keep[c]) ka[k] = ca[c], kb[k++] = cb[c];
            nk = k;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        if (it[11] != HIP_NONE) {
            u32* m = mask + it[11] + (size_t)kvh * top_k;
            for (int i = 0; i < top_k; ++i) m[i] = i < nk ? (u32)ka[i] : HIP_NONE;
        }
        // The tiles: sink blocks, chosen blocks, then the window up to the tile of the block's last row.
        const int per = bk / 64;
        int c = 0;
        for (int t = 0; t < sink * per; ++t) list[1 + c++] = t;
        for (int i = 0; i < nk; ++i)
            for (int t = ka[i] * per; t < (ka[i] + 1) * per; ++t) list[1 + c++] = t;
        for (int t = win * per; t <= last_pos / 64; ++t) list[1 + c++] = t;
        list[0] = c;
    }
}

#define HIP_KERNELS(D)                                                                                          \
    extern "C" __global__ void __launch_bounds__(HIP_THREADS) hip_search_d##D(                                \
        const bf16_t* q, const bf16_t* kc, const u32* items, const u32* table0, const u32* tables, int heads,   \
        int kv_heads, int block_size, u32* lists, int stride, u32* mask) {                                     \
        hip_search<D>(q, kc, items, table0, tables, heads, kv_heads, block_size, lists, stride, mask);         \
    }

HIP_KERNELS(16)
HIP_KERNELS(32)
HIP_KERNELS(64)
HIP_KERNELS(128)
