// Skinny products for decode: y[m, n] = x[m, k] · w[n, k]^T with m <= 8 rows (bf16 in, f32 accumulate, bf16
// out). At these shapes the product is a stream over the weights, so the kernel is written for bandwidth: a block
// of 256 threads owns 4 output rows and splits k over its threads, each reading 16-byte pieces of the 4 weight
// rows (coalesced, 8 loads in flight per thread after unrolling) and of the m input rows (which stay in L1/L2);
// warp reductions and a shared-memory sum finish the dot products. Needs k % 8 == 0. Grid: ceil(n / 4) blocks
// of 256 threads.

__device__ __forceinline__ void unpack8(uint4 v, float* f) {
    f[0] = __uint_as_float(v.x << 16); f[1] = __uint_as_float(v.x & 0xffff0000u);
    f[2] = __uint_as_float(v.y << 16); f[3] = __uint_as_float(v.y & 0xffff0000u);
    f[4] = __uint_as_float(v.z << 16); f[5] = __uint_as_float(v.z & 0xffff0000u);
    f[6] = __uint_as_float(v.w << 16); f[7] = __uint_as_float(v.w & 0xffff0000u);
}

// acc[m][r] += the 8 products of 16-byte piece p of weight row r (in wv[r]) and of input row m.
template <int M, int R>
__device__ __forceinline__ void fma_piece(float (&acc)[M][R], const bf16_t* __restrict__ x, const uint4 (&wv)[R],
                                          int p, int k) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
        float xf[8];
        unpack8(reinterpret_cast<const uint4*>(x + (size_t)m * k)[p], xf);
#pragma unroll
        for (int r = 0; r < R; ++r) {
            float wf[8];
            unpack8(wv[r], wf);
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[m][r] += wf[e] * xf[e];
        }
    }
}

// The R weight rows `rows` of a block dotted with the m inputs; returns, in threads t < M * R, the sum for
// m = t / R, r = t % R. This is where the GEMV kernels wait for the previous kernel (pdl_wait): each thread first
// loads its first two pieces of every weight row, so the weight stream starts while the kernel before finishes.
template <int M, int R>
__device__ __forceinline__ float dot_rows(const bf16_t* __restrict__ x, const bf16_t* __restrict__ w,
                                          const int* rows, int k) {
    __shared__ float part[8][M][R];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float acc[M][R];
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
        for (int r = 0; r < R; ++r) acc[m][r] = 0.0f;
    const uint4* wr[R];
#pragma unroll
    for (int r = 0; r < R; ++r) wr[r] = reinterpret_cast<const uint4*>(w + (size_t)rows[r] * k);
    const int pieces = k >> 3;  // 16-byte pieces per row
    const int p0 = threadIdx.x, p1 = threadIdx.x + 256;
    uint4 w0[R], w1[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        w0[r] = p0 < pieces ? wr[r][p0] : make_uint4(0, 0, 0, 0);
        w1[r] = p1 < pieces ? wr[r][p1] : make_uint4(0, 0, 0, 0);
    }
    PDL_ENTER();
    if (p0 < pieces) fma_piece<M, R>(acc, x, w0, p0, k);
    if (p1 < pieces) fma_piece<M, R>(acc, x, w1, p1, k);
#pragma unroll 2
    for (int p = threadIdx.x + 512; p < pieces; p += 256) {
        uint4 wv[R];
#pragma unroll
        for (int r = 0; r < R; ++r) wv[r] = wr[r][p];
        fma_piece<M, R>(acc, x, wv, p, k);
    }
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
        for (int r = 0; r < R; ++r) {
            float v = warp_sum(acc[m][r]);
            if (lane == 0) part[warp][m][r] = v;
        }
    __syncthreads();
    float v = 0.0f;
    if (threadIdx.x < M * R) {
        const int m = threadIdx.x / R, r = threadIdx.x % R;
#pragma unroll
        for (int i = 0; i < 8; ++i) v += part[i][m][r];
    }
    return v;
}

template <int M>
__device__ __forceinline__ float dot4(const bf16_t* __restrict__ x, const bf16_t* __restrict__ w, const int* rows,
                                      int k) {
    return dot_rows<M, 4>(x, w, rows, k);
}

// y = x w^T. Block b: rows GEMV_ROWS * b ... (8 rows per block measured slower on the H200 than 4: see
// BENCHMARKS.md).
#define GEMV_ROWS 4
template <int M>
__device__ __forceinline__ void gemv(const bf16_t* __restrict__ x, const bf16_t* __restrict__ w,
                                     bf16_t* __restrict__ y, int n, int k) {
    const int row0 = blockIdx.x * GEMV_ROWS;
    int rows[GEMV_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; ++r) rows[r] = min(row0 + r, n - 1);
    const float v = dot_rows<M, GEMV_ROWS>(x, w, rows, k);
    if (threadIdx.x < M * GEMV_ROWS) {
        const int m = threadIdx.x / GEMV_ROWS, r = threadIdx.x % GEMV_ROWS;
        if (row0 + r < n) y[(size_t)m * n + row0 + r] = f2bf(v);
    }
}

