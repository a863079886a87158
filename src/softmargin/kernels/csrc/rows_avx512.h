/* The AVX-512 row functions (built in the avx512 and avx512bf16 variants; see kernel.c for the dispatch). */
#ifndef SOFTMARGIN_ROWS_AVX512_H
#define SOFTMARGIN_ROWS_AVX512_H
#include "rows.h"

/* ---- AVX-512 loops ----
 * Loops written with intrinsics, for float32, float16 and bfloat16 inputs (the plain loss; pos_weight, masks, label
 * smoothing, and asymmetric focusing without a clip): GCC 12 neither vectorises _Float16 conversions (the portable
 * loop runs scalar for float16) nor emits vscalefps, vcvtneps2bf16 or the bit tricks below, it duplicates work in
 * the portable loops' selects, and their second pass over a block (float64 sums) costs as much as the arithmetic.
 * One thread at 4096x2000 (benchmarks/cpu_kernel.py): float32 7.8 ms against 11.2 (the same arithmetic, hi + lo
 * pairs); bfloat16 5.7 against 11.2 and float16 5.5 against 106, about 47 vector instructions per 16 elements, with
 * shorter near-minimax polynomials (exp 1.5e-7, log1p 2e-7; every element loss of every float16/bfloat16 value
 * within 4.2e-7), which float16 (5e-4) and bfloat16 (4e-3) outputs cannot show.
 * Tried and dropped: rcp14 + a Newton step instead of the division (no faster), two vectors interleaved by hand
 * (spills: 9 % slower), exp of degree 4 for the half types (4 % faster, 2.9e-6: not worth it).
 * A block goes to the exact function when any |x| >= 86, inf or NaN (unsigned maximum of |x|'s bits), any target's
 * bits exceed 1.0's (outside [0, 1], NaN, or -0.0: checked there properly), w * l overflows, or a bfloat16 gradient
 * is subnormal (vcvtneps2bf16 would flush it to zero). */
#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__) && defined(__AVX512VL__) &&              \
    !defined(SOFTMARGIN_PORTABLE)
#include <immintrin.h>
#define SOFTMARGIN_AVX512 1
#define BITS_86 0x42ac0000 /* 86.0f */
#define BITS_1 0x3f800000  /* 1.0f */

static inline __m512 avx_load_bf16(const void *p, __mmask16 m) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}
static inline __m512 avx_load_f16(const void *p, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p)); }
static inline __m512 avx_load_u8(const void *p, __mmask16 m) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, p)));
}
/* Stores round to nearest even, as torch does; they return the lanes the caller must redo exactly. */
static inline __mmask16 avx_store_bf16(void *p, __m512 g, __mmask16 m) {
#ifdef __AVX512BF16__
    _mm256_mask_storeu_epi16(p, m, (__m256i)_mm512_cvtneps_pbh(g));
    return _mm512_fpclass_ps_mask(g, 0x20); /* subnormal: the instruction flushes it to zero */
#else
    const __m512i bits = _mm512_castps_si512(g);
    __m512i rounded = _mm512_add_epi32(
        bits, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1))));
    rounded = _mm512_mask_or_epi32(rounded, _mm512_cmp_ps_mask(g, g, _CMP_UNORD_Q), bits, _mm512_set1_epi32(0x400000));
    _mm256_mask_storeu_epi16(p, m, _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16)));
    return 0;
