/* lmforge's native CPU decode step: one new token per row through a dense fp32 or bf16 decoder.
 *
 * The same computation as DecodePlan.step (decode.py) for the layouts it covers -- pre-norm
 * RMSNorm, optional QK-norm, rotate-half RoPE, grouped-query attention over a KV cache, SwiGLU,
 * optional q/k/v/o and MLP biases, an output projection with optional bias -- written as plain C
 * loops in ONE OpenMP parallel region per step. Why: for a small model at batch 1 each ATen call
 * costs 5-25 us, and a token of a 26.9M model makes about 150 of them; here the threads meet at
 * a barrier instead (well under a microsecond). The matrix-vector products stream each weight row
 * once for all B rows, with 16-wide accumulators the compiler vectorizes (-O3 -march=native).
 *
 * Built twice by native.py: for fp32 weights and cache, and with -DLMF_BF16 for bf16 ones. Either
 * way activations and sums stay fp32 (torch's bf16 forward rounds them to bf16 after every op), so
 * the bf16 build is closer to an fp32 forward than torch's bf16 step is. Not bitwise equal to
 * torch (summation order differs); native.py's tests hold the fp32 build to fp32 rounding.
 * Linked against the libgomp torch already loaded, so it shares torch's thread pool rather than
 * starting a second one.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

/* The weights' (and the KV cache's) element type: fp32, or bf16 bits when built with -DLMF_BF16.
 * Activations and accumulators are fp32 either way. */
#ifdef LMF_BF16
typedef uint16_t W;
#else
typedef float W;
#endif

typedef struct {
    const W *input_norm, *q, *q_bias, *k, *k_bias, *v, *v_bias, *o, *o_bias, *q_norm, *k_norm, *post_norm;
    const W *gate, *gate_bias, *up, *up_bias, *down, *down_bias;
} Layer;

typedef struct {
    int64_t n_layers, d_model, n_heads, n_kv_heads, head_dim, ffn_hidden, vocab_size;
    double eps;
    const W *embed, *final_norm, *lm_head, *lm_head_bias;
    const float *inv_freq;
    const Layer *layers;
} Model;

/* Per-step inputs. Cache tensors are [n_layers, slots, n_kv_heads, max_len, head_dim], contiguous;
 * row b uses slot b. Before the step `length` positions are cached; row b writes its new key and
 * value at column write_pos[b] (or `length` when write_pos is NULL) and attends over columns
 * [0, length] where mask[b * mask_stride + j] is nonzero (all of them when mask is NULL). */
typedef struct {
    int64_t batch, length, slots, max_len, mask_stride, threads;
    const int64_t *tokens, *positions, *write_pos;
    const uint8_t *mask;
    W *k_cache, *v_cache;
    float *logits;
} Step;

/* 16 floats as one value: GCC and Clang map it onto whatever vectors the CPU has (one AVX-512
 * register, two AVX2 ones, four NEON ones), so the code stays portable without intrinsics. */
typedef float v16 __attribute__((vector_size(64), aligned(4)));
#define LANES 16

typedef float v8 __attribute__((vector_size(32), aligned(4)));

/* wvec: 16 weights as fp32 lanes; wget / wput: one element to and from fp32. bf16 is the top half
 * of an fp32, so widening is a shift; narrowing rounds to nearest even, as torch does. */
#ifdef LMF_BF16
typedef uint16_t h16 __attribute__((vector_size(32), aligned(2)));
typedef uint32_t u16 __attribute__((vector_size(64), aligned(4)));
static inline v16 wvec(const W *p) { return (v16)(__builtin_convertvector(*(const h16 *)p, u16) << 16); }
static inline float wget(const W *p) {
    union { uint32_t u; float f; } c = {(uint32_t)*p << 16};
    return c.f;
}
static inline W wput(float f) {
    union { float f; uint32_t u; } c = {f};
    if ((c.u & 0x7fffffffu) > 0x7f800000u) return (W)((c.u >> 16) | 0x40);  /* NaN stays NaN */
    return (W)((c.u + 0x7fffu + ((c.u >> 16) & 1u)) >> 16);
}
#else
static inline v16 wvec(const W *p) { return *(const v16 *)p; }
static inline float wget(const W *p) { return *p; }
static inline W wput(float f) { return f; }
#endif
typedef float v4 __attribute__((vector_size(16), aligned(4)));

