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
 * float32, float16 and bfloat16 are computed in float32 with glibc's vector expf/log1pf (about 1 ulp), float64 in
 * float64; each block of element losses is summed in float64, so a row's loss is accurate to about 1e-7 relative.
 * Every row is summed by one thread in a fixed order: the results are bitwise the same for any thread count.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

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

/* One row, computed in type T (float or double) from inputs of type XT, targets of type YT, gradient of type XT. */
#define DEFINE_ROW(NAME, T, EXP, LOG1P, XT, LOADX, YT, LOADY, STOREG)                                        \
    static double NAME(const XT *restrict x, const YT *restrict y, const T *restrict w, int64_t C,            \
                        T scale, XT *restrict g) {                                                  \
        double lanes[LANES] = {0}, tail = 0;                                                                   \
        T buf[BLOCK] __attribute__((aligned(64)));                                                     \
        for (int64_t b = 0; b < C; b += BLOCK) {                                                               \
            int64_t n = C - b < BLOCK ? C - b : BLOCK;                                                         \
            const XT *xb = x + b;                                                                              \
            const YT *yb = y + b;                                                                              \
            const T *wb = w + b;                                                                               \
            if (g) {                                                                                           \
                XT *gb = g + b;                                                                                \
                _Pragma("omp simd") for (int64_t c = 0; c < n; c++) {                                          \
                    T xv = LOADX(xb[c]), yv = LOADY(yb[c]), wv = wb[c];                                        \
                    T z = EXP(-(xv < 0 ? -xv : xv)); /* in [0, 1]: cannot overflow */                          \
                    T pos = xv > 0 ? xv : (T)0, neg = xv < 0 ? -xv : (T)0;                                     \
                    T margin = (yv == (T)1 ? (T)0 : ((T)1 - yv) * pos) + (yv == (T)0 ? (T)0 : yv * neg);       \
                    buf[c] = wv == (T)0 ? (T)0 : LOG1P(z) + margin; /* a zero weight removes the element */   \
                    T r = (T)1 / ((T)1 + z), zr = z * r; /* sigmoid(|x|), sigmoid(-|x|) */                    \
                    T sp = xv >= 0 ? r : zr, sn = xv >= 0 ? zr : r;                                            \
                    gb[c] = STOREG(wv * scale * (((T)1 - yv) * sp - yv * sn));                                 \
                }                                                                                              \
            } else {                                                                                           \
                _Pragma("omp simd") for (int64_t c = 0; c < n; c++) {                                          \
                    T xv = LOADX(xb[c]), yv = LOADY(yb[c]);                                                    \
                    T z = EXP(-(xv < 0 ? -xv : xv));                                                           \
                    T pos = xv > 0 ? xv : (T)0, neg = xv < 0 ? -xv : (T)0;                                     \
                    T margin = (yv == (T)1 ? (T)0 : ((T)1 - yv) * pos) + (yv == (T)0 ? (T)0 : yv * neg);       \
                    buf[c] = wb[c] == (T)0 ? (T)0 : LOG1P(z) + margin;                                         \
                }                                                                                              \
            }                                                                                                  \
            /* weighted in float64 (w * l may exceed float32 where the row mean does not), into LANES          \
               independent accumulators: one accumulator would make the loop wait on each add's latency */    \
            int64_t c = 0;                                                                                     \
            for (; c + LANES <= n; c += LANES) {                                                               \
                _Pragma("omp simd") for (int k = 0; k < LANES; k++) lanes[k] += (double)wb[c + k] * (double)buf[c + k]; \
            }                                                                                                  \
            for (; c < n; c++) tail += (double)wb[c] * (double)buf[c];                                         \
        }                                                                                                      \
        double acc = tail;                                                                                     \
        for (int k = 0; k < LANES; k++) acc += lanes[k];                                                       \
        return acc;                                                                                            \
    }

#define ID(v) (v)
#define F16LOAD(v) ((float)(v))
#define F16STORE(v) ((_Float16)(v))
#define U8LOAD(v) ((float)(v))
#define U8LOAD64(v) ((double)(v))