#endif
}
static inline __mmask16 avx_store_f16(void *p, __m512 g, __mmask16 m) {
    _mm256_mask_storeu_epi16(p, m, _mm512_cvtps_ph(g, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    return 0;
}

/* The Cody-Waite reduction of e^-a = 2^k e^r (a >= 0): k = round(-a / ln 2), r = -a - k ln 2 with ln 2 in two
   parts (returned). Large a only makes k large: vscalefps takes 2^k to 0. */
static inline __m512 avx_cody_waite(__m512 a, __m512 *k) {
    *k = _mm512_roundscale_ps(_mm512_mul_ps(a, _mm512_set1_ps(-1.44269504088896341f)),
                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 r = _mm512_fnmsub_ps(*k, _mm512_set1_ps(0.693359375f), a); /* k * 0.693359375 is exact */
    return _mm512_fmadd_ps(*k, _mm512_set1_ps(2.12194440e-4f), r);
}

/* The shared start of the element functions below: the running bit maxima of |x| and y that tell the caller whether
   the elements were in the fast range, and the reduction of e^-|x|. |x| >= 86, inf and NaN give garbage (finite or
   not): such blocks are redone. */
static inline __m512 avx_reduce(__m512 x, __m512 y, __m512i *xmax, __m512i *ymax, __m512 *k) {
    const __m512i ab = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7fffffff));
    *xmax = _mm512_max_epu32(*xmax, ab);
    *ymax = _mm512_max_epu32(*ymax, _mm512_castps_si512(y));
    return avx_cody_waite(_mm512_castsi512_ps(ab), k);
}

/* Horner's rule with the coefficients c[0] (highest degree) .. c[n - 1] (constants: unrolled, broadcast). */
static inline __m512 avx_poly(__m512 r, const float *c, int n) {
    __m512 p = _mm512_set1_ps(c[0]);
    for (int i = 1; i < n; i++) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c[i]));
    return p;
}

/* e^r - 1 for the reduced r, as smf_exp_neg computes it (Cephes' polynomial): float32's exp before the 1 is added. */
static inline __m512 avx_expm1_reduced(__m512 r) {
    static const float P[] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f,
                              1.6666665459e-1f, 5.0000001201e-1f};
    return _mm512_fmadd_ps(avx_poly(r, P, 6), _mm512_mul_ps(r, r), r);
}

/* p = sigmoid(x) and q = sigmoid(-x) = 1 - p, without cancellation, from z = e^-|x| and sig = sigmoid(|x|). */
static inline void avx_sigmoids(__m512 x, __m512 z, __m512 sig, __m512 *p, __m512 *q) {
    const __mmask16 neg = _mm512_movepi32_mask(_mm512_castps_si512(x));
    const __m512 zs = _mm512_mul_ps(z, sig); /* sigmoid(-|x|) */
    *p = _mm512_mask_blend_ps(neg, sig, zs);
    *q = _mm512_mask_blend_ps(neg, zs, sig);
}

/* The shared end: the margin (1 - y) relu(x) + y relu(-x) = relu(x) - y x (returned, rounded once) and the gradient
   (1 - y) sigmoid(x) - y sigmoid(-x) (in *grad) from z = e^-|x| and sig = sigmoid(|x|), without cancellation. */
static inline __m512 avx_margin_grad(__m512 x, __m512 y, __m512 z, __m512 sig, __m512 *grad) {
    __m512 px, pnx;
    avx_sigmoids(x, z, sig, &px, &pnx);
    *grad = _mm512_fnmadd_ps(y, pnx, _mm512_mul_ps(_mm512_sub_ps(_mm512_set1_ps(1.0f), y), px));
    return _mm512_fnmadd_ps(y, x, _mm512_max_ps(x, _mm512_setzero_ps()));
}

/* float16/bfloat16: atanh(z / (2 + z)) = log1p(z) / 2 (returned), z = e^-|x| and sig = sigmoid(|x|) of 16
   elements, with near-minimax fits. */
static inline __m512 avx_half_log1p(__m512 x, __m512 y, __m512i *xmax, __m512i *ymax, __m512 *z, __m512 *sig) {
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 k;
    const __m512 r = avx_reduce(x, y, xmax, ymax, &k);
    /* e^r = 1 + r P(r) (P: a minimax fit) */
    static const float P[] = {8.290314115583897e-3f, 4.1897933930158615e-2f, 1.666763573884964e-1f,
                              4.999915063381195e-1f, 9.999997019767761e-1f};
    *z = _mm512_scalef_ps(_mm512_fmadd_ps(avx_poly(r, P, 5), r, one), k);
    /* one reciprocal for two: q = 1 / ((1 + z)(2 + z)) */
    const __m512 u = _mm512_add_ps(one, *z), v = _mm512_add_ps(_mm512_set1_ps(2.0f), *z);
    const __m512 q = _mm512_div_ps(one, _mm512_mul_ps(u, v));
    *sig = _mm512_mul_ps(q, v);
    const __m512 s = _mm512_mul_ps(*z, _mm512_mul_ps(u, q)); /* z / (2 + z) */
    /* log1p(z) = 2 atanh(s), atanh(s) = s + s^3 Q(s^2) for s in [0, 1/3] (Q: a minimax fit, 2e-7) */
    static const float Q[] = {1.6991719603538513e-1f, 1.981799304485321e-1f, 3.3336740732192993e-1f};
    const __m512 t = _mm512_mul_ps(s, s);
    return _mm512_fmadd_ps(_mm512_mul_ps(s, t), avx_poly(t, Q, 3), s);
}

