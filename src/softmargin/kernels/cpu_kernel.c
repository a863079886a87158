/* The fused CPU kernel: per-row loss sums and the gradient of the multi-label soft-margin loss in one pass.
 *
 * An adapter of softmargin/_formula.py (read the derivation there), tested against it:
 *   l(x, y) = log1p(exp(-|x|)) + (1 - y) relu(x) + y relu(-x)      three non-negative terms: no overflow, no cancellation
 *   g(x, y) = (1 - y) sigmoid(x) - y sigmoid(-x)                    exact for hard labels, finite for infinite x
 * with 0 * inf taken as 0 (a right prediction at infinity) and a zero weight removing its element.
 *
 * It is compiled on the user's machine at first use (softmargin/ops/cpu.py) with -O3 -march=native and without
 * -ffast-math, which would drop the inf/NaN semantics the formula needs. The vector math comes from glibc's libmvec
 * through the `declare simd` declarations below (math.h only makes them under -ffast-math); SOFTMARGIN_SCALAR_MATH
 * builds the same code with scalar libm where libmvec is missing.
 *
 * A second family of row functions adds the imbalance options (pos_weight, mask, label smoothing, asymmetric
 * focusing; see element_loss_and_grad_options in _formula.py), so that they keep the fused pass too.
 *
 * float32, float16 and bfloat16 are computed in float32: the plain loss with an exp and a log1p of our own (below;
 * with AVX-512 in loops written with intrinsics, float16/bfloat16 inputs with shorter polynomials, good to 4.2e-7;
 * without it in portable loops, float16/bfloat16 with a shorter log1p, good to 2e-6: far below their own rounding),
 * the options with glibc's vector expf/log1pf (about 1 ulp); float64 in float64 with glibc's exp/log1p. Element
 * losses are summed in float64 (the AVX-512 loops: per lane in float32 over a block of 32 vectors first), so a row's
 * loss is accurate to about 1e-7 relative (float32).
 * Every row is summed by one thread in a fixed order: the results are bitwise the same for any thread count.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef SOFTMARGIN_SCALAR_MATH
#pragma omp declare simd notinbranch
extern float expf(float);
#pragma omp declare simd notinbranch
extern float log1pf(float);
#pragma omp declare simd notinbranch
extern double exp(double);
#pragma omp declare simd notinbranch
extern double log1p(double);
#endif

#define BLOCK 512
#define LANES 16

/* ---- float32 exp and log1p of our own, for the plain loss ----
 * glibc's vector expf/log1pf cost two thirds of the plain kernel's time. These two are inline, branch-free and
 * vectorise with the loop; they keep one extra float of precision where it matters (each returns a hi + lo pair),
 * so the element loss log1p(e^-|x|), summed in float64 as hi + lo, is within 4.5e-8 relative for every float32
 * |x| < 86 (checked exhaustively against float64 libm: benchmarks/exp_log1p_exhaustive.py; glibc's path rounds it
 * to float32: ~1.5e-7). Blocks holding a |x| >= 86, whose e^-|x| nears float32's subnormal range, are summed again
 * with glibc's functions. */
/* e^-a = hi + lo for 0 <= a < 87 (larger a and NaN give finite garbage: the caller redoes such blocks) in float32:
   Cody-Waite reduction, Cephes' minimax polynomial; lo keeps the rounding of the last addition. */
