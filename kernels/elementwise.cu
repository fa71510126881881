// Element-wise and row-wise kernels of the Llama forward pass. Activations are row-major [rows, width]; the
// residual stream is f32, everything else bf16. Each kernel's CPU reference is the matching method of
// src/engine/backend/cpu.rs; tests/cuda_parity.rs compares the two.

// out[r, :] = table[ids[r], :] (bf16 -> f32 residual). Grid: rows.
extern "C" __global__ void embed_rows(const bf16_t* __restrict__ table, const u32* __restrict__ ids,
                                      float* __restrict__ out, int width) {
    PDL_ENTER();
    const bf16_t* src = table + (size_t)ids[blockIdx.x] * width;
    float* dst = out + (size_t)blockIdx.x * width;
    for (int c = threadIdx.x; c < width; c += blockDim.x) dst[c] = bf2f(src[c]);
}

// out = rms_norm(x) * w, x f32, out bf16. Grid: rows.
extern "C" __global__ void rms_norm(const float* __restrict__ x, const bf16_t* __restrict__ w,
                                    bf16_t* __restrict__ out, int width, float eps) {
    PDL_ENTER();
    const float* row = x + (size_t)blockIdx.x * width;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < width; c += blockDim.x) ss += row[c] * row[c];
    float scale = rsqrtf(block_sum(ss) / (float)width + eps);
    bf16_t* o = out + (size_t)blockIdx.x * width;
    for (int c = threadIdx.x; c < width; c += blockDim.x) o[c] = f2bf(row[c] * scale * bf2f(w[c]));
}

// residual += delta; out = rms_norm(residual) * w. Grid: rows.
extern "C" __global__ void add_rms_norm(float* __restrict__ residual, const bf16_t* __restrict__ delta,
                                        const bf16_t* __restrict__ w, bf16_t* __restrict__ out, int width,
                                        float eps) {
    PDL_ENTER();
    float* row = residual + (size_t)blockIdx.x * width;
    const bf16_t* d = delta + (size_t)blockIdx.x * width;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        float v = row[c] + bf2f(d[c]);
        row[c] = v;
        ss += v * v;
    }
    float scale = rsqrtf(block_sum(ss) / (float)width + eps);
    bf16_t* o = out + (size_t)blockIdx.x * width;
    for (int c = threadIdx.x; c < width; c += blockDim.x) o[c] = f2bf(row[c] * scale * bf2f(w[c]));
}

// residual += delta over n elements.
extern "C" __global__ void add_residual(float* __restrict__ residual, const bf16_t* __restrict__ delta, size_t n) {
    PDL_ENTER();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        residual[i] += bf2f(delta[i]);
}

// x[r, c] += bias[c] over n elements of rows of `width`.
extern "C" __global__ void add_bias(bf16_t* __restrict__ x, const bf16_t* __restrict__ bias, int width, size_t n) {
    PDL_ENTER();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = f2bf(bf2f(x[i]) + bf2f(bias[i % width]));
}

// Rotary embedding in place, Llama's rotate-half layout: within each head, element j pairs with j + head_dim/2.
// Row r is at position pos[r]; inv_freq has head_dim/2 entries. Grid: rows.
extern "C" __global__ void rope(bf16_t* __restrict__ x, const u32* __restrict__ pos,
                                const float* __restrict__ inv_freq, int width, int head_dim) {
    PDL_ENTER();
    int half = head_dim >> 1;
    float p = (float)pos[blockIdx.x];
    bf16_t* row = x + (size_t)blockIdx.x * width;
    for (int i = threadIdx.x; i < (width >> 1); i += blockDim.x) {
        int head = i / half, j = i - head * half;
        bf16_t* h = row + head * head_dim;
        float s, c;
        sincosf(p * inv_freq[j], &s, &c);
        float a = bf2f(h[j]), b = bf2f(h[j + half]);
        h[j] = f2bf(a * c - b * s);
        h[j + half] = f2bf(b * c + a * s);
    }
}

