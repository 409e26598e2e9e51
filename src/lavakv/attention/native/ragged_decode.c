#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* lavakv: exact decode attention over ragged per-head K/V storage, reading the storage in place.

   One query token per sequence. A segment is one (sequence, KV head): its G query rows (the query heads of the
   GQA group) attend over the segment's kept prompt entries (`seg_len[s]` contiguous rows of the flat K/V storage
   from row `seg_start[s]`) and over its `tail` decoded entries (a strided [batch, kv_heads, tail, dim] view).
   Work is split into chunks of at most `chunk` entries, spread over `threads` OpenMP threads; each chunk yields a
   partial softmax (row max, row sum, unnormalised output) and a segment's partials are merged at the end
   (split-K decoding). Scores, softmax and accumulation are float32; K/V are float32 or bfloat16.
   Built and loaded at run time by lavakv/native/__init__.py; the pure-PyTorch strategies are the reference. */

/* A growable buffer kept per thread across calls: large malloc'd blocks are mmap'ed and page-faulted afresh on
   every call, which costs more than a small layer's whole attention. Never freed (bounded by the largest layer). */
static float *workspace(float **buffer, size_t *capacity, size_t floats) {
    if (floats > *capacity) {
        free(*buffer);
        *buffer = (float *)malloc(sizeof(float) * floats);
        *capacity = *buffer ? floats : 0;
    }
    return *buffer;
}

static _Thread_local float *chunk_buffer, *partial_buffer;
static _Thread_local size_t chunk_capacity, partial_capacity;

static inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = ((uint32_t)h) << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Rows [first, first + n) of a matrix with row stride `row` (elements), as float32 into dst [n, width]. */
static const float *rows_f32(const void *base, int64_t row, int64_t first, int64_t n, int width, int bf16,
                             float *dst) {
    if (!bf16 && row == width) return (const float *)base + first * row;
    for (int64_t e = 0; e < n; e++) {
        if (bf16) {
            const uint16_t *src = (const uint16_t *)base + (first + e) * row;
            for (int i = 0; i < width; i++) dst[e * width + i] = bf16_to_f32(src[i]);
        } else {
            memcpy(dst + e * width, (const float *)base + (first + e) * row, sizeof(float) * width);
        }
    }
    return dst;
}

/* e^x for x <= 0, vectorisable (Cephes expf: range reduction by ln 2, degree-6 polynomial; relative error ~1e-7).
   Arguments below -87.3 give ~1e-38 instead of 0, negligible beside the row maximum's e^0 = 1. */
static inline float exp_nonpositive(float x) {
    x = x < -87.3f ? -87.3f : x;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.f;
    union { int32_t i; float f; } two_n = { .i = ((int32_t)n + 127) << 23 };  /* 2^n (a union vectorises) */
    return p * two_n.f;
}

/* Dot product of two float32 rows with `lanes` independent sums, then a pairwise tree (vectorises without
   reassociating one scalar sum; an `omp simd reduction` here is lowered by GCC into a long scalar combine).
   Inlined with constant sizes for the common head dims (see head_dot), so the loops unroll into registers. */
static inline __attribute__((always_inline)) float dot(const float *a, const float *b, int n, const int lanes) {
    float lane[16] = {0};
    int i = 0;
    for (; i + lanes <= n; i += lanes)
        for (int j = 0; j < lanes; j++) lane[j] += a[i + j] * b[i + j];
    for (int j = 0; i + j < n; j++) lane[j] += a[i + j] * b[i + j];
    for (int w = lanes / 2; w > 0; w /= 2)
        for (int j = 0; j < w; j++) lane[j] += lane[j + w];
    return lane[0];
}

/* q . k for one head; lane counts measured fastest per head dim on an AVX-512 CPU (benchmarks/decode_kernel.py). */
static inline float head_dot(const float *q, const float *k, int d) {
    if (d == 64) return dot(q, k, 64, 8);
    if (d == 128) return dot(q, k, 128, 16);
    return dot(q, k, d, 16);
}

#define LANES 16  /* output columns accumulated in registers at a time */

/* Partial softmax attention of g query rows over n entries; `visible` (NULL: all) masks entries out.
   Entries are taken BLOCK at a time so a block of K (then V) rows stays in L1 while every query row uses it, and
   the output accumulators are loaded and stored once per block rather than once per entry. */
#define BLOCK 16
static void partial(const float *q, int g, int d, int dv, float scale, const float *k, const float *v, int64_t n,
                    const uint8_t *visible, float *scores, float *m, float *l, float *acc) {
    for (int64_t e0 = 0; e0 < n; e0 += BLOCK) {
        int64_t e1 = e0 + BLOCK < n ? e0 + BLOCK : n;
        for (int r = 0; r < g; r++)
            for (int64_t e = e0; e < e1; e++)
                scores[r * n + e] = (visible && !visible[e]) ? -INFINITY : head_dot(q + r * d, k + e * d, d) * scale;
    }
    for (int r = 0; r < g; r++) {
        float best = -INFINITY, sum = 0.f, *row = scores + r * n;
        for (int64_t e = 0; e < n; e++) best = row[e] > best ? row[e] : best;
        #pragma omp simd reduction(+:sum)
        for (int64_t e = 0; e < n; e++) {
            float x = row[e];
            float p = x == -INFINITY ? 0.f : exp_nonpositive(x - best);  /* masked entries weigh exactly 0 */
            row[e] = p;
            sum += p;
        }
        m[r] = best;
        l[r] = sum;
    }
    memset(acc, 0, sizeof(float) * g * dv);
    for (int64_t e0 = 0; e0 < n; e0 += BLOCK) {
        int64_t e1 = e0 + BLOCK < n ? e0 + BLOCK : n;
        for (int r = 0; r < g; r++) {
            const float *p = scores + r * n;
            float *a = acc + r * dv;
            int i = 0;
            for (; i + LANES <= dv; i += LANES) {
                float lane[LANES];
                memcpy(lane, a + i, sizeof(lane));
                for (int64_t e = e0; e < e1; e++)
                    for (int j = 0; j < LANES; j++) lane[j] += p[e] * v[e * dv + i + j];
                memcpy(a + i, lane, sizeof(lane));
            }
            for (; i < dv; i++)
                for (int64_t e = e0; e < e1; e++) a[i] += p[e] * v[e * dv + i];
        }
    }
}