static inline float smf_exp_neg(float a, float *lo) {
    float t = a <= 87.0f ? -a : -87.0f; /* NaN -> -87 too */
    float k = __builtin_rintf(t * 1.44269504088896341f);
    float r = __builtin_fmaf(k, -0.693359375f, t); /* k * 0.693359375 is exact */
    r = __builtin_fmaf(k, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = __builtin_fmaf(p, r, 1.3981999507e-3f);
    p = __builtin_fmaf(p, r, 8.3334519073e-3f);
    p = __builtin_fmaf(p, r, 4.1665795894e-2f);
    p = __builtin_fmaf(p, r, 1.6666665459e-1f);
    p = __builtin_fmaf(p, r, 5.0000001201e-1f);
    float tail = __builtin_fmaf(p, r * r, r);
    float hi = 1.0f + tail, plo = (1.0f - hi) + tail; /* exact: |tail| < 1 */
    int32_t bits = ((int32_t)k + 127) << 23; /* k in [-126, 0]: 2^k is a normal float */
    float scale;
    memcpy(&scale, &bits, 4);
    *lo = plo * scale;
    return hi * scale;
}

/* log1p(z) = hi + lo for z = zhi + zlo in [0, 1] as 2 atanh(s), s = z / (2 + z) in [0, 1/3]. ``inv`` is
   1 / (2 + z) to a few ulp: s is corrected by its exact residual, so only the correction uses it. */
static inline float smf_log1p(float zhi, float zlo, float s, float inv, float *lo) {
    float d = 2.0f + zhi, dlo = ((2.0f - d) + zhi) + zlo; /* d + dlo = 2 + z, exactly */
    float rem = __builtin_fmaf(-s, d, zhi) + __builtin_fmaf(-s, dlo, zlo); /* z - s (2 + z) */
    float s2 = s * s;
    float p = 1.0f / 13;
    p = __builtin_fmaf(p, s2, 1.0f / 11);
    p = __builtin_fmaf(p, s2, 1.0f / 9);
    p = __builtin_fmaf(p, s2, 1.0f / 7);
    p = __builtin_fmaf(p, s2, 1.0f / 5);
    p = __builtin_fmaf(p, s2, 1.0f / 3);
    *lo = 2.0f * __builtin_fmaf(p * s2, s, rem * inv);
    return 2.0f * s;
}

/* log1p(z) for z in [0, 1] from s = z / (2 + z) to about 2e-6 relative: enough for float16/bfloat16 inputs, whose
   results are rounded to 5e-4 (float16) or 4e-3 (bfloat16) anyway. */
static inline float smh_log1p(float s) {
    float s2 = s * s;
    float p = 1.0f / 9;
    p = __builtin_fmaf(p, s2, 1.0f / 7);
    p = __builtin_fmaf(p, s2, 1.0f / 5);
    p = __builtin_fmaf(p, s2, 1.0f / 3);
    return 2.0f * __builtin_fmaf(p * s2, s, s);
}

enum dtype { F32 = 0, F64 = 1, F16 = 2, BF16 = 3, U8 = 4 };

static inline float bf16_to_f32(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

static inline uint16_t f32_to_bf16(float v) { /* round to nearest even; NaN stays NaN */
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40u);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

/* float16 <-> float32 with integer and float operations only, so that loops vectorise (GCC 12 leaves a loop with
   _Float16 conversions scalar: 10x slower). Both exact, rounding to nearest even as torch does. */
static inline float f16_to_f32(_Float16 h) {
    uint16_t v;
    memcpy(&v, &h, sizeof v);
    const uint32_t sign = (uint32_t)(v & 0x8000u) << 16, em = v & 0x7fffu;
    float scaled, out;
    uint32_t bits = em << 13;
    memcpy(&scaled, &bits, sizeof scaled);
    scaled *= 0x1p112f; /* rebias; a subnormal half becomes a float32 subnormal times 2^112: exact */
    memcpy(&bits, &scaled, sizeof bits);
    bits = em >= 0x7c00u ? (em << 13) | 0x7f800000u : bits; /* inf, NaN */
    bits |= sign;
    memcpy(&out, &bits, sizeof out);
    return out;
}

static inline _Float16 f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    /* normal results: rebias (-112 << 23) and round at bit 13 to nearest even; a carry may reach inf, rightly */
    const uint32_t normal = (ax + 0xc8000fffu + ((ax >> 13) & 1u)) >> 13;
    /* subnormal results (|f| < 2^-14): adding 0.5 puts the half's last place (2^-24) at float32's, and rounds */
    float shifted, absf;
    memcpy(&absf, &ax, sizeof absf);
    shifted = absf + 0.5f;
    uint32_t sub;
    memcpy(&sub, &shifted, sizeof sub);
    uint32_t r = ax < 0x38800000u ? sub - 0x3f000000u : normal;
    r = ax >= 0x477ff000u ? 0x7c00u : r; /* 65520 and above: inf */
    r = ax > 0x7f800000u ? 0x7e00u : r;  /* NaN */
    const uint16_t bits = (uint16_t)(r | sign);
    _Float16 out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

/* Everything a row function needs; pointers are already offset to the row. */
typedef struct {
    const void *x, *y, *w, *pw;
    const uint8_t *mask; /* NULL: every label observed */
    int64_t C;
    double scale; /* this row's gradient scale */
    void *g;      /* NULL: no gradient */
    void *scratch; /* BLOCK elements the option kernels may write when g is NULL */
    double eps, gamma_pos, gamma_neg, clip;
    /* sparse targets (y == NULL): this row's positive label indices, ascending, and their values (NULL: all 1) */
    const int64_t *sp_idx; /* may be NULL when there are no positives at all (an empty tensor's data pointer) */
    const void *sp_val;
    int64_t sp_n;
    int sparse;
    int *bad; /* set when a target lies outside [0, 1] (or is NaN): all but float64's plain loss look */
} rowargs;

/* One block of a sparse row's targets, made dense in a BLOCK-sized buffer: the N x C target never exists. */
#define SPARSE_BLOCK(YT, ONE)                                                                                  \
    static inline const YT *sparse_block_##YT(const rowargs *a, int64_t b, int64_t n, int64_t *k, YT *buf) {   \
        memset(buf, 0, (size_t)n * sizeof(YT));                                                                \
        const YT *values = a->sp_val;                                                                          \
        while (*k < a->sp_n && a->sp_idx[*k] < b + n) {                                                        \
            buf[a->sp_idx[*k] - b] = values ? values[*k] : (ONE);                                              \
            (*k)++;                                                                                            \
        }                                                                                                      \
        return buf;                                                                                            \
    }
typedef _Float16 half_t;
SPARSE_BLOCK(uint8_t, 1)
SPARSE_BLOCK(float, 1.0f)
SPARSE_BLOCK(double, 1.0)
SPARSE_BLOCK(half_t, (half_t)1.0f)
SPARSE_BLOCK(uint16_t, 0x3F80) /* bfloat16 1.0 */
#define SPARSE_FN_uint8_t sparse_block_uint8_t
#define SPARSE_FN_float sparse_block_float
#define SPARSE_FN_double sparse_block_double
#define SPARSE_FN__Float16 sparse_block_half_t
#define SPARSE_FN_uint16_t sparse_block_uint16_t
#define TARGET_BLOCK(YT) (a->sparse ? SPARSE_FN_##YT(a, b, n, &sp_k, ybuf) : y + b)

typedef double (*row_fn)(const rowargs *);

/* Sum the weighted element losses of one block into LANES independent float64 accumulators (one accumulator
   would make the loop wait on each add's latency); weighted in float64: w * l may exceed float32 where the row
   mean does not. */
#define ACCUMULATE(T)                                                                                          \
    do {                                                                                                       \
        int64_t c = 0;                                                                                         \
        for (; c + LANES <= n; c += LANES) {                                                                   \
            _Pragma("omp simd") for (int k = 0; k < LANES; k++) lanes[k] += (double)wb[c + k] * (double)buf[c + k]; \
        }                                                                                                      \
        for (; c < n; c++) tail += (double)wb[c] * (double)buf[c];                                             \
    } while (0)

#define FINISH                                                                                                 \
    double acc = tail;                                                                                         \
    for (int k = 0; k < LANES; k++) acc += lanes[k];                                                           \
    return acc;

/* 1 where a target lies outside [0, 1] or is NaN, else 0: the kernels' target check, max-reduced over a block. */
#define TARGET_OUT(T, Y) ((Y) >= (T)0 && (Y) <= (T)1 ? (T)0 : (T)1)

/* The plain loss's margin (1 - y) relu(x) + y relu(-x), with 0 * inf (a right prediction at infinity) taken as its
   limit 0, and its gradient (1 - y) sigmoid(x) - y sigmoid(-x) from r = sigmoid(|x|) and zr = sigmoid(-|x|). */
#define PLAIN_MARGIN(T, X, Y)                                                                                  \
    (((Y) == (T)1 ? (T)0 : ((T)1 - (Y)) * ((X) > 0 ? (X) : (T)0)) +                                               \
     ((Y) == (T)0 ? (T)0 : (Y) * ((X) < 0 ? -(X) : (T)0)))
#define PLAIN_GRAD(T, X, Y, R, ZR) (((T)1 - (Y)) * ((X) >= 0 ? (R) : (ZR)) - (Y) * ((X) >= 0 ? (ZR) : (R)))

/* The plain loss: l = log1p(z) + (1 - y) relu(x) + y relu(-x), g = (1 - y) sigmoid(x) - y sigmoid(-x); used for
   float64 (the float32 compute types take DEFINE_PLAIN_FAST below). */
#define DEFINE_PLAIN(NAME, T, EXP, LOG1P, XT, LOADX, YT, LOADY, STOREG)                                       \
    static double NAME(const rowargs *a) {                                                                     \
        const XT *restrict x = a->x;                                                                           \
        const YT *restrict y = a->y;                                                                           \
        const T *restrict w = a->w;                                                                            \
        XT *restrict g = a->g;                                                                                 \
        const T scale = (T)a->scale;                                                                           \
        double lanes[LANES] = {0}, tail = 0;                                                                   \
        YT ybuf[BLOCK] __attribute__((aligned(64)));                                                           \
        int64_t sp_k = 0;                                                                                      \
        T buf[BLOCK] __attribute__((aligned(64)));                                                             \
        for (int64_t b = 0; b < a->C; b += BLOCK) {                                                            \
            int64_t n = a->C - b < BLOCK ? a->C - b : BLOCK;                                                   \
            const XT *xb = x + b;                                                                              \
            const YT *yb = TARGET_BLOCK(YT);                                                                   \
            const T *wb = w + b;                                                                               \
            if (g) {                                                                                           \
                XT *gb = g + b;                                                                                \
                _Pragma("omp simd") for (int64_t c = 0; c < n; c++) {                                          \
                    T xv = LOADX(xb[c]), yv = LOADY(yb[c]), wv = wb[c];                                        \
                    T z = EXP(-(xv < 0 ? -xv : xv)); /* in [0, 1]: cannot overflow */                          \
                    T margin = PLAIN_MARGIN(T, xv, yv);                                                        \
                    buf[c] = wv == (T)0 ? (T)0 : LOG1P(z) + margin; /* a zero weight removes the element */   \
                    T r = (T)1 / ((T)1 + z), zr = z * r; /* sigmoid(|x|), sigmoid(-|x|) */                    \
                    gb[c] = STOREG(wv * scale * PLAIN_GRAD(T, xv, yv, r, zr));                                 \
                }                                                                                              \
            } else {                                                                                           \
                _Pragma("omp simd") for (int64_t c = 0; c < n; c++) {                                          \
                    T xv = LOADX(xb[c]), yv = LOADY(yb[c]);                                                    \
                    T z = EXP(-(xv < 0 ? -xv : xv));                                                           \
                    T margin = PLAIN_MARGIN(T, xv, yv);                                                        \
                    buf[c] = wb[c] == (T)0 ? (T)0 : LOG1P(z) + margin;                                         \
                }                                                                                              \
            }                                                                                                  \
            ACCUMULATE(T);                                                                                     \
        }                                                                                                      \
        FINISH                                                                                                 \
    }

/* With the options (p = sigmoid(x), q = 1 - p, p_m = max(p - clip, 0)):
 *   l = y pw (1-p)^g+ (-log p) + (1 - y) p_m^g- (-log(1 - p_m)),  y smoothed first; derivatives in _formula.py.
 * (1-p)^g+ = exp(-g+ softplus(x)) and, without clip, p^g- = exp(-g- softplus(-x)): no overflow, no log(0). */
/* The common head of the option kernels: smoothed target, -log p, -log(1 - p), p and q = 1 - p. */
#define OPTIONS_HEAD(T, EXP, LOG1P, LOADX, LOADY)                                                                \
    T xv = LOADX(xb[c]), yv = LOADY(yb[c]) * ((T)1 - eps) + eps / 2, pwv = pwb[c];                              \
    T z = EXP(-(xv < 0 ? -xv : xv));                                                                           \
    T tl = LOG1P(z);                                                                                           \
    T sp_pos = tl + (xv > 0 ? xv : (T)0), sp_neg = tl + (xv < 0 ? -xv : (T)0); /* -log(1-p), -log p */        \
    T r = (T)1 / ((T)1 + z), zr = z * r;                                                                       \
    T p = xv >= 0 ? r : zr, q = xv >= 0 ? zr : r;

/* pos_weight, mask and label smoothing, without focusing: l = y pw (-log p) + (1 - y)(-log(1 - p)),
 * g = -y pw q + (1 - y) p; the same transcendental functions as the plain loss. */
#define WEIGHTED_ELEMENT(T, EXP, LOG1P, LOADX, LOADY)                                                          \
    OPTIONS_HEAD(T, EXP, LOG1P, LOADX, LOADY)                                                                  \
    T l = (yv == (T)0 ? (T)0 : yv * pwv * sp_neg) + (yv == (T)1 ? (T)0 : ((T)1 - yv) * sp_pos);                \
    buf[c] = wb[c] == (T)0 ? (T)0 : l;
#define WEIGHTED_GRAD(T) (-yv * pwv * q + ((T)1 - yv) * p)  /* p, q unused without a gradient: no harm */

/* Asymmetric focusing as well (p_m = max(p - clip, 0)):
 *   l = y pw (1-p)^g+ (-log p) + (1 - y) p_m^g- (-log(1 - p_m)),  derivatives in _formula.py.
 * (1-p)^g+ = exp(-g+ softplus(x)), p^g- = exp(-g- softplus(-x)): no overflow, no log(0). Every call is
 * unconditional (a call under a condition stops vectorisation): the options select arguments instead. */
#define FOCUSED_ELEMENT(T, EXP, LOG1P, LOADX, LOADY)                                                           \
    OPTIONS_HEAD(T, EXP, LOG1P, LOADX, LOADY)                                                                  \
    T fpos = EXP(-gp * sp_pos); /* (1 - p)^g+ */                                                               \
    fpos = gp == (T)0 ? (T)1 : fpos; /* 0 * inf would be NaN */                                                \
    T pos_loss = pwv * fpos * sp_neg;                                                                          \
    T pm = p > clip ? p - clip : (T)0;                                                                         \
    T nterm = has_clip ? -LOG1P(-pm) : sp_pos; /* -log(1 - p_m) */                                             \
    T pm_safe = pm > 0 ? pm : (T)1; /* log p_m = -log1p((1 - p_m) / p_m): accurate, and vectorises */          \
    T fneg = has_clip ? (pm > 0 ? EXP(-gn * LOG1P(((T)1 - pm_safe) / pm_safe)) : (T)0) : EXP(-gn * sp_neg);     \
    fneg = gn == (T)0 ? (T)1 : fneg; /* p_m^g- */                                                              \
    T neg_loss = fneg == (T)0 ? (T)0 : fneg * nterm;                                                           \
    T l = (yv == (T)0 ? (T)0 : yv * pos_loss) + (yv == (T)1 ? (T)0 : ((T)1 - yv) * neg_loss);                  \
    buf[c] = wb[c] == (T)0 ? (T)0 : l;
#define FOCUSED_GRAD(T) FOCUSED_GRAD_##T(yv, p, q, pm, sp_neg, nterm, fpos, fneg, pwv, gp, gn, has_clip)

#define DEFINE_FOCUSED_GRAD(T)                                                                                 \
    _Pragma("omp declare simd notinbranch uniform(gp, gn, has_clip)")                                          \
    static inline T focused_grad_##T(T yv, T p, T q, T pm, T sp_neg, T nterm, T fpos, T fneg, T pwv, T gp, T gn,  \
                                     int has_clip) {                                                           \
        T pos_grad = -pwv * fpos * (gp * (p == (T)0 ? (T)0 : p * sp_neg) + q);                                  \
        T ratio = nterm / (pm > 0 ? pm : (T)1); /* -log(1 - p_m) / p_m */                                      \
        T clipped = pm > 0 ? p * q * fneg * (gn * ratio + (T)1 / ((T)1 - pm)) : (T)0;                          \
        T unclipped = fneg * (gn * (q == (T)0 ? (T)0 : q * nterm) + p);                                        \
        return yv * pos_grad + ((T)1 - yv) * (has_clip ? clipped : unclipped);                                 \
    }