// out = silu(gate) * up over n elements.
extern "C" __global__ void swiglu(const bf16_t* __restrict__ gate, const bf16_t* __restrict__ up,
                                  bf16_t* __restrict__ out, size_t n) {
    PDL_ENTER();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float g = bf2f(gate[i]);
        out[i] = f2bf(g / (1.0f + __expf(-g)) * bf2f(up[i]));
    }
}

// out[i, :] = x[rows[i], :]. Grid: output rows.
extern "C" __global__ void gather_rows(const bf16_t* __restrict__ x, const u32* __restrict__ rows,
                                       bf16_t* __restrict__ out, int width) {
    PDL_ENTER();
    const bf16_t* src = x + (size_t)rows[blockIdx.x] * width;
    bf16_t* dst = out + (size_t)blockIdx.x * width;
    for (int c = threadIdx.x; c < width; c += blockDim.x) dst[c] = src[c];
}

// Paged KV write: row r of k and v goes to cache row slots[r] (one cache row per slot, `width` = kv_heads *
// head_dim). Grid: rows.
extern "C" __global__ void write_kv(const bf16_t* __restrict__ k, const bf16_t* __restrict__ v,
                                    const u32* __restrict__ slots, bf16_t* __restrict__ kc,
                                    bf16_t* __restrict__ vc, int width) {
    PDL_ENTER();
    size_t src = (size_t)blockIdx.x * width, dst = (size_t)slots[blockIdx.x] * width;
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        kc[dst + c] = k[src + c];
        vc[dst + c] = v[src + c];
    }
}

// Deterministic random bf16 values: offset + std * u, u uniform on [-sqrt(3), sqrt(3)) from a hash of (seed, i).
// Used for random-weight models too large to build on the host.
extern "C" __global__ void fill_uniform(bf16_t* __restrict__ out, size_t n, u64 seed, float std, float offset) {
    PDL_ENTER();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float u = unit_open(mix64(seed ^ mix64(i))) * 2.0f - 1.0f;
        out[i] = f2bf(offset + std * 1.7320508f * u);
    }
}

// out[r, c] = silu(gu[r, c]) * gu[r, inter + c]: the gate and up projections computed as one [rows, 2 * inter]
// product. n = rows * inter.
extern "C" __global__ void swiglu_packed(const bf16_t* __restrict__ gu, bf16_t* __restrict__ out, int inter,
                                         size_t n) {
    PDL_ENTER();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / inter, c = i - r * inter;
        float g = bf2f(gu[r * 2 * inter + c]);
        out[i] = f2bf(g / (1.0f + __expf(-g)) * bf2f(gu[r * 2 * inter + inter + c]));
    }
}

// Vectorised row kernels for widths that are a multiple of 8 (width / 8 threads per row, rounded up to a warp
// multiple, at most 1024): each thread loads its 8 elements once with 16-byte accesses, so a row costs one round
// trip to memory instead of a strided loop's many. Same results as rms_norm / add_rms_norm above.
// The shared end of the vectorised norms: scale this thread's 8 values by the row's RMS and the weights, store.
__device__ __forceinline__ void norm8_store(float* v, float ss, const bf16_t* __restrict__ w,
                                            bf16_t* __restrict__ out, int width, float eps, int c, bool on) {
    float wf[8];
    if (on) load8_bf16(w + c, wf);  // in flight during the reduction
    const float scale = rsqrtf(block_sum(ss) / (float)width + eps);
    if (on) {
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = v[i] * scale * wf[i];
        store8_bf16(out + (size_t)blockIdx.x * width + c, v);
    }
}

extern "C" __global__ void rms_norm_v8(const float* __restrict__ x, const bf16_t* __restrict__ w,
                                       bf16_t* __restrict__ out, int width, float eps) {
    PDL_ENTER();
    const int c = threadIdx.x * 8;
    const bool on = c < width;
    const float* row = x + (size_t)blockIdx.x * width;
    float v[8], ss = 0.0f;
    if (on) {
        float4 a = *reinterpret_cast<const float4*>(row + c), b = *reinterpret_cast<const float4*>(row + c + 4);
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
#pragma unroll
        for (int i = 0; i < 8; ++i) ss += v[i] * v[i];
    }
    norm8_store(v, ss, w, out, width, eps, c, on);
}