/* float16/bfloat16: the element loss (returned) and gradient (in *grad) of 16 elements. */
static inline __m512 avx_half_element(__m512 x, __m512 y, __m512 *grad, __m512i *xmax, __m512i *ymax) {
    __m512 z, sig;
    const __m512 half_log1pz = avx_half_log1p(x, y, xmax, ymax, &z, &sig);
    const __m512 margin = avx_margin_grad(x, y, z, sig, grad);
    return _mm512_fmadd_ps(_mm512_set1_ps(2.0f), half_log1pz, margin);
}

/* 16 elements (the lanes of m) of the half-precision loop below: the weighted losses go into the float32 block sums
   `bsum`, the gradient to g; lanes to redo exactly go into `redo`. */
#define HALF_STEP(LOADX, LOADY, STORE, M)                                                                      \
    do {                                                                                                       \
        const __mmask16 m = (M);                                                                               \
        const __m512 wv = _mm512_maskz_loadu_ps(m, wb + c);                                                    \
        __m512 gv;                                                                                             \
        const __m512 lv = avx_half_element(LOADX(xb + c, m), LOADY(yb + c, m), &gv, &xmax, &ymax);            \
        bsum = _mm512_fmadd_ps(wv, lv, bsum);                                                                  \
        redo |= STORE(g + c, _mm512_mul_ps(_mm512_mul_ps(wv, scale), gv), m);                                  \
    } while (0)

/* float32: the same arithmetic as smf_exp_neg and smf_log1p: log1p(e^-|x|) = hi (returned) + *lo, with z = e^-|x|
   and sig = sigmoid(|x|); the exhaustive accuracy check of those (4.5e-8) holds here too. */
static inline __m512 avx_f32_log1p(__m512 x, __m512 y, __m512i *xmax, __m512i *ymax, __m512 *z, __m512 *sig, __m512 *lo) {
    const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
    __m512 k;
    const __m512 r = avx_reduce(x, y, xmax, ymax, &k);
    const __m512 tail = avx_expm1_reduced(r);
    const __m512 ehi = _mm512_add_ps(one, tail), elo = _mm512_add_ps(_mm512_sub_ps(one, ehi), tail);
    *z = _mm512_scalef_ps(ehi, k);
    const __m512 zlo = _mm512_scalef_ps(elo, k);
    const __m512 u = _mm512_add_ps(one, *z), v = _mm512_add_ps(two, *z);
    const __m512 q = _mm512_div_ps(one, _mm512_mul_ps(u, v));
    *sig = _mm512_mul_ps(q, v);
    const __m512 inv = _mm512_mul_ps(u, q), s = _mm512_mul_ps(_mm512_mul_ps(*z, u), q); /* 1 / (2 + z), z / (2 + z) */
    /* log1p(z + zlo) = 2 atanh(s) with s corrected by its exact residual (see smf_log1p) */
    const __m512 dlo = _mm512_add_ps(_mm512_add_ps(_mm512_sub_ps(two, v), *z), zlo);
    const __m512 rem = _mm512_add_ps(_mm512_fnmadd_ps(s, v, *z), _mm512_fnmadd_ps(s, dlo, zlo));
    const __m512 s2 = _mm512_mul_ps(s, s);
    static const float L[] = {1.0f / 13, 1.0f / 11, 1.0f / 9, 1.0f / 7, 1.0f / 5, 1.0f / 3};
    const __m512 lp = avx_poly(s2, L, 6);
    *lo = _mm512_mul_ps(two, _mm512_fmadd_ps(_mm512_mul_ps(lp, s2), s, _mm512_mul_ps(rem, inv)));
    return _mm512_add_ps(s, s);
}