DEFINE_FOCUSED_GRAD(float)
DEFINE_FOCUSED_GRAD(double)
#define FOCUSED_GRAD_float focused_grad_float
#define FOCUSED_GRAD_double focused_grad_double

/* The options' work on one block (xb, yb, pwb, mask + b, n elements; gradient to gb), shared by the row functions
 * and the block functions below. pw and mask are never NULL here (the caller passes rows of ones). Without a
 * gradient the loop still computes it, into a scratch block: GCC 12 vectorises the focused loop with the gradient
 * store and not without it (measured: 7.6 against 43 ns per element). */
#define OPTIONS_BLOCK(ELEMENT, GRAD, T, EXP, LOG1P, LOADX, LOADY, STOREG)                                      \
    T ybad = (T)0; /* the target's range, checked here as in the plain loss's fast loops */                    \
    _Pragma("omp simd reduction(max:ybad)") for (int64_t c = 0; c < n; c++) {                                  \
        T yout = TARGET_OUT(T, LOADY(yb[c]));                                                                  \
        ybad = yout > ybad ? yout : ybad;                                                                      \
    }                                                                                                          \
    if (ybad != (T)0) *a->bad = 1;                                                                             \
    _Pragma("omp simd") for (int64_t c = 0; c < n; c++) /* a missing label weighs 0 */                        \
        wbuf[c] = mask[b + c] ? w[b + c] : (T)0;                                                               \
    const T *wb = wbuf;                                                                                        \
    /* one loop, with or without a gradient (then into scratch): this form vectorises, see above */            \
    _Pragma("omp simd") for (int64_t c = 0; c < n; c++) {                                                      \
        ELEMENT(T, EXP, LOG1P, LOADX, LOADY)                                                                   \
        gb[c] = STOREG(wb[c] * scale * GRAD(T));                                                               \
    }                                                                                                          \
    ACCUMULATE(T);
