// Short-and-wide products for batched decode: y[m, n] = x[m, k] · w[n, k]^T with 9 <= m <= 64 rows (bf16 in, f32
// accumulate, bf16 out). At these shapes the product is still a stream over the weights (64 multiply-adds per
// weight element), so the kernel is built to keep the weight stream full:
//
// - A block of 256 threads (8 warps) owns a tile of 128 output columns and one piece of k (split-k): grid
//   (n / 128, splits). Warp w computes 64 rows x 32 columns (column group w % 4) over half of each k-step
//   (w / 4) with m16n8k16 tensor-core products; the two halves are summed through shared memory at the end.
//   Every copy and ldmatrix address is a per-thread constant plus the stage base, so the loop issues little
//   besides the copies, the ldmatrix reads and the products (Nsight Compute showed a first version with
//   recomputed addresses and 4 warps stalled on integer dependencies, at under a third of the bandwidth).
// - k is walked in 64-wide steps through a STAGES-deep ring of shared-memory buffers filled by cp.async (16-byte
//   copies, bypassing L1), so STAGES - 1 steps of weights are in flight while one is multiplied. Rows are 128
//   bytes and their 16-byte pieces are XOR-swizzled by row, so the ldmatrix reads hit distinct banks.
// - Programmatic dependent launch: the weights of the first STAGES - 1 steps are requested before pdl_wait (the
//   weights are never written on the device), the inputs after it, so the weight stream starts while the previous
//   kernel drains.
// - Split-k: each block writes its f32 partial tile to `ws` [splits][m][n]; the last block of a column tile to
//   arrive (a counter per tile, reset by that block) sums the partials from L2, in split order (so the result is the
//   same whichever block arrives last), and writes the bf16 result.
//
// Needs n % 128 == 0, k % 64 == 0, 16-byte aligned rows, 1 <= splits <= k / 64, and `counters` zeroed once before
// the first launch (n / 128 entries). Dynamic shared memory: STAGES * 24 KiB.

#define SG_BN 128
#define SG_BK 64
#define SG_THREADS 256
#define SG_X_BYTES (64 * SG_BK * 2)
#define SG_W_BYTES (SG_BN * SG_BK * 2)
#define SG_STAGE_BYTES (SG_X_BYTES + SG_W_BYTES)
#define SG_RED_STRIDE (SG_BN + 8)  // floats per row of the k-half reduction buffer (padded against conflicts)