/* float32: the element loss hi (returned) + *lo and the gradient (in *grad) of 16 elements. */
static inline __m512 avx_f32_element(__m512 x, __m512 y, __m512 *grad, __m512 *lo, __m512i *xmax, __m512i *ymax) {
    __m512 z, sig, llo;
    const __m512 hi = avx_f32_log1p(x, y, xmax, ymax, &z, &sig, &llo);
    *lo = _mm512_add_ps(llo, avx_margin_grad(x, y, z, sig, grad));
    return hi;
}

static inline __m512 avx_load_f32(const void *p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
static inline __mmask16 avx_store_f32(void *p, __m512 g, __mmask16 m) { _mm512_mask_storeu_ps(p, m, g); return 0; }
#define F32_STEP(LOADX, LOADY, STORE, M)                                                                       \
    do {                                                                                                       \
        const __mmask16 m = (M);                                                                               \
        const __m512 wv = _mm512_maskz_loadu_ps(m, wb + c);                                                    \
        __m512 gv, lo;                                                                                         \
        const __m512 hi = avx_f32_element(LOADX(xb + c, m), LOADY(yb + c, m), &gv, &lo, &xmax, &ymax);        \
        bsum = _mm512_fmadd_ps(wv, hi, bsum);                                                                  \
        bsum_lo = _mm512_fmadd_ps(wv, lo, bsum_lo);                                                            \
        redo |= STORE(g + c, _mm512_mul_ps(_mm512_mul_ps(wv, scale), gv), m);                                  \
    } while (0)

/* pos_weight, mask and label smoothing (the options' WEIGHTED_ELEMENT and WEIGHTED_GRAD) from tl = log1p(z):
   l = ys pw (-log p) + (1 - ys)(-log(1 - p)) (returned), g = -ys pw q + (1 - ys) p (in *grad), where
   -log p = tl + relu(-x), -log(1 - p) = tl + relu(x), p = sigmoid(x), q = 1 - p. */
static inline void avx_softplus(__m512 x, __m512 tl, __m512 *sp_pos, __m512 *sp_neg) {
    const __m512 relu = _mm512_max_ps(x, _mm512_setzero_ps());
    *sp_pos = _mm512_add_ps(tl, relu);                      /* -log(1 - p) = softplus(x) */
    *sp_neg = _mm512_add_ps(tl, _mm512_sub_ps(relu, x));    /* -log p = softplus(-x) */
}
static inline __m512 avx_weighted_tail(__m512 x, __m512 ys, __m512 pwv, __m512 tl, __m512 z, __m512 sig, __m512 *grad) {
    __m512 sp_pos, sp_neg, p, q;
    avx_softplus(x, tl, &sp_pos, &sp_neg);
    avx_sigmoids(x, z, sig, &p, &q);
    const __m512 yp = _mm512_mul_ps(ys, pwv), ny = _mm512_sub_ps(_mm512_set1_ps(1.0f), ys);
    *grad = _mm512_fnmadd_ps(yp, q, _mm512_mul_ps(ny, p));
    return _mm512_fmadd_ps(yp, sp_neg, _mm512_mul_ps(ny, sp_pos));
}
static inline __m512 avx_half_tl(__m512 x, __m512 y, __m512i *xmax, __m512i *ymax, __m512 *z, __m512 *sig) {
    const __m512 h = avx_half_log1p(x, y, xmax, ymax, z, sig);
    return _mm512_add_ps(h, h);
}
static inline __m512 avx_f32_tl(__m512 x, __m512 y, __m512i *xmax, __m512i *ymax, __m512 *z, __m512 *sig) {
    __m512 lo;
    const __m512 hi = avx_f32_log1p(x, y, xmax, ymax, z, sig, &lo);
    return _mm512_add_ps(hi, lo);
}
/* 16 elements with the options: a missing label (mask 0) weighs 0; targets are smoothed first; TAIL is
   avx_weighted_tail or avx_focused_tail. */
#define WEIGHTED_TAIL(X, YS, PW, TL, Z, SIG, G) avx_weighted_tail(X, YS, PW, TL, Z, SIG, G)
#define FOCUSED_TAIL(X, YS, PW, TL, Z, SIG, G) avx_focused_tail(X, YS, PW, TL, Z, SIG, (float)a->gamma_pos, (float)a->gamma_neg, G)
#define OPTIONS_STEP(TAIL, TL, LOADX, LOADY, STORE, M)                                                         \
    do {                                                                                                       \
        const __mmask16 m = (M);                                                                               \
        const __m128i seen = _mm_maskz_loadu_epi8(m, a->mask + b + c);                                         \
        const __m512 wv = _mm512_maskz_loadu_ps(m & _mm_test_epi8_mask(seen, seen), wb + c);                   \
        const __m512 pwv = _mm512_maskz_loadu_ps(m, (const float *)a->pw + b + c);                             \
        const __m512 xv = LOADX(xb + c, m), yv = LOADY(yb + c, m);                                             \
        const __m512 ys = _mm512_fmadd_ps(yv, _mm512_set1_ps(1.0f - (float)a->eps), _mm512_set1_ps((float)a->eps / 2)); \
        __m512 z, sig, gv;                                                                                     \
        const __m512 tl = TL(xv, yv, &xmax, &ymax, &z, &sig);                                                  \
        bsum = _mm512_fmadd_ps(wv, TAIL(xv, ys, pwv, tl, z, sig, &gv), bsum);                                  \
        redo |= STORE(g + c, _mm512_mul_ps(_mm512_mul_ps(wv, scale), gv), m);                                  \
    } while (0)
#define WEIGHTED_HALF_STEP(LOADX, LOADY, STORE, M) OPTIONS_STEP(WEIGHTED_TAIL, avx_half_tl, LOADX, LOADY, STORE, M)
#define WEIGHTED_F32_STEP(LOADX, LOADY, STORE, M) OPTIONS_STEP(WEIGHTED_TAIL, avx_f32_tl, LOADX, LOADY, STORE, M)

/* e^-t for t >= 0 (any size: large t gives 0 through vscalefps), as smf_exp_neg's high part. */
static inline __m512 avx_exp_neg(__m512 t) {
    __m512 k;
    const __m512 r = avx_cody_waite(t, &k);
    return _mm512_scalef_ps(_mm512_add_ps(_mm512_set1_ps(1.0f), avx_expm1_reduced(r)), k);
}
/* Asymmetric focusing without a clip (the options' FOCUSED_ELEMENT and focused_grad with clip = 0), from
   tl = log1p(z): l = ys pw (1-p)^g+ (-log p) + (1 - ys) p^g- (-log(1 - p)) (returned), its gradient in *grad. In
   the fast range p, q > 0 and every term is finite, so the formula's guards against 0 * inf are not needed here. */
static inline __m512 avx_focused_tail(__m512 x, __m512 ys, __m512 pwv, __m512 tl, __m512 z, __m512 sig, float gp,
                                      float gn, __m512 *grad) {
    const __m512 one = _mm512_set1_ps(1.0f), gpv = _mm512_set1_ps(gp), gnv = _mm512_set1_ps(gn);
    __m512 sp_pos, sp_neg, p, q;
    avx_softplus(x, tl, &sp_pos, &sp_neg);
    avx_sigmoids(x, z, sig, &p, &q);
    const __m512 fpos = gp == 0.0f ? one : avx_exp_neg(_mm512_mul_ps(gpv, sp_pos)); /* (1 - p)^g+ */
    const __m512 fneg = gn == 0.0f ? one : avx_exp_neg(_mm512_mul_ps(gnv, sp_neg)); /* p^g- */
    const __m512 pf = _mm512_mul_ps(pwv, fpos), ny = _mm512_sub_ps(one, ys);
    const __m512 pos_grad = _mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), pf),
                                          _mm512_fmadd_ps(gpv, _mm512_mul_ps(p, sp_neg), q));
    const __m512 neg_grad = _mm512_mul_ps(fneg, _mm512_fmadd_ps(gnv, _mm512_mul_ps(q, sp_pos), p));
    *grad = _mm512_fmadd_ps(ys, pos_grad, _mm512_mul_ps(ny, neg_grad));
    return _mm512_fmadd_ps(ys, _mm512_mul_ps(pf, sp_neg), _mm512_mul_ps(ny, _mm512_mul_ps(fneg, sp_pos)));
}
#define FOCUSED_HALF_STEP(LOADX, LOADY, STORE, M) OPTIONS_STEP(FOCUSED_TAIL, avx_half_tl, LOADX, LOADY, STORE, M)
#define FOCUSED_F32_STEP(LOADX, LOADY, STORE, M) OPTIONS_STEP(FOCUSED_TAIL, avx_f32_tl, LOADX, LOADY, STORE, M)