// y[m, c] = silu(g) * u for the fused gate/up weight ([2 * inter, k]: gate rows, then up rows). Block b: gate rows
// 2b, 2b + 1 and up rows inter + 2b, inter + 2b + 1, so each block finishes two outputs. Grid: inter / 2.
template <int M>
__device__ __forceinline__ void gemv_swiglu(const bf16_t* __restrict__ x, const bf16_t* __restrict__ w,
                                            bf16_t* __restrict__ y, int inter, int k) {
    __shared__ float res[M][4];
    const int c0 = blockIdx.x * 2;
    int rows[4] = {c0, c0 + 1, inter + c0, inter + c0 + 1};
    const float v = dot4<M>(x, w, rows, k);
    if (threadIdx.x < M * 4) res[threadIdx.x >> 2][threadIdx.x & 3] = v;
    __syncthreads();
    if (threadIdx.x < M * 2) {
        const int m = threadIdx.x >> 1, e = threadIdx.x & 1;
        const float g = res[m][e], u = res[m][2 + e];
        y[(size_t)m * inter + c0 + e] = f2bf(g / (1.0f + __expf(-g)) * u);
    }
}

// The fused attention prologue for decode: q/k/v projection of the m rows (+ bias), RoPE on q and k at pos[m],
// q to q_out, k and v to cache row slots[m]. Block b: head h = b / (D / 4), pair p = b % (D / 4); rows
// h * D + {2p, 2p + 1, D / 2 + 2p, D / 2 + 2p + 1}, i.e. two rotation pairs. Grid: (heads + 2 * kv_heads) * D / 4.
template <int M>
__device__ __forceinline__ void gemv_qkv_rope(const bf16_t* __restrict__ x, const bf16_t* __restrict__ w,
                                              const bf16_t* __restrict__ bias, bf16_t* __restrict__ q_out,
                                              bf16_t* __restrict__ kc, bf16_t* __restrict__ vc,
                                              const u32* __restrict__ pos, const u32* __restrict__ slots,
                                              const float* __restrict__ inv_freq, int heads, int kv_heads,
                                              int head_dim, int k) {
    const int quarter = head_dim >> 2, half = head_dim >> 1;
    const int h = blockIdx.x / quarter, j0 = (blockIdx.x - h * quarter) * 2;
    int rows[4] = {h * head_dim + j0, h * head_dim + j0 + 1, h * head_dim + half + j0, h * head_dim + half + j0 + 1};
    float v = dot4<M>(x, w, rows, k);
    __shared__ float res[M][4];
    if (threadIdx.x < M * 4) {
        const int r = threadIdx.x & 3;
        if (bias) v += bf2f(bias[h * head_dim + (r & 2 ? half : 0) + j0 + (r & 1)]);
        res[threadIdx.x >> 2][threadIdx.x & 3] = v;
    }
    __syncthreads();
    if (threadIdx.x >= M * 2) return;
    const int m = threadIdx.x >> 1, e = threadIdx.x & 1, j = j0 + e;
    const float a = res[m][e], b = res[m][2 + e];
    const int kv_width = kv_heads * head_dim;
    if (h >= heads + kv_heads) {  // v: copied as is
        bf16_t* dst = vc + (size_t)slots[m] * kv_width + (h - heads - kv_heads) * head_dim;
        dst[j] = f2bf(a);
        dst[j + half] = f2bf(b);
        return;
    }
    float s, c;
    sincosf((float)pos[m] * inv_freq[j], &s, &c);
    bf16_t* dst = h < heads ? q_out + (size_t)m * heads * head_dim + h * head_dim
                            : kc + (size_t)slots[m] * kv_width + (h - heads) * head_dim;
    dst[j] = f2bf(a * c - b * s);
    dst[j + half] = f2bf(b * c + a * s);
}

#define GEMV_PLAIN(M)                                                                                          \
    extern "C" __global__ void __launch_bounds__(256) gemv_m##M(const bf16_t* x, const bf16_t* w, bf16_t* y, \
                                                                int n, int k) {                              \
        gemv<M>(x, w, y, n, k);                                                                              \
    }

#define GEMV(M)                                                                                                \
    extern "C" __global__ void __launch_bounds__(256) gemv_swiglu_m##M(const bf16_t* x, const bf16_t* w,     \
                                                                       bf16_t* y, int inter, int k) {        \
        gemv_swiglu<M>(x, w, y, inter, k);                                                                   \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(256) gemv_qkv_rope_m##M(                                    \
        const bf16_t* x, const bf16_t* w, const bf16_t* bias, bf16_t* q_out, bf16_t* kc, bf16_t* vc,         \
        const u32* pos, const u32* slots, const float* inv_freq, int heads, int kv_heads, int head_dim,      \
        int k) {                                                                                             \
        gemv_qkv_rope<M>(x, w, bias, q_out, kc, vc, pos, slots, inv_freq, heads, kv_heads, head_dim, k);     \
    }
GEMV(1)
GEMV(2)
GEMV(3)
GEMV(4)
GEMV(5)
GEMV(6)
GEMV(7)
GEMV(8)
GEMV_PLAIN(1)
GEMV_PLAIN(2)
GEMV_PLAIN(3)
GEMV_PLAIN(4)
GEMV_PLAIN(5)
GEMV_PLAIN(6)
GEMV_PLAIN(7)
GEMV_PLAIN(8)