#define OPTIONS_SCALARS(T)                                                                                     \
    const T *restrict w = a->w;                                                                                \
    const T *restrict pw = a->pw;                                                                              \
    const uint8_t *restrict mask = a->mask;                                                                    \
    const T scale = (T)a->scale, eps = (T)a->eps, gp = (T)a->gamma_pos, gn = (T)a->gamma_neg;                  \
    const T clip = (T)a->clip;                                                                                 \
    const int has_clip = a->clip != 0;                                                                         \
    (void)gp; (void)gn; (void)clip; (void)has_clip;                                                            \
    double lanes[LANES] = {0}, tail = 0;                                                                       \
    T buf[BLOCK] __attribute__((aligned(64)));                                                                 \
    T wbuf[BLOCK] __attribute__((aligned(64)));

#define DEFINE_OPTIONS(NAME, ELEMENT, GRAD, T, EXP, LOG1P, XT, LOADX, YT, LOADY, STOREG)                       \
    __attribute__((unused)) static double NAME(const rowargs *a) { /* unused where the AVX-512 loop is */     \
        const XT *restrict x = a->x;                                                                           \
        const YT *restrict y = a->y;                                                                           \
        XT *restrict g = a->g;                                                                                 \
        OPTIONS_SCALARS(T)                                                                                     \
        YT ybuf[BLOCK] __attribute__((aligned(64)));                                                           \
        int64_t sp_k = 0;                                                                                      \
        for (int64_t b = 0; b < a->C; b += BLOCK) {                                                            \
            int64_t n = a->C - b < BLOCK ? a->C - b : BLOCK;                                                   \
            const XT *xb = x + b;                                                                              \
            const YT *yb = TARGET_BLOCK(YT);                                                                   \
            const T *pwb = pw + b;                                                                             \
            XT *gb = g ? g + b : (XT *)a->scratch;                                                             \
            OPTIONS_BLOCK(ELEMENT, GRAD, T, EXP, LOG1P, LOADX, LOADY, STOREG)                                  \
        }                                                                                                      \
        FINISH                                                                                                 \
    }                                                                                                          \
    /* one block, for the AVX-512 loops' blocks to redo (the signature of the exact block functions) */       \
    __attribute__((unused)) static double NAME##_block(const rowargs *a, const XT *restrict xb,                \
                                                       const YT *restrict yb, const T *wrow, XT *restrict gb,  \
                                                       int64_t n) {                                            \
        (void)wrow;                                                                                            \
        const int64_t b = xb - (const XT *)a->x;                                                               \
        OPTIONS_SCALARS(T)                                                                                     \
        const T *pwb = pw + b;                                                                                 \
        OPTIONS_BLOCK(ELEMENT, GRAD, T, EXP, LOG1P, LOADX, LOADY, STOREG)                                      \
        FINISH                                                                                                 \
    }