/* A block's float32 lane sums added into its row's float64 accumulators (lanes 0-7 into *row_lo, 8-15 into
   *row_hi), and a row's total from them: the row function's arithmetic, which the packed short rows (kernel.c) repeat
   through these same functions to stay bitwise the same. */
static inline void avx_add_block(__m512 bsum, __m512 bsum_lo, __m512d *row_lo, __m512d *row_hi) {
    *row_lo = _mm512_add_pd(*row_lo, _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(bsum)),
                                                   _mm512_cvtps_pd(_mm512_castps512_ps256(bsum_lo))));
    *row_hi = _mm512_add_pd(*row_hi, _mm512_add_pd(_mm512_cvtps_pd(_mm512_extractf32x8_ps(bsum, 1)),
                                                   _mm512_cvtps_pd(_mm512_extractf32x8_ps(bsum_lo, 1))));
}
static inline double avx_row_total(double tail, __m512d row_lo, __m512d row_hi) {
    return tail + _mm512_reduce_add_pd(_mm512_add_pd(row_lo, row_hi));
}

/* The AVX-512 row function: STEP (HALF_STEP or F32_STEP) over each block's vectors, then the block's float32 lane
   sums (bsum, and bsum_lo for float32's low parts; 32 terms at most: 2e-6 relative at worst, about 1e-7 typically,
   and exact for a single element; converting every vector to float64 cost a fifth of the time) go into float64, or
   the block goes to EXACT when the checks say so. */