/* query [segments, g, d] float32; out [segments, g, dv] float32; strides in elements; tail_visible: NULL (every
   tail entry visible) or uint8 [batch or 1, tail] with row stride visible_b (0 when shared by the batch).
   Returns 0, or 1 when memory for the partial results ran out (out is then unspecified). */
int lavakv_ragged_decode(const float *query, int64_t segments, int g, int d, int dv, float scale,
                          const void *keys, const void *values, int64_t k_row, int64_t v_row,
                          const int64_t *seg_start, const int64_t *seg_len,
                          const void *tail_k, const void *tail_v, int64_t heads,
                          int64_t tk_b, int64_t tk_h, int64_t tk_t, int64_t tv_b, int64_t tv_h, int64_t tv_t,
                          int64_t tail, const uint8_t *tail_visible, int64_t visible_b,
                          int bf16, int chunk, int threads, float *out) {
    int64_t tail_chunks = (tail + chunk - 1) / chunk;
    int64_t *first_item = (int64_t *)malloc(sizeof(int64_t) * (segments + 1));
    if (!first_item) return 1;
    int64_t items = 0;
    for (int64_t s = 0; s < segments; s++) {
        first_item[s] = items;
        items += (seg_len[s] + chunk - 1) / chunk + tail_chunks;
    }
    first_item[segments] = items;
    float *m = workspace(&partial_buffer, &partial_capacity, (size_t)items * g * (dv + 2) + 1);  /* never 0 */
    if (!m) {
        free(first_item);
        return 1;
    }
    float *l = m + items * g, *acc = l + items * g;
    int elem = bf16 ? 2 : 4, failed = 0;
    #pragma omp parallel num_threads(threads)
    {
        float *scratch = workspace(&chunk_buffer, &chunk_capacity, (size_t)chunk * (g + d + dv));
        float *scores = scratch, *kbuf = scratch + (int64_t)chunk * g, *vbuf = kbuf + (int64_t)chunk * d;
        if (!scratch) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; it++) {
            if (!scratch) continue;
            int64_t lo = 0, hi = segments;
            while (hi - lo > 1) {
                int64_t mid = (lo + hi) / 2;
                if (first_item[mid] <= it) lo = mid; else hi = mid;
            }
            int64_t s = lo, local = it - first_item[s], prefix_chunks = (seg_len[s] + chunk - 1) / chunk;
            const float *k, *v;
            const uint8_t *visible = NULL;
            int64_t n;
            if (local < prefix_chunks) {
                int64_t first = seg_start[s] + local * chunk;
                n = seg_len[s] - local * chunk < chunk ? seg_len[s] - local * chunk : chunk;
                k = rows_f32(keys, k_row, first, n, d, bf16, kbuf);
                v = rows_f32(values, v_row, first, n, dv, bf16, vbuf);
            } else {
                int64_t first = (local - prefix_chunks) * chunk, b = s / heads, h = s % heads;
                n = tail - first < chunk ? tail - first : chunk;
                const char *kb = (const char *)tail_k + (b * tk_b + h * tk_h) * elem;
                const char *vb = (const char *)tail_v + (b * tv_b + h * tv_h) * elem;
                k = rows_f32(kb, tk_t, first, n, d, bf16, kbuf);
                v = rows_f32(vb, tv_t, first, n, dv, bf16, vbuf);
                if (tail_visible) visible = tail_visible + b * visible_b + first;
            }
            partial(query + s * g * d, g, d, dv, scale, k, v, n, visible, scores, m + it * g, l + it * g,
                    acc + it * g * dv);
        }
        #pragma omp for schedule(static)
        for (int64_t s = 0; s < segments; s++) {
            for (int r = 0; r < g; r++) {
                float best = -INFINITY, sum = 0.f, *o = out + (s * g + r) * dv;
                for (int64_t it = first_item[s]; it < first_item[s + 1]; it++)
                    if (m[it * g + r] > best) best = m[it * g + r];
                memset(o, 0, sizeof(float) * dv);
                for (int64_t it = first_item[s]; it < first_item[s + 1]; it++) {
                    if (l[it * g + r] == 0.f) continue;  /* nothing visible in this chunk */
                    float c = expf(m[it * g + r] - best);
                    const float *a = acc + (it * g + r) * dv;
                    sum += l[it * g + r] * c;
                    for (int i = 0; i < dv; i++) o[i] += a[i] * c;
                }
                for (int i = 0; i < dv; i++) o[i] /= sum;
            }
        }
    }
    free(first_item);
    return failed;
}