/* One block again with glibc's expf/log1pf, for the blocks the fast loops leave (|x| >= 86, inf or NaN, and in the
   AVX-512 loop below a target to check or a gradient it cannot round exactly): writes the block's gradient, checks
   its targets (setting *bad), returns its weighted loss sum. */
#define DEFINE_EXACT_BLOCK(NAME, XT, LOADX, YT, LOADY, STOREG)                                                 \
    static double NAME(const rowargs *a, const XT *xb, const YT *yb, const float *wb, XT *g, int64_t n) {      \
        const float scale = (float)a->scale;                                                                   \
        double lanes[LANES] = {0}, tail = 0;                                                                   \
        float buf[BLOCK] __attribute__((aligned(64)));                                                         \
        float ybad = 0.0f;                                                                                     \
        _Pragma("omp simd reduction(max:ybad)") for (int64_t c = 0; c < n; c++) {                              \
            float xv = LOADX(xb[c]), yv = LOADY(yb[c]), wv = wb[c];                                            \
            float yout = TARGET_OUT(float, yv);                                                                \
            ybad = yout > ybad ? yout : ybad;                                                                  \
            float z = expf(-(xv < 0 ? -xv : xv));                                                              \
            float margin = PLAIN_MARGIN(float, xv, yv);                                                        \
            buf[c] = wv == 0.0f ? 0.0f : log1pf(z) + margin;                                                   \
            float r = 1.0f / (1.0f + z), zr = z * r;                                                           \
            g[c] = STOREG(wv * scale * PLAIN_GRAD(float, xv, yv, r, zr));                                      \
        }                                                                                                      \
        if (ybad != 0.0f) *a->bad = 1;                                                                         \
        ACCUMULATE(float);                                                                                     \
        FINISH                                                                                                 \
    }

/* The fast row functions' common start: the row's pointers (float32 weights), where the gradient goes (a block of
   scratch, again and again, when none is asked for), a buffer for a block of sparse targets. */
#define FAST_ROW_START(XT, YT)                                                                                 \
    const XT *restrict x = a->x;                                                                               \
    const YT *restrict y = a->y;                                                                               \
    const float *restrict w = a->w;                                                                            \
    XT *restrict g = a->g ? a->g : a->scratch;                                                                 \
    const int64_t gstep = a->g ? BLOCK : 0;                                                                    \
    YT ybuf[BLOCK] __attribute__((aligned(64)));                                                               \
    int64_t sp_k = 0;

/* The plain loss in float32 with the functions above: the loss of each element as hi + lo, summed in float64.
   Used where the AVX-512 loops below are not built. PRECISE = 0 (float16/bfloat16): smh_log1p, no lo part,
   17 % faster. */