#define DEFINE_AVX512(NAME, XT, LOADX, YT, LOADY, STORE, EXACT, STEP)                                          \
    static double NAME(const rowargs *a) {                                                                     \
        FAST_ROW_START(XT, YT)                                                                                 \
        const __m512 scale = _mm512_set1_ps((float)a->scale);                                                  \
        __m512d row_lo = _mm512_setzero_pd(), row_hi = _mm512_setzero_pd();                                    \
        double tail = 0;                                                                                       \
        for (int64_t b = 0; b < a->C; b += BLOCK, g += gstep) {                                                \
            const int64_t n = a->C - b < BLOCK ? a->C - b : BLOCK;                                             \
            const XT *xb = x + b;                                                                              \
            const YT *yb = TARGET_BLOCK(YT);                                                                   \
            const float *wb = w + b;                                                                           \
            __m512i xmax = _mm512_setzero_si512(), ymax = _mm512_setzero_si512();                              \
            __m512 bsum = _mm512_setzero_ps(), bsum_lo = _mm512_setzero_ps();                                  \
            __mmask16 redo = 0;                                                                                \
            int64_t c = 0;                                                                                     \
            for (; c + 16 <= n; c += 16) STEP(LOADX, LOADY, STORE, (__mmask16)0xffff);                         \
            if (c < n) STEP(LOADX, LOADY, STORE, (__mmask16)((1u << (n - c)) - 1));                            \
            /* inf or NaN: a w * l (or their sum) overflowed */                                                \
            redo |= _mm512_fpclass_ps_mask(_mm512_add_ps(bsum, bsum_lo), 0x99);                                \
            redo |= _mm512_cmpge_epu32_mask(xmax, _mm512_set1_epi32(BITS_86));                                 \
            redo |= _mm512_cmpgt_epu32_mask(ymax, _mm512_set1_epi32(BITS_1));                                  \
            if (redo) {                                                                                        \
                tail += EXACT(a, xb, yb, wb, g, n);                                                            \
            } else {                                                                                           \
                avx_add_block(bsum, bsum_lo, &row_lo, &row_hi);                                                \
            }                                                                                                  \
        }                                                                                                      \
        return avx_row_total(tail, row_lo, row_hi);                                                            \
    }
#endif

#endif