DEFINE_ROW(row_f32_f32, float, expf, log1pf, float, ID, float, ID, ID)
DEFINE_ROW(row_f32_u8, float, expf, log1pf, float, ID, uint8_t, U8LOAD, ID)
DEFINE_ROW(row_f64_f64, double, exp, log1p, double, ID, double, ID, ID)
DEFINE_ROW(row_f64_u8, double, exp, log1p, double, ID, uint8_t, U8LOAD64, ID)
DEFINE_ROW(row_f16_f16, float, expf, log1pf, _Float16, F16LOAD, _Float16, F16LOAD, F16STORE)
DEFINE_ROW(row_f16_u8, float, expf, log1pf, _Float16, F16LOAD, uint8_t, U8LOAD, F16STORE)
DEFINE_ROW(row_bf16_bf16, float, expf, log1pf, uint16_t, bf16_to_f32, uint16_t, bf16_to_f32, f32_to_bf16)
DEFINE_ROW(row_bf16_u8, float, expf, log1pf, uint16_t, bf16_to_f32, uint8_t, U8LOAD, f32_to_bf16)

typedef struct {
    int xtype, ytype;
    const char *x, *y, *w;
    int64_t wrowstep, C, row0, row1;
    double scale;
    double *out;
    char *g;
} job;

static void run_rows(const job *j) {
    const int64_t C = j->C;
    for (int64_t r = j->row0; r < j->row1; r++) {
        double s;
        if (j->xtype == F64) {
            const double *w = (const double *)j->w + r * j->wrowstep;
            double *g = j->g ? (double *)j->g + r * C : 0;
            s = j->ytype == U8 ? row_f64_u8((const double *)j->x + r * C, (const uint8_t *)j->y + r * C, w, C, j->scale, g)
                               : row_f64_f64((const double *)j->x + r * C, (const double *)j->y + r * C, w, C, j->scale, g);
        } else {
            const float *w = (const float *)j->w + r * j->wrowstep;
            const float scale = (float)j->scale;
            if (j->xtype == F32) {
                float *g = j->g ? (float *)j->g + r * C : 0;
                s = j->ytype == U8 ? row_f32_u8((const float *)j->x + r * C, (const uint8_t *)j->y + r * C, w, C, scale, g)
                                   : row_f32_f32((const float *)j->x + r * C, (const float *)j->y + r * C, w, C, scale, g);
            } else if (j->xtype == F16) {
                _Float16 *g = j->g ? (_Float16 *)j->g + r * C : 0;
                s = j->ytype == U8 ? row_f16_u8((const _Float16 *)j->x + r * C, (const uint8_t *)j->y + r * C, w, C, scale, g)
                                   : row_f16_f16((const _Float16 *)j->x + r * C, (const _Float16 *)j->y + r * C, w, C, scale, g);
            } else {
                uint16_t *g = j->g ? (uint16_t *)j->g + r * C : 0;
                s = j->ytype == U8 ? row_bf16_u8((const uint16_t *)j->x + r * C, (const uint8_t *)j->y + r * C, w, C, scale, g)
                                   : row_bf16_bf16((const uint16_t *)j->x + r * C, (const uint16_t *)j->y + r * C, w, C, scale, g);
            }
        }
        j->out[r] = s;
    }
}

#define MAX_THREADS 256

#ifndef _OPENMP
static void *run_thread(void *arg) {
    run_rows((const job *)arg);
    return 0;
}
#endif

/* x, y, g: contiguous (N, C); w: weights in the compute type, (1, C) with wrowstep 0 or (N, C) with wrowstep C;
 * out: N float64 row sums; g may be NULL. Returns 0, or -1 on a bad dtype. */
int softmargin_fused(int xtype, int ytype, const void *x, const void *y, const void *w, int64_t wrowstep,
                     int64_t N, int64_t C, double scale, double *out, void *g, int nthreads) {
    if (xtype < F32 || xtype > BF16 || (ytype != xtype && ytype != U8)) return -1;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    const int64_t min_elements = 1 << 15; /* below this a thread costs more than it saves */
    int64_t useful = N * C / min_elements;
    if (useful < nthreads) nthreads = useful < 1 ? 1 : (int)useful;
    if (nthreads > N) nthreads = N < 1 ? 1 : (int)N;
    job jobs[MAX_THREADS];
    for (int t = 0; t < nthreads; t++) {
        job j = {xtype, ytype, (const char *)x, (const char *)y, (const char *)w, wrowstep, C,
                 N * t / nthreads, N * (t + 1) / nthreads, scale, out, (char *)g};
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
    return 0;
}