/* The sum of the 16 lanes as a tree (halves added to halves): a serial loop over the lanes would
 * be a 16-add dependency chain, as long as the whole 512-wide dot product before it. */
static inline float hsum(v16 a) {
    union { v16 whole; v8 half[2]; } u = {a};
    union { v8 whole; v4 half[2]; } w = {u.half[0] + u.half[1]};
    v4 c = w.half[0] + w.half[1];
    return (c[0] + c[2]) + (c[1] + c[3]);
}

/* dot(a, b) over n floats: vector lanes, then the tree (see hsum), then the tail. */
static inline float dot(const float *a, const float *b, int64_t n) {
    v16 acc = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) acc += *(const v16 *)(a + i) * *(const v16 *)(b + i);
    float s = hsum(acc);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* The same with b in the weights' type (a cached key). */
static inline float dotw(const float *a, const W *b, int64_t n) {
    v16 acc = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) acc += *(const v16 *)(a + i) * wvec(b + i);
    float s = hsum(acc);
    for (; i < n; i++) s += a[i] * wget(b + i);
    return s;
}

/* out[r] = dot(w_r, x) for the four rows w0..w3 (some may repeat; the caller keeps only `rows`). */
static inline void dot4(const W *w0, const W *w1, const W *w2, const W *w3, const float *x, int64_t K, float *out) {
    v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    int64_t k = 0;
    for (; k + LANES <= K; k += LANES) {
        v16 xv = *(const v16 *)(x + k);
        a0 += wvec(w0 + k) * xv;
        a1 += wvec(w1 + k) * xv;
        a2 += wvec(w2 + k) * xv;
        a3 += wvec(w3 + k) * xv;
    }
    float s0 = hsum(a0), s1 = hsum(a1), s2 = hsum(a2), s3 = hsum(a3);
    for (; k < K; k++) {
        s0 += wget(w0 + k) * x[k]; s1 += wget(w1 + k) * x[k]; s2 += wget(w2 + k) * x[k]; s3 += wget(w3 + k) * x[k];
    }
    out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;
}

/* dot4 for two vectors at once, over fp32 rows (the weights themselves in the fp32 build, rows
 * block4 has widened in the bf16 one): each weight load feeds two products, and eight
 * independent accumulators keep both FMA units busy (four would wait on each other's latency). */
static inline void dot4x2(const float *w0, const float *w1, const float *w2, const float *w3, const float *x, const float *z, int64_t K,
                          float *out_x, float *out_z) {
    v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0};
    int64_t k = 0;
    for (; k + LANES <= K; k += LANES) {
        v16 xv = *(const v16 *)(x + k), zv = *(const v16 *)(z + k);
        v16 r0 = *(const v16 *)(w0 + k), r1 = *(const v16 *)(w1 + k), r2 = *(const v16 *)(w2 + k), r3 = *(const v16 *)(w3 + k);
        a0 += r0 * xv; a1 += r1 * xv; a2 += r2 * xv; a3 += r3 * xv;
        c0 += r0 * zv; c1 += r1 * zv; c2 += r2 * zv; c3 += r3 * zv;
    }
    float s[8] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3), hsum(c0), hsum(c1), hsum(c2), hsum(c3)};
    for (; k < K; k++) {
        float r0 = w0[k], r1 = w1[k], r2 = w2[k], r3 = w3[k];
        s[0] += r0 * x[k]; s[1] += r1 * x[k]; s[2] += r2 * x[k]; s[3] += r3 * x[k];
        s[4] += r0 * z[k]; s[5] += r1 * z[k]; s[6] += r2 * z[k]; s[7] += r3 * z[k];
    }
    memcpy(out_x, s, 4 * sizeof(float));
    memcpy(out_z, s + 4, 4 * sizeof(float));
}

#define MAX_BATCH 64  /* rows per step; native.py sends at most NativeDecoder.MAX_BATCH (<= 64) */