#define FAST_LIMIT 86.0f
#define DEFINE_PLAIN_FAST(NAME, XT, LOADX, YT, LOADY, STOREG, PRECISE, EXACT)                         \
    static double NAME(const rowargs *a) {                                                                     \
        FAST_ROW_START(XT, YT)                                                                                 \
        const float scale = (float)a->scale;                                                                   \
        double lanes[LANES] = {0}, tail = 0;                                                                   \
        float bhi[BLOCK] __attribute__((aligned(64)));                                                         \
        float blo[BLOCK] __attribute__((aligned(64)));                                                         \
        for (int64_t b = 0; b < a->C; b += BLOCK, g += gstep) {                                                \
            int64_t n = a->C - b < BLOCK ? a->C - b : BLOCK;                                                   \
            const XT *xb = x + b;                                                                              \
            const YT *yb = TARGET_BLOCK(YT);                                                                   \
            const float *wb = w + b;                                                                           \
            float amax = 0.0f, ybad = 0.0f;                                                                    \
            _Pragma("omp simd reduction(max:amax, ybad)") for (int64_t c = 0; c < n; c++) {                    \
                float xv = LOADX(xb[c]), yv = LOADY(yb[c]), wv = wb[c];                                        \
                float yout = TARGET_OUT(float, yv); /* the target check, for free */                           \
                ybad = yout > ybad ? yout : ybad;                                                              \
                float ax = xv < 0 ? -xv : xv;                                                                  \
                float m = ax == ax ? ax : FAST_LIMIT; /* NaN: redo the block too */                           \
                amax = m > amax ? m : amax;                                                                    \
                float zlo, z = smf_exp_neg(ax, &zlo); /* e^-|x| in [0, 1]: cannot overflow */                  \
                float u = 1.0f + z, v = 2.0f + z, q = 1.0f / (u * v); /* one division for two reciprocals */  \
                float llo = 0.0f, lhi = PRECISE ? smf_log1p(z, zlo, z * u * q, u * q, &llo) : smh_log1p(z * u * q); \
                float margin = PLAIN_MARGIN(float, xv, yv);                                                    \
                if (PRECISE) { /* a zero weight removes the element */                                         \
                    bhi[c] = wv == 0.0f ? 0.0f : lhi;                                                          \
                    blo[c] = wv == 0.0f ? 0.0f : llo + margin;                                                 \
                } else {                                                                                       \
                    bhi[c] = wv == 0.0f ? 0.0f : lhi + margin;                                                 \
                }                                                                                              \
                float r = q * v, zr = z * r; /* sigmoid(|x|), sigmoid(-|x|) */                                 \
                g[c] = STOREG(wv * scale * PLAIN_GRAD(float, xv, yv, r, zr));                                  \
            }                                                                                                  \
            if (ybad != 0.0f) *a->bad = 1;                                                                     \
            if (!(amax < FAST_LIMIT)) { /* rare: |x| >= 86, inf or NaN: this block again with glibc's functions */ \
                tail += EXACT(a, xb, yb, wb, g, n);                                                            \
                continue;                                                                                      \
            }                                                                                                  \
            int64_t c = 0;                                                                                     \
            for (; c + LANES <= n; c += LANES) {                                                               \
                _Pragma("omp simd") for (int k = 0; k < LANES; k++)                                            \
                    lanes[k] += (double)wb[c + k] * ((double)bhi[c + k] + (PRECISE ? (double)blo[c + k] : 0.0)); \
            }                                                                                                  \
            for (; c < n; c++) tail += (double)wb[c] * ((double)bhi[c] + (PRECISE ? (double)blo[c] : 0.0));    \
        }                                                                                                      \
        FINISH                                                                                                 \
    }


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
                row_lo = _mm512_add_pd(row_lo, _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(bsum)),   \
                                                             _mm512_cvtps_pd(_mm512_castps512_ps256(bsum_lo)))); \
                row_hi = _mm512_add_pd(row_hi, _mm512_add_pd(_mm512_cvtps_pd(_mm512_extractf32x8_ps(bsum, 1)), \
                                                             _mm512_cvtps_pd(_mm512_extractf32x8_ps(bsum_lo, 1)))); \
            }                                                                                                  \
        }                                                                                                      \
        return tail + _mm512_reduce_add_pd(_mm512_add_pd(row_lo, row_hi));                                    \
    }
#endif

#define ID(v) (v)
#define F16LOAD(v) f16_to_f32(v)
#define F16STORE(v) f32_to_f16(v)
#define U8LOAD(v) ((float)(v))
#define U8LOAD64(v) ((double)(v))

