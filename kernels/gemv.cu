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

template <int M>
__device__ __forceinline__ void gemv(const bf16_t* __restrict__ x, const bf16_t* __restrict__ w,
                                     bf16_t* __restrict__ y, int n, int k) {
    __shared__ float part[8][M][4];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row0 = blockIdx.x * 4;
    float acc[M][4];
#pragma unroll
    for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = acc[m][2] = acc[m][3] = 0.0f;
    const uint4* wr[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) wr[r] = reinterpret_cast<const uint4*>(w + (size_t)min(row0 + r, n - 1) * k);
    const int pieces = k >> 3;  // 16-byte pieces per row
#pragma unroll 2
    for (int p = threadIdx.x; p < pieces; p += 256) {
        uint4 wv[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) wv[r] = wr[r][p];
#pragma unroll
        for (int m = 0; m < M; ++m) {
            float xf[8];
            unpack8(reinterpret_cast<const uint4*>(x + (size_t)m * k)[p], xf);
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                float wf[8];
                unpack8(wv[r], wf);
#pragma unroll
                for (int e = 0; e < 8; ++e) acc[m][r] += wf[e] * xf[e];
            }
        }
    }
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            float v = warp_sum(acc[m][r]);
            if (lane == 0) part[warp][m][r] = v;
        }
    __syncthreads();
    if (threadIdx.x < M * 4) {
        const int m = threadIdx.x >> 2, r = threadIdx.x & 3;
        float v = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) v += part[i][m][r];
        if (row0 + r < n) y[(size_t)m * n + row0 + r] = f2bf(v);
    }
}

#define GEMV(M)                                                                                                \
    extern "C" __global__ void __launch_bounds__(256) gemv_m##M(const bf16_t* x, const bf16_t* w, bf16_t* y, \
                                                                int n, int k) {                              \
        gemv<M>(x, w, y, n, k);                                                                              \
    }
GEMV(1)
GEMV(2)
GEMV(3)
GEMV(4)
GEMV(5)
GEMV(6)
GEMV(7)
GEMV(8)