/* The rows [n0, n0 + rows) of W [N, K] (rows <= 4) times each x[b] (b < B, rows ldx apart):
 * out[b * 4 + r] = W[n0 + r] . x[b] + bias[n0 + r]. The four weight rows stay in L1 across b.
 * `wide` is this thread's scratch of 4 * K floats (used by the bf16 build only). */
static inline void block4(const W *weight, const W *bias, int64_t n0, int64_t rows, int64_t K, const float *x, int64_t ldx, int64_t B,
                          float *out, float *wide) {
    const W *w0 = weight + n0 * K;
    const W *w1 = rows > 1 ? w0 + K : w0, *w2 = rows > 2 ? w0 + 2 * K : w0, *w3 = rows > 3 ? w0 + 3 * K : w0;
    int64_t b = 0;
    if (B >= 2) {
#ifdef LMF_BF16
        /* Widen the rows to fp32 once for all pairs of batch rows: converting per pair made the
         * products compute-bound from 4 rows on. */
        for (int64_t r = 0; r < rows; r++) {
            const W *src = w0 + r * K;
            float *dst = wide + r * K;
            int64_t k = 0;
            for (; k + LANES <= K; k += LANES) *(v16 *)(dst + k) = wvec(src + k);
            for (; k < K; k++) dst[k] = wget(src + k);
        }
        const float *f0 = wide, *f1 = rows > 1 ? wide + K : wide, *f2 = rows > 2 ? wide + 2 * K : wide, *f3 = rows > 3 ? wide + 3 * K : wide;
#else
        const float *f0 = w0, *f1 = w1, *f2 = w2, *f3 = w3;
        (void)wide;
#endif
        for (; b + 2 <= B; b += 2) dot4x2(f0, f1, f2, f3, x + b * ldx, x + (b + 1) * ldx, K, out + b * 4, out + (b + 1) * 4);
        if (b < B) {  /* an odd last row: paired with itself, which beats four dependent chains */
            float twin[4];
            dot4x2(f0, f1, f2, f3, x + b * ldx, x + b * ldx, K, out + b * 4, twin);
            b++;
        }
    }
    if (b < B) dot4(w0, w1, w2, w3, x + b * ldx, K, out + b * 4);
    if (bias)
        for (b = 0; b < B; b++)
            for (int64_t r = 0; r < rows; r++) out[b * 4 + r] += wget(bias + n0 + r);
}

enum Epilogue { STORE, ADD };  /* y = W x + b, or y += W x + b (a residual connection) */

/* y[b, n] (= or +=) W[n] . x[b] + bias[n] for b < B; inside the parallel region, rows split
 * across the threads, an implicit barrier at the end. */
static void matvec(const W *weight, const W *bias, int64_t N, int64_t K, const float *x, int64_t ldx, float *y, int64_t ldy,
                   int64_t B, enum Epilogue epilogue, float *wide) {
    int64_t blocks = (N + 3) / 4;
    #pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; blk++) {
        int64_t n0 = blk * 4, rows = N - n0 < 4 ? N - n0 : 4;
        float out[4 * MAX_BATCH];
        block4(weight, bias, n0, rows, K, x, ldx, B, out, wide);
        for (int64_t b = 0; b < B; b++) {
            float *yb = y + b * ldy + n0;
            for (int64_t r = 0; r < rows; r++) yb[r] = epilogue == ADD ? yb[r] + out[b * 4 + r] : out[b * 4 + r];
        }
    }
}

/* h[b] = weight * x[b] / rms(x[b]) for rows of length D (torch's F.rms_norm, then the weight). */
static void rms_norm_row(const float *x, const W *weight, int64_t D, double eps, float *h) {
    float ss = dot(x, x, D);
    float inv = 1.0f / sqrtf(ss / (float)D + (float)eps);
    for (int64_t i = 0; i < D; i++) h[i] = wget(weight + i) * (x[i] * inv);
}

/* Rotate-half RoPE on one head: x·cos + [-x2, x1]·sin. */
static void rope_head(float *x, const float *cos_t, const float *sin_t, int64_t half) {
    for (int64_t i = 0; i < half; i++) {
        float x1 = x[i], x2 = x[i + half];
        x[i] = x1 * cos_t[i] - x2 * sin_t[i];
        x[i + half] = x2 * cos_t[i] + x1 * sin_t[i];
    }
}