extern "C" __global__ void add_rms_norm_v8(float* __restrict__ residual, const bf16_t* __restrict__ delta,
                                           const bf16_t* __restrict__ w, bf16_t* __restrict__ out, int width,
                                           float eps) {
    PDL_ENTER();
    const int c = threadIdx.x * 8;
    const bool on = c < width;
    float* row = residual + (size_t)blockIdx.x * width;
    float v[8], ss = 0.0f;
    if (on) {
        float4 a = *reinterpret_cast<const float4*>(row + c), b = *reinterpret_cast<const float4*>(row + c + 4);
        float d[8];
        load8_bf16(delta + (size_t)blockIdx.x * width + c, d);
        v[0] = a.x + d[0]; v[1] = a.y + d[1]; v[2] = a.z + d[2]; v[3] = a.w + d[3];
        v[4] = b.x + d[4]; v[5] = b.y + d[5]; v[6] = b.z + d[6]; v[7] = b.w + d[7];
        *reinterpret_cast<float4*>(row + c) = make_float4(v[0], v[1], v[2], v[3]);
        *reinterpret_cast<float4*>(row + c + 4) = make_float4(v[4], v[5], v[6], v[7]);
#pragma unroll
        for (int i = 0; i < 8; ++i) ss += v[i] * v[i];
    }
    norm8_store(v, ss, w, out, width, eps, c, on);
}

// swiglu_packed for inter % 8 == 0: 8 outputs per thread. Grid: (ceil(inter / 8 / 256), rows); 256 threads.
extern "C" __global__ void swiglu_packed_v8(const bf16_t* __restrict__ gu, bf16_t* __restrict__ out, int inter) {
    PDL_ENTER();
    const int c = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (c >= inter) return;
    const bf16_t* row = gu + (size_t)blockIdx.y * 2 * inter;
    float g[8], u[8];
    load8_bf16(row + c, g);
    load8_bf16(row + inter + c, u);
#pragma unroll
    for (int i = 0; i < 8; ++i) g[i] = g[i] / (1.0f + __expf(-g[i])) * u[i];
    store8_bf16(out + (size_t)blockIdx.y * inter + c, g);
}

// The fused attention prologue of one layer: row r of `qkv` holds q (heads * D), k and v (kv_heads * D each);
// RoPE (position pos[r]) is applied to q and k, q goes to q_out (heads * D per row) and k, v to cache row
// slots[r]. One block per (row, head): blockIdx.y < heads + kv_heads rotates that head (thread j takes
// the pair j, j + head_dim / 2); the last y copies the row's v. Grid: (rows, heads + kv_heads + 1); 64 threads.
extern "C" __global__ void rope_qkv_cache_heads(const bf16_t* __restrict__ qkv, bf16_t* __restrict__ q_out,
                                                bf16_t* __restrict__ kc, bf16_t* __restrict__ vc,
                                                const u32* __restrict__ pos, const u32* __restrict__ slots,
                                                const float* __restrict__ inv_freq, int heads, int kv_heads,
                                                int head_dim) {
    PDL_ENTER();
    const int half = head_dim >> 1, kv_width = kv_heads * head_dim, head = blockIdx.y;
    const bf16_t* row = qkv + (size_t)blockIdx.x * (heads + 2 * kv_heads) * head_dim;
    const size_t slot = (size_t)slots[blockIdx.x] * kv_width;
    if (head == heads + kv_heads) {
        const bf16_t* v = row + (heads + kv_heads) * head_dim;
        for (int i = threadIdx.x; i < kv_width; i += blockDim.x) vc[slot + i] = v[i];
        return;
    }
    const float p = (float)pos[blockIdx.x];
    const bf16_t* h = row + head * head_dim;
    bf16_t* dst = head < heads ? q_out + (size_t)blockIdx.x * heads * head_dim + head * head_dim
                               : kc + slot + (head - heads) * head_dim;
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        float s, c;
        sincosf(p * inv_freq[j], &s, &c);
        float a = bf2f(h[j]), b = bf2f(h[j + half]);
        dst[j] = f2bf(a * c - b * s);
        dst[j + half] = f2bf(b * c + a * s);
    }
}
