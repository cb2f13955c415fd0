/* Depthwise convolution on channels-last activations: forward, input gradient and weight gradient,
 * for one kernel shared by the batch (a static conv) or one kernel per sample (CondConv).
 *
 * Why: in training, oneDNN's depthwise weight gradient runs at a few GFLOP/s for 5x5 kernels and
 * small feature maps, its bf16 input gradient of strided convs takes a slow path, and a per-sample
 * depthwise conv has no channels-last form in PyTorch at all (it runs as a grouped conv over
 * batch x channels, in NCHW, with layout copies on both sides).
 *
 * Layouts: activations (B, H, W, C), fp32 or bf16 (dtype 1), accumulated in fp32; weights and weight
 * gradients fp32, tap-major (Bw, k*k, C) with Bw = B (per_sample) or 1. Output pixel (ho, wo) reads
 * input pixel (ho*s + i - pt, wo*s + j - pl) for tap (i, j); taps outside the input read zero, which
 * gives TF 'SAME' (asymmetric) padding as well as PyTorch's symmetric one.
 *
 * Every loop works on vectors of VL channels (GCC vector extensions: AVX-512, AVX2 or SSE, whatever
 * -march allows). Interior pixels, whose taps all fall inside the input, run with their accumulators
 * in registers and no bounds test; only the few border pixels test each tap. Threads: OpenMP, whose
 * runtime (libgomp) is the one torch has already loaded.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#define VL 16
#define PB 4 /* output pixels per register block */
typedef float vf __attribute__((vector_size(VL * 4)));
typedef uint32_t vu __attribute__((vector_size(VL * 4)));
typedef int32_t vi __attribute__((vector_size(VL * 4)));
typedef uint16_t vh __attribute__((vector_size(VL * 2)));

#define INLINE static inline __attribute__((always_inline))

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define MASKED 1 /* the channel tail loads and stores as one masked vector */
INLINE __mmask16 tail(int n) { return (__mmask16)((1u << n) - 1u); }
#else
#define MASKED 0 /* the channel tail loads and stores one channel at a time */
#endif

/* n channels (n <= VL) at p[i], as floats; the rest of the vector is zero */
INLINE vf load(const void *p, int64_t i, int n, int bf) {
  vf v = {0};
  if (bf) {
    const uint16_t *q = (const uint16_t *)p + i;
    vu u = {0};
    if (n == VL) {
      vh h;
      memcpy(&h, q, sizeof h);
      u = __builtin_convertvector(h, vu);
    } else {
#if MASKED
      u = (vu)_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(tail(n), q));
#else
      for (int c = 0; c < n; c++) u[c] = q[c];
#endif
    }
    u <<= 16;
    memcpy(&v, &u, sizeof v);
  } else {
    const float *q = (const float *)p + i;
    if (n == VL) memcpy(&v, q, sizeof v);
    else {
#if MASKED
      v = (vf)_mm512_maskz_loadu_ps(tail(n), q);
#else
      for (int c = 0; c < n; c++) v[c] = q[c];
#endif
    }
  }
  return v;
}

/* store n channels at p[i]; bf16 rounds to nearest even and keeps a NaN a NaN */
INLINE void store(void *p, int64_t i, vf v, int n, int bf) {
  if (bf) {
    vu u;
    memcpy(&u, &v, sizeof u);
    const vu rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const vu nan = (vu)((u & 0x7fffffffu) > 0x7f800000u);
    const vu r = (rounded & ~nan) | (((u >> 16) | 0x40u) & nan);
    const vh h = __builtin_convertvector(r, vh);
    uint16_t *q = (uint16_t *)p + i;
    if (n == VL) memcpy(q, &h, sizeof h);
    else {
#if MASKED
      __m256i hv;
      memcpy(&hv, &h, sizeof hv);
      _mm256_mask_storeu_epi16(q, tail(n), hv);
#else
      for (int c = 0; c < n; c++) q[c] = h[c];
#endif
    }
  } else {
    float *q = (float *)p + i;
    if (n == VL) memcpy(q, &v, sizeof v);
    else {
#if MASKED
      _mm512_mask_storeu_ps(q, tail(n), (__m512)v);
#else
      for (int c = 0; c < n; c++) q[c] = v[c];
#endif
    }
  }
}

typedef struct { int B, H, W, C, Ho, Wo, k, s, pt, pl; } shape_t;

/* the rows [lo, hi) of `total` that thread t of nt takes */
INLINE void split(int64_t total, int t, int nt, int64_t *lo, int64_t *hi) {
  *lo = total * t / nt;
  *hi = total * (t + 1) / nt;
}

