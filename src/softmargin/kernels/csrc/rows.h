/* The portable row functions: every dtype, the plain loss and the options, written as plain C loops that the
 * compiler vectorises (`omp simd`) for whatever instruction set the build targets.
 *
 * A row function takes one row (rowargs) and returns its weighted loss sum, writing the row's gradient. The row
 * functions differ only in the element types they read and write; they are made by the generator macros below,
 * each instantiated in kernel.c for the input/target pairs (the names read <loss>_<input>_<target>):
 *   DEFINE_PLAIN(NAME, T, EXP, LOG1P, XT, LOADX, YT, LOADY, STOREG)  the plain loss in T with EXP/LOG1P (float64)
 *   DEFINE_OPTIONS(NAME, ELEMENT, GRAD, ...)                         the options (ELEMENT/GRAD: weighted, focused)
 *   DEFINE_EXACT_BLOCK(NAME, XT, LOADX, YT, LOADY, STOREG)           one block with libm, for the fast loops' redos
 *   DEFINE_PLAIN_FAST(NAME, XT, LOADX, YT, LOADY, STOREG, PRECISE, EXACT)  the plain float32-compute loss with the
 *                                                                    polynomials of scalar_math.h
 * T is the compute type, XT/YT the input/target storage types, LOADX/LOADY convert a stored element to T, STOREG a
 * T gradient to XT. */
#ifndef SOFTMARGIN_ROWS_H
#define SOFTMARGIN_ROWS_H
#include "scalar_math.h"

#define BLOCK 512
#define LANES 16

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

/* One block of a sparse row's targets, made dense in a BLOCK-sized buffer: the N x C target never exists. An index
   out of order or negative (the validation upstream reports it) is skipped rather than written outside the buffer. */
#define SPARSE_BLOCK(YT, ONE)                                                                                  \
    static inline const YT *sparse_block_##YT(const rowargs *a, int64_t b, int64_t n, int64_t *k, YT *buf) {   \
        memset(buf, 0, (size_t)n * sizeof(YT));                                                                \
        const YT *values = a->sp_val;                                                                          \
        while (*k < a->sp_n && a->sp_idx[*k] < b + n) {                                                        \
            const int64_t i = a->sp_idx[*k] - b;                                                               \
            if (i >= 0) buf[i] = values ? values[*k] : (ONE);                                                  \
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
    /* -log(1 - p_m), 1 - p_m = q + clip (p > clip) formed without cancellation: -log1p(-p_m) up to p_m = 1/2;  \
     * beyond, -log(q + clip) = -log q - log1p(clip / q) (q >= clip) or -log clip - log1p(q / clip): one log1p    \
     * of a selected argument in [0, 1]. (-log1p(-p_m) alone lost clip in p_m as p rounded to 1: inf at x = 20,  \
     * clip = 1e-8, float32.) */                                                                               \
    T narg = pm < (T)0.5 ? -pm : q >= clip ? clip / (q > 0 ? q : (T)1) : q / clip;                             \
    T nbase = pm < (T)0.5 ? (T)0 : q >= clip ? sp_pos : nlog_clip;                                             \
    T nterm = has_clip ? nbase - LOG1P(narg) : sp_pos;                                                         \
    T pm_safe = pm > 0 ? pm : (T)1; /* log p_m = -log1p((1 - p_m) / p_m): accurate, and vectorises */          \
    T fneg = has_clip ? (pm > 0 ? EXP(-gn * LOG1P((q + clip) / pm_safe)) : (T)0) : EXP(-gn * sp_neg);           \
    fneg = gn == (T)0 ? (T)1 : fneg; /* p_m^g- */                                                              \
    T neg_loss = fneg == (T)0 ? (T)0 : fneg * nterm;                                                           \
    T l = (yv == (T)0 ? (T)0 : yv * pos_loss) + (yv == (T)1 ? (T)0 : ((T)1 - yv) * neg_loss);                  \
    buf[c] = wb[c] == (T)0 ? (T)0 : l;
#define FOCUSED_GRAD(T) FOCUSED_GRAD_##T(yv, p, q, pm, sp_neg, nterm, fpos, fneg, pwv, gp, gn, clip, has_clip)

#define DEFINE_FOCUSED_GRAD(T)                                                                                 \
    _Pragma("omp declare simd notinbranch uniform(gp, gn, clip, has_clip)")                                    \
    static inline T focused_grad_##T(T yv, T p, T q, T pm, T sp_neg, T nterm, T fpos, T fneg, T pwv, T gp, T gn,  \
                                     T clip, int has_clip) {                                                   \
        T pos_grad = -pwv * fpos * (gp * (p == (T)0 ? (T)0 : p * sp_neg) + q);                                  \
        T ratio = nterm / (pm > 0 ? pm : (T)1); /* -log(1 - p_m) / p_m */                                      \
        /* p q (g- ratio + 1 / (1 - p_m)), 1 - p_m = q + clip; q / (q + clip) <= 1, where 1 / (q + clip) would       \
         * overflow float32 for a subnormal clip */                                                            \
        T q_share = q > 0 ? q / (q + clip) : (T)0;                                                             \
        T clipped = pm > 0 ? p * fneg * (gn * q * ratio + q_share) : (T)0;                                     \
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
    const T nlog_clip = has_clip ? (T)-log(a->clip) : (T)0; /* -log clip, once */                              \
    (void)gp; (void)gn; (void)clip; (void)has_clip; (void)nlog_clip;                                           \
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


#endif