#define DEFINE_OPTS(SUFFIX, T, EXP, LOG1P, XT, LOADX, YT, LOADY, STOREG)                                     \
    DEFINE_OPTIONS(weighted_##SUFFIX, WEIGHTED_ELEMENT, WEIGHTED_GRAD, T, EXP, LOG1P, XT, LOADX, YT, LOADY, STOREG) \
    DEFINE_OPTIONS(focused_##SUFFIX, FOCUSED_ELEMENT, FOCUSED_GRAD, T, EXP, LOG1P, XT, LOADX, YT, LOADY, STOREG)
#define DEFINE_ALL(SUFFIX, T, EXP, LOG1P, XT, LOADX, YT, LOADY, STOREG)                                      \
    DEFINE_PLAIN(plain_##SUFFIX, T, EXP, LOG1P, XT, LOADX, YT, LOADY, STOREG)                                 \
    DEFINE_OPTS(SUFFIX, T, EXP, LOG1P, XT, LOADX, YT, LOADY, STOREG)

DEFINE_OPTS(f32_f32, float, expf, log1pf, float, ID, float, ID, ID)
DEFINE_OPTS(f32_u8, float, expf, log1pf, float, ID, uint8_t, U8LOAD, ID)
DEFINE_ALL(f64_f64, double, exp, log1p, double, ID, double, ID, ID)
DEFINE_ALL(f64_u8, double, exp, log1p, double, ID, uint8_t, U8LOAD64, ID)
DEFINE_OPTS(f16_f16, float, expf, log1pf, _Float16, F16LOAD, _Float16, F16LOAD, F16STORE)
DEFINE_OPTS(f16_u8, float, expf, log1pf, _Float16, F16LOAD, uint8_t, U8LOAD, F16STORE)
DEFINE_OPTS(bf16_bf16, float, expf, log1pf, uint16_t, bf16_to_f32, uint16_t, bf16_to_f32, f32_to_bf16)
DEFINE_OPTS(bf16_u8, float, expf, log1pf, uint16_t, bf16_to_f32, uint8_t, U8LOAD, f32_to_bf16)


DEFINE_EXACT_BLOCK(exact_f32_f32, float, ID, float, ID, ID)
DEFINE_EXACT_BLOCK(exact_f32_u8, float, ID, uint8_t, U8LOAD, ID)
DEFINE_EXACT_BLOCK(exact_f16_f16, _Float16, F16LOAD, _Float16, F16LOAD, F16STORE)
DEFINE_EXACT_BLOCK(exact_f16_u8, _Float16, F16LOAD, uint8_t, U8LOAD, F16STORE)
DEFINE_EXACT_BLOCK(exact_bf16_bf16, uint16_t, bf16_to_f32, uint16_t, bf16_to_f32, f32_to_bf16)
DEFINE_EXACT_BLOCK(exact_bf16_u8, uint16_t, bf16_to_f32, uint8_t, U8LOAD, f32_to_bf16)
#ifdef SOFTMARGIN_AVX512
/* the six input/target pairs of one kind of loss: P the row functions' prefix, EXACT(S) their exact block functions */
#define DEFINE_AVX512_ALL(P, EXACT, F32S, HALFS)                                                               \
    DEFINE_AVX512(P##f32_f32, float, avx_load_f32, float, avx_load_f32, avx_store_f32, EXACT(f32_f32), F32S)  \
    DEFINE_AVX512(P##f32_u8, float, avx_load_f32, uint8_t, avx_load_u8, avx_store_f32, EXACT(f32_u8), F32S)   \
    DEFINE_AVX512(P##f16_f16, _Float16, avx_load_f16, _Float16, avx_load_f16, avx_store_f16, EXACT(f16_f16), HALFS) \
    DEFINE_AVX512(P##f16_u8, _Float16, avx_load_f16, uint8_t, avx_load_u8, avx_store_f16, EXACT(f16_u8), HALFS) \
    DEFINE_AVX512(P##bf16_bf16, uint16_t, avx_load_bf16, uint16_t, avx_load_bf16, avx_store_bf16, EXACT(bf16_bf16), HALFS) \
    DEFINE_AVX512(P##bf16_u8, uint16_t, avx_load_bf16, uint8_t, avx_load_u8, avx_store_bf16, EXACT(bf16_u8), HALFS)
#define PLAIN_EXACT(S) exact_##S
#define WEIGHTED_EXACT(S) weighted_##S##_block
DEFINE_AVX512_ALL(fast_, PLAIN_EXACT, F32_STEP, HALF_STEP)
/* pos_weight, mask, label smoothing: the blocks the loop cannot do exactly go to the options' own block functions */
DEFINE_AVX512_ALL(avxw_, WEIGHTED_EXACT, WEIGHTED_F32_STEP, WEIGHTED_HALF_STEP)
/* asymmetric focusing without a clip likewise; with a clip (two more log1p and a division) glibc's loop runs */
#define FOCUSED_EXACT(S) focused_##S##_block
DEFINE_AVX512_ALL(avxf_noclip_, FOCUSED_EXACT, FOCUSED_F32_STEP, FOCUSED_HALF_STEP)
#define DEFINE_FOCUSED_DISPATCH(S)                                                                             \
    static double avxf_##S(const rowargs *a) { return a->clip != 0 ? focused_##S(a) : avxf_noclip_##S(a); }
DEFINE_FOCUSED_DISPATCH(f32_f32)
DEFINE_FOCUSED_DISPATCH(f32_u8)
DEFINE_FOCUSED_DISPATCH(f16_f16)
DEFINE_FOCUSED_DISPATCH(f16_u8)
DEFINE_FOCUSED_DISPATCH(bf16_bf16)
DEFINE_FOCUSED_DISPATCH(bf16_u8)
#define FOCUSED_FN(S) avxf_##S
#define WEIGHTED_FN(S) avxw_##S
#else
#define WEIGHTED_FN(S) weighted_##S
#define FOCUSED_FN(S) focused_##S
DEFINE_PLAIN_FAST(fast_f32_f32, float, ID, float, ID, ID, 1, exact_f32_f32)
DEFINE_PLAIN_FAST(fast_f32_u8, float, ID, uint8_t, U8LOAD, ID, 1, exact_f32_u8)
DEFINE_PLAIN_FAST(fast_f16_f16, _Float16, F16LOAD, _Float16, F16LOAD, F16STORE, 0, exact_f16_f16)
DEFINE_PLAIN_FAST(fast_f16_u8, _Float16, F16LOAD, uint8_t, U8LOAD, F16STORE, 0, exact_f16_u8)
DEFINE_PLAIN_FAST(fast_bf16_bf16, uint16_t, bf16_to_f32, uint16_t, bf16_to_f32, f32_to_bf16, 0, exact_bf16_bf16)
DEFINE_PLAIN_FAST(fast_bf16_u8, uint16_t, bf16_to_f32, uint8_t, U8LOAD, f32_to_bf16, 0, exact_bf16_u8)
#endif

/* [xtype][target is uint8][0 plain, 1 pos_weight/mask/smoothing, 2 with focusing]: the float32 compute types take
   the plain loss with our exp/log1p, float64 and the options glibc's */
#define FNS(P, W, F, S, U) {{P##S, W(S), F(S)}, {P##U, W(U), F(U)}}
#define GLIBC_WEIGHTED(S) weighted_##S
#define GLIBC_FOCUSED(S) focused_##S
static const row_fn ROW_FNS[4][2][3] = {
    FNS(fast_, WEIGHTED_FN, FOCUSED_FN, f32_f32, f32_u8), FNS(plain_, GLIBC_WEIGHTED, GLIBC_FOCUSED, f64_f64, f64_u8),
    FNS(fast_, WEIGHTED_FN, FOCUSED_FN, f16_f16, f16_u8), FNS(fast_, WEIGHTED_FN, FOCUSED_FN, bf16_bf16, bf16_u8)};
static const int64_t XSIZE[4] = {4, 8, 2, 2};

typedef struct {
    row_fn fn;
    int64_t xsize, ysize, wsize, wrowstep, pwrowstep, maskrowstep, row0, row1;
    rowargs base; /* row 0's pointers; the scalars */
    const double *row_scale;
    double *out;
    int *bad;
    const int64_t *sp_indptr; /* sparse targets: N + 1 offsets into base.sp_idx / base.sp_val, or NULL */
} job;

static void run_rows(const job *j) {
    double scratch[BLOCK]; /* large enough for BLOCK elements of any type */
    for (int64_t r = j->row0; r < j->row1; r++) {
        rowargs a = j->base;
        a.scratch = scratch;
        a.bad = j->bad;
        a.x = (const char *)a.x + r * a.C * j->xsize;
        a.y = (const char *)a.y + r * a.C * j->ysize;
        a.w = (const char *)a.w + r * j->wrowstep * j->wsize;
        if (a.pw) a.pw = (const char *)a.pw + r * j->pwrowstep * j->wsize;
        if (a.mask) a.mask += r * j->maskrowstep;
        if (a.g) a.g = (char *)a.g + r * a.C * j->xsize;
        if (j->row_scale) a.scale = j->row_scale[r];
        if (j->sp_indptr) {
            a.sparse = 1;
            a.sp_idx = j->base.sp_idx ? j->base.sp_idx + j->sp_indptr[r] : 0;
            if (a.sp_val) a.sp_val = (const char *)a.sp_val + j->sp_indptr[r] * j->ysize;
            a.sp_n = j->sp_indptr[r + 1] - j->sp_indptr[r];
        }
        j->out[r] = j->fn(&a);
    }
}

#define MAX_THREADS 256

#ifndef _OPENMP
static void *run_thread(void *arg) {
    run_rows((const job *)arg);
    return 0;
}
#endif

/* Each row's nonzero bytes of a contiguous (N, C) uint8 mask: the per-row divisors of a masked loss. */
void softmargin_count_rows(const uint8_t *mask, int64_t N, int64_t C, int32_t *out, int nthreads) {
    if (nthreads < 1 || N * C < ((int64_t)1 << 18)) nthreads = 1;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nthreads) schedule(static)
#endif
    for (int64_t r = 0; r < N; r++) {
        const uint8_t *m = mask + r * C;
        int32_t count = 0;
#pragma omp simd reduction(+ : count)
        for (int64_t c = 0; c < C; c++) count += m[c] != 0;
        out[r] = count;
    }
    (void)nthreads;
}

/* The float16 conversions the loops use, over arrays: the tests check them against NumPy's. */
void softmargin_f16_from_f32(const float *in, _Float16 *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = f32_to_f16(in[i]);
}
void softmargin_f16_to_f32(const _Float16 *in, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = f16_to_f32(in[i]);
}

/* What this build does: bit 0, the plain loss takes the AVX-512 loops (float32, float16, bfloat16). */
int softmargin_features(void) {
#ifdef SOFTMARGIN_AVX512
    return 1;
#else
    return 0;
#endif
}

/* sparse targets: y NULL, sp_indptr (N + 1), sp_idx (ascending within each row) and sp_val (NULL for all ones, else
 * in the target type) give each row's positives;
 * x, y, g: contiguous (N, C); w, pw: weights in the compute type, (1, C) with row step 0 or (N, C) with row step C
 * (pw may be NULL); mask: uint8 (1, C) or (N, C), or NULL; row_scale: N gradient scales, or NULL for `scale`;
 * out: N float64 row sums; g may be NULL. options = 0 runs the plain loss (pw, mask, eps, gammas, clip ignored).
 * Returns 0; 1 when a row function saw a target outside [0, 1] (everything is computed all the same; the float32/16
 * plain loss and the options look, float64's plain loss does not); -1 on a bad dtype. */
int softmargin_fused(int xtype, int ytype, const void *x, const void *y, const void *w, int64_t wrowstep,
                     const void *pw, int64_t pwrowstep, const uint8_t *mask, int64_t maskrowstep, int64_t N,
                     int64_t C, double scale, const double *row_scale, int options, double eps, double gamma_pos,
                     double gamma_neg, double clip, double *out, void *g, int nthreads, const int64_t *sp_indptr,
                     const int64_t *sp_idx, const void *sp_val) {
    if (xtype < F32 || xtype > BF16 || (ytype != xtype && ytype != U8)) return -1;
    if (options && (!pw || !mask)) return -1;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    const int64_t min_elements = 1 << 15; /* below this a thread costs more than it saves */
    int64_t useful = N * C / min_elements;
    if (useful < nthreads) nthreads = useful < 1 ? 1 : (int)useful;
    if (nthreads > N) nthreads = N < 1 ? 1 : (int)N;
    const int64_t xsize = XSIZE[xtype];
    if (!y && !sp_indptr) return -1;
    rowargs base = {x,         y,         w,     options ? pw : 0, options ? mask : 0, C, scale, g, 0, eps, gamma_pos,
                    gamma_neg, clip,      sp_idx, sp_val,           0,                  0};
#ifdef MADV_HUGEPAGE
    /* A large gradient is fresh memory (glibc maps blocks over 32 MiB anew each time), and faulting it in 4 KiB pages
       costs more than computing it; ask for transparent huge pages before the first write. Only advice: where the
       kernel does not honour it, nothing changes. */
    const size_t gbytes = g ? (size_t)(N * C * xsize) : 0;
    if (gbytes >= ((size_t)8 << 20)) {
        const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
        const uintptr_t lo = ((uintptr_t)g + page - 1) & ~(page - 1), hi = ((uintptr_t)g + gbytes) & ~(page - 1);
        if (hi > lo) madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
    }
#endif
    job jobs[MAX_THREADS];
    int bad[MAX_THREADS] = {0};
    for (int t = 0; t < nthreads; t++) {
        int kind = !options ? 0 : (gamma_pos != 0 || gamma_neg != 0 || clip != 0) ? 2 : 1;
        job j = {ROW_FNS[xtype][ytype == U8][kind], xsize, ytype == U8 ? 1 : xsize, xtype == F64 ? 8 : 4,
                 wrowstep, pwrowstep, maskrowstep, N * t / nthreads, N * (t + 1) / nthreads, base, row_scale, out,
                 &bad[t], sp_indptr};
        jobs[t] = j;
    }
#ifdef _OPENMP
    /* OpenMP, not our own threads: loaded beside torch, this is torch's own libgomp (the same soname), so the
       kernel runs on the pool torch's operators just used instead of fighting its spinning workers for cores. */
#pragma omp parallel for num_threads(nthreads) schedule(static, 1)
    for (int t = 0; t < nthreads; t++) run_rows(&jobs[t]);
#else
    pthread_t threads[MAX_THREADS];
    int started[MAX_THREADS];
    for (int t = 1; t < nthreads; t++) started[t] = pthread_create(&threads[t], 0, run_thread, &jobs[t]) == 0;
    run_rows(&jobs[0]);
    for (int t = 1; t < nthreads; t++) {
        if (started[t]) pthread_join(threads[t], 0);
        else run_rows(&jobs[t]); /* no thread to be had: do its rows here */
    }
#endif
    for (int t = 0; t < nthreads; t++)
        if (bad[t]) return 1;
    return 0;
}