/* floor(a / b) for b > 0 */
INLINE int fdiv(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

/* Output columns [lo, hi) whose taps 0..k-1 all read inside [0, W): o*s - pl >= 0, o*s + k-1 - pl < W */
INLINE void interior(int k, int s, int pl, int W, int Wo, int *lo, int *hi) {
  *lo = pl <= 0 ? 0 : (pl + s - 1) / s;
  const int h = fdiv(W - k + pl, s) + 1;
  *hi = h < Wo ? h : Wo;
  if (*hi < *lo) *hi = *lo;
}

/* The taps [jlo, jhi) of output column o that read inside [0, W): 0 <= o*s + j - pl < W */
INLINE void taps_inside(int o, int k, int s, int pl, int W, int *jlo, int *jhi) {
  const int lo = pl - o * s, hi = W + pl - o * s;
  *jlo = lo > 0 ? lo : 0;
  *jhi = hi < k ? hi : k;
}

/* ---- forward: y[b, ho, wo] = bias + sum_{i,j} x[b, ho*s+i-pt, wo*s+j-pl] * w[b|0, i*k+j] ---- */

INLINE void fwd_row(const void *x, const float *wb, const float *bias, void *y, shape_t d, int b, int ho, int c0,
                    int n, int bf, const int K) {
  const vf bv = bias ? load(bias, c0, n, 0) : (vf){0};
  const int64_t yrow = (((int64_t)b * d.Ho + ho) * d.Wo) * d.C + c0;
  int ilo, ihi;
  interior(K, d.s, d.pl, d.W, d.Wo, &ilo, &ihi);
  int o = ilo;
  for (; o + PB <= ihi; o += PB) {
    vf acc[PB];
    for (int p = 0; p < PB; p++) acc[p] = bv;
    for (int i = 0; i < K; i++) {
      const int h = ho * d.s + i - d.pt;
      if (h < 0 || h >= d.H) continue;
      const int64_t xrow = (((int64_t)b * d.H + h) * d.W + o * d.s - d.pl) * d.C + c0;
      for (int j = 0; j < K; j++) {
        const vf wv = load(wb, (int64_t)(i * K + j) * d.C + c0, n, 0);
        for (int p = 0; p < PB; p++) acc[p] += load(x, xrow + (int64_t)(p * d.s + j) * d.C, n, bf) * wv;
      }
    }
    for (int p = 0; p < PB; p++) store(y, yrow + (int64_t)(o + p) * d.C, acc[p], n, bf);
  }
  /* the border columns and the interior's remainder, one pixel at a time */
  for (int q = 0; q < d.Wo; q++) {
    if (q >= ilo && q < o) { q = o - 1; continue; }
    vf acc = bv;
    int jlo, jhi;
    taps_inside(q, K, d.s, d.pl, d.W, &jlo, &jhi);
    for (int i = 0; i < K; i++) {
      const int h = ho * d.s + i - d.pt;
      if (h < 0 || h >= d.H) continue;
      const int64_t xrow = (((int64_t)b * d.H + h) * d.W + q * d.s - d.pl) * d.C + c0;
      for (int j = jlo; j < jhi; j++)
        acc += load(x, xrow + (int64_t)j * d.C, n, bf) * load(wb, (int64_t)(i * K + j) * d.C + c0, n, 0);
    }
    store(y, yrow + (int64_t)q * d.C, acc, n, bf);
  }
}

/* ---- input gradient: gx[b, h, w] = sum over (i, j, ho, wo) with ho*s+i-pt = h, wo*s+j-pl = w ---- */

INLINE void bwd_data_row(const void *g, const float *wb, void *gx, shape_t d, int b, int h, int c0, int n, int bf,
                         const int K) {
  const int64_t xrow = (((int64_t)b * d.H + h) * d.W) * d.C + c0;
  /* input column w = q + s*m reads output column wo = (q + pl - j)/s + m for the taps j of its class */
  for (int q = 0; q < d.s && q < d.W; q++) {
    const int M = (d.W - q + d.s - 1) / d.s;  /* columns q, q+s, ... below W */
    /* m range where every tap of this class reads an output column inside [0, Wo) */
    int mlo = 0, mhi = M;
    for (int j = 0; j < K; j++) {
      const int t = q + d.pl - j;
      if (t % d.s) continue;
      const int base = fdiv(t, d.s);
      if (-base > mlo) mlo = -base;
      if (d.Wo - base < mhi) mhi = d.Wo - base;
    }
    if (mhi < mlo) mhi = mlo;
    int m = mlo;
    for (; m + PB <= mhi; m += PB) {
      vf acc[PB];
      for (int p = 0; p < PB; p++) acc[p] = (vf){0};
      for (int i = 0; i < K; i++) {
        const int num = h + d.pt - i;  /* = ho * s for the output row whose tap i reads row h */
        if (num < 0 || num % d.s || num / d.s >= d.Ho) continue;
        const int64_t grow = (((int64_t)b * d.Ho + num / d.s) * d.Wo) * d.C + c0;
        for (int j = 0; j < K; j++) {
          const int t = q + d.pl - j;
          if (t % d.s) continue;
          const vf wv = load(wb, (int64_t)(i * K + j) * d.C + c0, n, 0);
          const int64_t gcol = grow + (int64_t)(fdiv(t, d.s) + m) * d.C;
          for (int p = 0; p < PB; p++) acc[p] += load(g, gcol + (int64_t)p * d.C, n, bf) * wv;
        }
      }
      for (int p = 0; p < PB; p++) store(gx, xrow + (int64_t)(q + d.s * (m + p)) * d.C, acc[p], n, bf);
    }
    for (int r = 0; r < M; r++) {
      if (r >= mlo && r < m) { r = m - 1; continue; }
      const int w = q + d.s * r;
      vf acc = {0};
      for (int i = 0; i < K; i++) {
        const int num = h + d.pt - i;
        if (num < 0 || num % d.s || num / d.s >= d.Ho) continue;
        const int64_t grow = ((int64_t)b * d.Ho + num / d.s) * d.Wo;
        for (int j = 0; j < K; j++) {
          const int cn = w + d.pl - j;
          if (cn < 0 || cn % d.s || cn / d.s >= d.Wo) continue;
          acc += load(g, (grow + cn / d.s) * d.C + c0, n, bf) * load(wb, (int64_t)(i * K + j) * d.C + c0, n, 0);
        }
      }
      store(gx, xrow + (int64_t)w * d.C, acc, n, bf);
    }
  }
}

/* ---- weight gradient: gw[b|0, i*k+j] += sum over (ho, wo) of g[b, ho, wo] * x[b, ho*s+i-pt, wo*s+j-pl] ---- */

INLINE void bwd_weight_row(const void *g, const void *x, float *gw, shape_t d, int b, int ho, int c0, int n, int bf,
                           const int K) {
  const int64_t grow = (((int64_t)b * d.Ho + ho) * d.Wo) * d.C + c0;
  int ilo, ihi;
  interior(K, d.s, d.pl, d.W, d.Wo, &ilo, &ihi);
  for (int i = 0; i < K; i++) {
    const int h = ho * d.s + i - d.pt;
    if (h < 0 || h >= d.H) continue;
    const int64_t xrow = (((int64_t)b * d.H + h) * d.W) * d.C + c0;
    /* two interleaved sets of K accumulators: 2K independent FMA chains */
    vf a0[K], a1[K];
    for (int j = 0; j < K; j++) a0[j] = a1[j] = (vf){0};
    int o = ilo;
    for (; o + 2 <= ihi; o += 2) {
      const vf g0 = load(g, grow + (int64_t)o * d.C, n, bf), g1 = load(g, grow + (int64_t)(o + 1) * d.C, n, bf);
      const int64_t x0 = xrow + (int64_t)(o * d.s - d.pl) * d.C, x1 = x0 + (int64_t)d.s * d.C;
      for (int j = 0; j < K; j++) {
        a0[j] += g0 * load(x, x0 + (int64_t)j * d.C, n, bf);
        a1[j] += g1 * load(x, x1 + (int64_t)j * d.C, n, bf);
      }
    }
    for (int q = 0; q < d.Wo; q++) {
      if (q >= ilo && q < o) { q = o - 1; continue; }
      const vf gv = load(g, grow + (int64_t)q * d.C, n, bf);
      int jlo, jhi;
      taps_inside(q, K, d.s, d.pl, d.W, &jlo, &jhi);
      for (int j = jlo; j < jhi; j++) a0[j] += gv * load(x, xrow + (int64_t)(q * d.s - d.pl + j) * d.C, n, bf);
    }
    for (int j = 0; j < K; j++) {
      const vf a = a0[j] + a1[j];
      float *dst = gw + (int64_t)(i * K + j) * d.C + c0;
      for (int c = 0; c < n; c++) dst[c] += a[c];
    }
  }
}

/* Calls ROW(..., K) with the kernel size as a compile-time constant for the sizes EfficientNet uses, so
 * the tap loops unroll and their accumulators stay in registers. */
#define BY_K(ROW, ...)                                       \
  switch (d.k) {                                             \
    case 3: ROW(__VA_ARGS__, 3); break;                      \
    case 5: ROW(__VA_ARGS__, 5); break;                      \
    case 7: ROW(__VA_ARGS__, 7); break;                      \
    default: ROW(__VA_ARGS__, d.k); break;                   \
  }
/* ... and with the channel tail's width separate from the full vectors' */
#define BY_N(ROW, n, ...)                                    \
  if (n == VL) { BY_K(ROW, __VA_ARGS__, VL, bf) }            \
  else { BY_K(ROW, __VA_ARGS__, n, bf) }

INLINE void fwd(const void *x, const float *w, const float *bias, void *y, int per_sample, shape_t d, int bf,
                int nthreads) {
#pragma omp parallel num_threads(nthreads)
  {
    int64_t lo, hi;
    split((int64_t)d.B * d.Ho, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
    for (int64_t row = lo; row < hi; row++) {
      const int b = (int)(row / d.Ho), ho = (int)(row % d.Ho);
      const float *wb = w + (per_sample ? (int64_t)b * d.k * d.k * d.C : 0);
      for (int c0 = 0; c0 < d.C; c0 += VL) {
        const int n = d.C - c0 < VL ? d.C - c0 : VL;
        BY_N(fwd_row, n, x, wb, bias, y, d, b, ho, c0)
      }
    }
  }
}

INLINE void bwd_data(const void *g, const float *w, void *gx, int per_sample, shape_t d, int bf, int nthreads) {
#pragma omp parallel num_threads(nthreads)
  {
    int64_t lo, hi;
    split((int64_t)d.B * d.H, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
    for (int64_t row = lo; row < hi; row++) {
      const int b = (int)(row / d.H), h = (int)(row % d.H);
      const float *wb = w + (per_sample ? (int64_t)b * d.k * d.k * d.C : 0);
      for (int c0 = 0; c0 < d.C; c0 += VL) {
        const int n = d.C - c0 < VL ? d.C - c0 : VL;
        BY_N(bwd_data_row, n, g, wb, gx, d, b, h, c0)
      }
    }
  }
}

INLINE void bwd_weight_rows(const void *g, const void *x, float *gw, shape_t d, int bf, int64_t lo, int64_t hi) {
  for (int64_t row = lo; row < hi; row++) {
    const int b = (int)(row / d.Ho), ho = (int)(row % d.Ho);
    for (int c0 = 0; c0 < d.C; c0 += VL) {
      const int n = d.C - c0 < VL ? d.C - c0 : VL;
      BY_N(bwd_weight_row, n, g, x, gw, d, b, ho, c0)
    }
  }
}

INLINE int bwd_weight(const void *g, const void *x, float *gw, int per_sample, shape_t d, int bf, int nthreads) {
  const int64_t taps = (int64_t)d.k * d.k * d.C;
  if (per_sample) {
    /* a sample's rows never split between threads, so each gw[b] has one writer */
    memset(gw, 0, sizeof(float) * taps * d.B);
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int b = 0; b < d.B; b++) bwd_weight_rows(g, x, gw + b * taps, d, bf, (int64_t)b * d.Ho, (int64_t)(b + 1) * d.Ho);
    return 0;
  }
  /* a shared kernel: each thread sums its rows into a buffer of its own, then the buffers are added in
   * thread order (the same order on every call with the same thread count) */
  float *part = calloc((size_t)nthreads * taps, sizeof(float));
  if (!part) return -2;
#pragma omp parallel num_threads(nthreads)
  {
    int64_t lo, hi;
    const int t = omp_get_thread_num();
    split((int64_t)d.B * d.Ho, t, omp_get_num_threads(), &lo, &hi);
    bwd_weight_rows(g, x, part + t * taps, d, bf, lo, hi);
  }
  for (int64_t e = 0; e < taps; e++) {
    float v = 0;
    for (int t = 0; t < nthreads; t++) v += part[t * taps + e];
    gw[e] = v;
  }
  free(part);
  return 0;
}

/* The entry points: dtype 0 = fp32, 1 = bf16, each inlined once per dtype so that the inner loops
 * carry no dtype test. They return 0, or -2 when a work buffer could not be allocated. */
#define SHAPE shape_t d = {B, H, W, C, Ho, Wo, k, s, pt, pl}
#define ARGS int B, int H, int W, int C, int Ho, int Wo, int k, int s, int pt, int pl

int effnet_dw_fwd(int dtype, const void *x, const float *w, const float *bias, void *y, int per_sample, ARGS,
                  int nthreads) {
  SHAPE;
  if (dtype) fwd(x, w, bias, y, per_sample, d, 1, nthreads);
  else fwd(x, w, bias, y, per_sample, d, 0, nthreads);
  return 0;
}

int effnet_dw_bwd_data(int dtype, const void *g, const float *w, void *gx, int per_sample, ARGS, int nthreads) {
  SHAPE;
  if (dtype) bwd_data(g, w, gx, per_sample, d, 1, nthreads);
  else bwd_data(g, w, gx, per_sample, d, 0, nthreads);
  return 0;
}

int effnet_dw_bwd_weight(int dtype, const void *g, const void *x, float *gw, int per_sample, ARGS, int nthreads) {
  SHAPE;
  return dtype ? bwd_weight(g, x, gw, per_sample, d, 1, nthreads) : bwd_weight(g, x, gw, per_sample, d, 0, nthreads);
}