/* Returns 0, or 1 + the row whose token is out of range, -1 when memory ran out, -2 for more than
 * MAX_BATCH rows. */
int lmf_decode_step(const Model *m, const Step *s) {
    const int64_t B = s->batch, D = m->d_model, H = m->n_heads, KV = m->n_kv_heads, d = m->head_dim;
    const int64_t F = m->ffn_hidden, V = m->vocab_size, S = s->length + 1, half = d / 2, group = H / KV;
    if (B > MAX_BATCH) return -2;
    for (int64_t b = 0; b < B; b++)
        if (s->tokens[b] < 0 || s->tokens[b] >= V) return (int)(1 + b);
    const int threads = s->threads > 0 ? (int)s->threads : 1;
    /* x, h: [B, D]; q, att: [B, H*d]; k, v: [B, KV*d]; g: [B, F]; rope: [B, 2, half]; scores: [threads, S];
     * wide: [threads, 4, the widest K] (bf16 only) */
    int64_t widest = D > H * d ? D : H * d;
    if (F > widest) widest = F;
#ifdef LMF_BF16
    const int64_t wide_per_thread = 4 * widest;
#else
    const int64_t wide_per_thread = 0;
#endif
    size_t floats = (size_t)B * (2 * D + 2 * H * d + 2 * KV * d + F + 2 * half) + (size_t)threads * (S + wide_per_thread);
    float *buf = malloc(floats * sizeof(float));
    if (!buf) return -1;
    float *x = buf, *h = x + B * D, *q = h + B * D, *att = q + B * H * d, *kn = att + B * H * d, *vn = kn + B * KV * d;
    float *g = vn + B * KV * d, *rope = g + B * F, *scores = rope + B * 2 * half, *wides = scores + (int64_t)threads * S;
    const float scale = 1.0f / sqrtf((float)d);
    const int64_t layer_stride = s->slots * KV * s->max_len * d;

    #pragma omp parallel num_threads(threads)
    {
        float *wide = wides + (int64_t)omp_get_thread_num() * wide_per_thread;
        #pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            const W *row = m->embed + s->tokens[b] * D;
            for (int64_t i = 0; i < D; i++) x[b * D + i] = wget(row + i);
            float pos = (float)s->positions[b];
            for (int64_t i = 0; i < half; i++) {
                float freq = pos * m->inv_freq[i];
                rope[b * 2 * half + i] = cosf(freq);
                rope[b * 2 * half + half + i] = sinf(freq);
            }
        }
        for (int64_t l = 0; l < m->n_layers; l++) {
            const Layer *L = &m->layers[l];
            W *kc = s->k_cache + l * layer_stride, *vc = s->v_cache + l * layer_stride;
            #pragma omp for schedule(static)
            for (int64_t b = 0; b < B; b++) rms_norm_row(x + b * D, L->input_norm, D, m->eps, h + b * D);
            /* q, k and v rows as one range split across the threads: one barrier, not three. */
            int64_t qb = (H * d + 3) / 4, kb = (KV * d + 3) / 4;
            #pragma omp for schedule(static)
            for (int64_t blk = 0; blk < qb + 2 * kb; blk++) {
                const W *weight, *bias; float *y; int64_t N, n0, ldy;
                if (blk < qb) { weight = L->q; bias = L->q_bias; y = q; N = H * d; n0 = blk * 4; ldy = H * d; }
                else if (blk < qb + kb) { weight = L->k; bias = L->k_bias; y = kn; N = KV * d; n0 = (blk - qb) * 4; ldy = KV * d; }
                else { weight = L->v; bias = L->v_bias; y = vn; N = KV * d; n0 = (blk - qb - kb) * 4; ldy = KV * d; }
                int64_t rows = N - n0 < 4 ? N - n0 : 4;
                float out[4 * MAX_BATCH];
                block4(weight, bias, n0, rows, D, h, D, B, out, wide);
                for (int64_t b = 0; b < B; b++) memcpy(y + b * ldy + n0, out + b * 4, rows * sizeof(float));
            }
            /* QK-norm, RoPE and the cache write, one (row, kv head) at a time with its query heads. */
            #pragma omp for schedule(static)
            for (int64_t bk = 0; bk < B * KV; bk++) {
                int64_t b = bk / KV, kvh = bk % KV;
                const float *cos_t = rope + b * 2 * half, *sin_t = cos_t + half;
                for (int64_t hq = kvh * group; hq < (kvh + 1) * group; hq++) {
                    float *qh = q + b * H * d + hq * d;
                    if (L->q_norm) rms_norm_row(qh, L->q_norm, d, m->eps, qh);
                    rope_head(qh, cos_t, sin_t, half);
                }
                float *kh = kn + b * KV * d + kvh * d;
                if (L->k_norm) rms_norm_row(kh, L->k_norm, d, m->eps, kh);
                rope_head(kh, cos_t, sin_t, half);
                int64_t col = s->write_pos ? s->write_pos[b] : s->length;
                int64_t off = ((b * KV + kvh) * s->max_len + col) * d;
                const float *vh = vn + b * KV * d + kvh * d;
                for (int64_t i = 0; i < d; i++) {
                    kc[off + i] = wput(kh[i]);
                    vc[off + i] = wput(vh[i]);
                }
            }
            /* Attention: softmax(q.k * scale) over the visible columns, times v. */
            float *sc = scores + (int64_t)omp_get_thread_num() * S;
            #pragma omp for schedule(static)
            for (int64_t bh = 0; bh < B * H; bh++) {
                int64_t b = bh / H, hq = bh % H, kvh = hq / group;
                const float *qh = q + b * H * d + hq * d;
                const W *kb_ = kc + (b * KV + kvh) * s->max_len * d, *vb = vc + (b * KV + kvh) * s->max_len * d;
                const uint8_t *visible = s->mask ? s->mask + b * s->mask_stride : NULL;
                float top = -INFINITY;
                for (int64_t j = 0; j < S; j++) {
                    if (visible && !visible[j]) { sc[j] = -INFINITY; continue; }
                    sc[j] = dotw(qh, kb_ + j * d, d) * scale;
                    if (sc[j] > top) top = sc[j];
                }
                float *out = att + b * H * d + hq * d;
                for (int64_t i = 0; i < d; i++) out[i] = 0;
                if (top == -INFINITY) continue;  /* nothing visible: zeros (the engine never asks this) */
                float total = 0;
                for (int64_t j = 0; j < S; j++) {
                    if (sc[j] == -INFINITY) continue;
                    float p = expf(sc[j] - top);
                    total += p;
                    for (int64_t i = 0; i < d; i++) out[i] += p * wget(vb + j * d + i);
                }
                for (int64_t i = 0; i < d; i++) out[i] /= total;
            }
            matvec(L->o, L->o_bias, D, H * d, att, H * d, x, D, B, ADD, wide);
            #pragma omp for schedule(static)
            for (int64_t b = 0; b < B; b++) rms_norm_row(x + b * D, L->post_norm, D, m->eps, h + b * D);
            /* gate and up for the same rows together, fused with silu(gate) * up. */
            #pragma omp for schedule(static)
            for (int64_t blk = 0; blk < (F + 3) / 4; blk++) {
                int64_t n0 = blk * 4, rows = F - n0 < 4 ? F - n0 : 4;
                float gate[4 * MAX_BATCH], up[4 * MAX_BATCH];
                block4(L->gate, L->gate_bias, n0, rows, D, h, D, B, gate, wide);
                block4(L->up, L->up_bias, n0, rows, D, h, D, B, up, wide);
                for (int64_t b = 0; b < B; b++)
                    for (int64_t r = 0; r < rows; r++) {
                        float a = gate[b * 4 + r];
                        g[b * F + n0 + r] = a / (1.0f + expf(-a)) * up[b * 4 + r];
                    }
            }
            matvec(L->down, L->down_bias, D, F, g, F, x, D, B, ADD, wide);
        }
        #pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) rms_norm_row(x + b * D, m->final_norm, D, m->eps, h + b * D);
        matvec(m->lm_head, m->lm_head_bias, V, D, h, D, s->logits, V, B, STORE, wide);
    }
    free(buf);
    return 0;
}