__device__ __forceinline__ void ldmatrix_x4(u32& r0, u32& r1, u32& r2, u32& r3, u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

__device__ __forceinline__ void cp_async16_u32(u32 dst, const void* src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}

__device__ __forceinline__ float2 ld_cg_f2(const float* p) {
    float2 v;
    asm volatile("ld.global.cg.v2.f32 {%0, %1}, [%2];" : "=f"(v.x), "=f"(v.y) : "l"(p));
    return v;
}

// One thread's share of the copies of a k-step. Tiles are rows of 128 bytes (64 bf16) whose 16-byte pieces are
// XOR-swizzled by row (piece ^ (row & 7)); thread t copies piece t % 8 of rows t / 8 + 32 j, which all land at
// the same swizzled column, so one shared offset serves every copy (+ 4 KiB per j).
struct SkinnyLoader {
    const bf16_t* w;  // weight row n0 + t / 8, piece t % 8
    const bf16_t* x;  // input row t / 8 (or row 0 when past m), piece t % 8
    size_t w_stride;  // 32 weight rows
    u32 shared;       // swizzled offset within a tile
    int x_rows;       // copies of input rows this thread makes (rows below the 16-row tiles in use): 0..2
    int x_valid;      // of which read memory (the rest zero-fill): rows below m
};

__device__ __forceinline__ SkinnyLoader sg_loader(const bf16_t* x, const bf16_t* w, int m, int rows, int n0, int k) {
    SkinnyLoader l;
    const int t = threadIdx.x, row = t >> 3, piece = t & 7;
    l.w = w + (size_t)(n0 + row) * k + piece * 8;
    l.x = x + (size_t)(row < m ? row : 0) * k + piece * 8;
    l.w_stride = (size_t)32 * k;
    l.shared = (u32)(row * 128 + ((piece ^ (row & 7)) << 4));
    l.x_rows = (row < rows) + (row + 32 < rows);
    l.x_valid = (row < m) + (row + 32 < m);
    return l;
}

__device__ __forceinline__ void sg_load_w(const SkinnyLoader& l, u32 stage, int step) {
    const bf16_t* src = l.w + step * SG_BK;
#pragma unroll
    for (int j = 0; j < SG_BN / 32; ++j) cp_async16_u32(stage + SG_X_BYTES + l.shared + j * 4096, src + j * l.w_stride, 16);
}

__device__ __forceinline__ void sg_load_x(const SkinnyLoader& l, u32 stage, int step, int k) {
    const bf16_t* src = l.x + step * SG_BK;
    if (l.x_rows > 0) cp_async16_u32(stage + l.shared, src, l.x_valid > 0 ? 16 : 0);
    // A zero-filling copy reads nothing, but its address still points inside x.
    if (l.x_rows > 1)
        cp_async16_u32(stage + l.shared + 4096, l.x_valid > 1 ? src + (size_t)32 * k : src, l.x_valid > 1 ? 16 : 0);
}

template <int STAGES>
__device__ __forceinline__ void gemm_skinny(const bf16_t* __restrict__ x, const bf16_t* __restrict__ w,
                                            bf16_t* __restrict__ y, float* __restrict__ ws, u32* counters, int m,
                                            int n, int k, int splits) {
    extern __shared__ __align__(128) unsigned char smem[];
    __shared__ int is_last;
    const int n0 = blockIdx.x * SG_BN;
    const int split = blockIdx.y;
    const int steps_total = k / SG_BK;
    const int s0 = (int)((long long)steps_total * split / splits);
    const int steps = (int)((long long)steps_total * (split + 1) / splits) - s0;
    const int mtiles = (m + 15) >> 4;
    const u32 base = (u32)__cvta_generic_to_shared(smem);
    const SkinnyLoader ld = sg_loader(x, w, m, mtiles * 16, n0, k);

    // Blocks walk their k-steps from different starting points (the order of a sum is still fixed per block):
    // in lockstep, every block would read the same 128-byte column of its rows at once, rows 2^n bytes apart,
    // which crowds a few memory channels.
    const int rot = steps > 0 ? (int)((blockIdx.x * 7u + blockIdx.y * 3u) % (u32)steps) : 0;
    auto step_at = [&](int i) { return s0 + (i + rot < steps ? i + rot : i + rot - steps); };
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s)
        if (s < steps) sg_load_w(ld, base + s * SG_STAGE_BYTES, step_at(s));
    PDL_ENTER();
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < steps) sg_load_x(ld, base + s * SG_STAGE_BYTES, step_at(s), k);
        cp_async_commit();
    }

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int cg = warp & 3, kh = warp >> 2, q = lane >> 3, r = lane & 7;
    // ldmatrix offsets within a stage for this warp's two 16-wide k slices (kk): inputs (m-tile 0; + 2 KiB per
    // m-tile) and weights (n8 tiles 0-1; + 2 KiB for tiles 2-3).
    u32 a_off[2], b_off[2];
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {
        const int ks = kh * 2 + kk;
        a_off[kk] = (u32)(((q & 1) * 8 + r) * 128 + (((ks * 2 + (q >> 1)) ^ r) << 4));
        b_off[kk] = (u32)(SG_X_BYTES + (cg * 32 + (q >> 1) * 8 + r) * 128 + (((ks * 2 + (q & 1)) ^ r) << 4));
    }

    float acc[4][4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[a][b][c] = 0.0f;

    int read = 0, write = STAGES - 1;  // ring slots of the step multiplied and of the step requested
    for (int t = 0; t < steps; ++t) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        if (t + STAGES - 1 < steps) {
            const u32 stage = base + write * SG_STAGE_BYTES;
            sg_load_w(ld, stage, step_at(t + STAGES - 1));
            sg_load_x(ld, stage, step_at(t + STAGES - 1), k);
        }
        cp_async_commit();
        const u32 stage = base + read * SG_STAGE_BYTES;
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
            u32 b[4][2];
            ldmatrix_x4(b[0][0], b[0][1], b[1][0], b[1][1], stage + b_off[kk]);
            ldmatrix_x4(b[2][0], b[2][1], b[3][0], b[3][1], stage + b_off[kk] + 2048);
#pragma unroll
            for (int mt = 0; mt < 4; ++mt) {
                if (mt < mtiles) {
                    u32 a0, a1, a2, a3;
                    ldmatrix_x4(a0, a1, a2, a3, stage + a_off[kk] + mt * 2048);
#pragma unroll
                    for (int j = 0; j < 4; ++j) mma_bf16(acc[mt][j], a0, a1, a2, a3, b[j][0], b[j][1]);
                }
            }
        }
        read = read + 1 == STAGES ? 0 : read + 1;
        write = write + 1 == STAGES ? 0 : write + 1;
    }
    cp_async_wait<0>();
    __syncthreads();

    // The second k-half's warps hand their sums to the first half's through shared memory.
    const int g = lane >> 2, t4 = lane & 3;
    float* red = reinterpret_cast<float*>(smem);
    if (kh == 1) {
#pragma unroll
        for (int mt = 0; mt < 4; ++mt)
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int h = 0; h < 2; ++h)
                    if (mt < mtiles)
                        *reinterpret_cast<float2*>(red + (mt * 16 + g + h * 8) * SG_RED_STRIDE + cg * 32 + j * 8 +
                                                   2 * t4) = make_float2(acc[mt][j][2 * h], acc[mt][j][2 * h + 1]);
    }
    __syncthreads();
    if (kh == 0) {
#pragma unroll
        for (int mt = 0; mt < 4; ++mt)
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int h = 0; h < 2; ++h)
                    if (mt < mtiles) {
                        const float2 v = *reinterpret_cast<const float2*>(
                            red + (mt * 16 + g + h * 8) * SG_RED_STRIDE + cg * 32 + j * 8 + 2 * t4);
                        acc[mt][j][2 * h] += v.x;
                        acc[mt][j][2 * h + 1] += v.y;
                    }
    }

    if (splits > 1) {
        if (kh == 0) {
            float* part = ws + (size_t)split * m * n;
#pragma unroll
            for (int mt = 0; mt < 4; ++mt)
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const int col = n0 + cg * 32 + j * 8 + 2 * t4;
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const int row = mt * 16 + g + h * 8;
                        if (row < m)
                            *reinterpret_cast<float2*>(part + (size_t)row * n + col) =
                                make_float2(acc[mt][j][2 * h], acc[mt][j][2 * h + 1]);
                    }
                }
        }
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) is_last = atomicAdd(&counters[blockIdx.x], 1u) == (u32)(splits - 1);
        __syncthreads();
        if (!is_last) return;
        __threadfence();
        if (kh == 0) {
#pragma unroll
            for (int mt = 0; mt < 4; ++mt)
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const int col = n0 + cg * 32 + j * 8 + 2 * t4;
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const int row = mt * 16 + g + h * 8;
                        if (row >= m) continue;
                        // In split order whichever block is last, so the result does not depend on arrival
                        // order.
                        float2 sum = make_float2(0.0f, 0.0f);
                        for (int s = 0; s < splits; ++s) {
                            const float2 v = s == split ? make_float2(acc[mt][j][2 * h], acc[mt][j][2 * h + 1])
                                                        : ld_cg_f2(ws + ((size_t)s * m + row) * n + col);
                            sum.x += v.x;
                            sum.y += v.y;
                        }
                        acc[mt][j][2 * h] = sum.x;
                        acc[mt][j][2 * h + 1] = sum.y;
                    }
                }
        }
        if (threadIdx.x == 0) counters[blockIdx.x] = 0;
    }
    if (kh != 0) return;
#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int col = n0 + cg * 32 + j * 8 + 2 * t4;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = mt * 16 + g + h * 8;
                if (row < m)
                    *reinterpret_cast<u32*>(y + (size_t)row * n + col) =
                        pack_bf2(acc[mt][j][2 * h], acc[mt][j][2 * h + 1]);
            }
        }
}

extern "C" __global__ void __launch_bounds__(SG_THREADS, 2)
    gemm_skinny_s4(const bf16_t* __restrict__ x, const bf16_t* __restrict__ w, bf16_t* __restrict__ y,
                   float* __restrict__ ws, u32* counters, int m, int n, int k, int splits) {
    gemm_skinny<4>(x, w, y, ws, counters, m, n, k, splits);
}

extern "C" __global__ void __launch_bounds__(SG_THREADS, 1)
    gemm_skinny_s8(const bf16_t* __restrict__ x, const bf16_t* __restrict__ w, bf16_t* __restrict__ y,
                   float* __restrict__ ws, u32* counters, int m, int n, int k, int splits) {
    gemm_skinny<8>(x, w, y, ws, counters, m, n, k, splits);
}
