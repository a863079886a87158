/* Scalar math of the kernel, inline and branch-free so that loops vectorise with it: float32 e^-a and log1p of our
 * own (the plain loss's transcendental functions), and the float16/bfloat16 conversions. glibc's vector functions
 * (libmvec), where the build links them, come in through the `declare simd` declarations below (math.h only makes
 * them under -ffast-math, which would drop the inf/NaN semantics the formula needs); SOFTMARGIN_SCALAR_MATH builds
 * without them (scalar libm for the options and the float64 loss). */
#ifndef SOFTMARGIN_SCALAR_MATH_H
#define SOFTMARGIN_SCALAR_MATH_H
#include <math.h>
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

/* ---- the floating-point mode every kernel call runs in ----
 * The float16 conversions below and the small e^-|x| terms go through float32 subnormals, which flush-to-zero /
 * denormals-are-zero modes turn into 0 (and so a float16 gradient of 1e-6 into 0). A thread can hold such a mode
 * without its owner knowing: XLA runs JAX's host callbacks on threads with FTZ/DAZ set, and OpenMP workers started
 * from such a thread inherit it and keep it, so a later torch call found half its rows flushed. Every entry point and
 * every worker therefore enters IEEE mode (no FTZ/DAZ, round to nearest) and gives the caller's mode back on leaving. */
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
typedef unsigned int sm_fpmode;
static inline sm_fpmode sm_fp_enter(void) {
    const unsigned int mode = _mm_getcsr();
    const unsigned int ieee = mode & ~(0x8000u | 0x6000u | 0x0040u); /* FTZ, rounding control, DAZ */
    if (ieee != mode) _mm_setcsr(ieee);
    return mode;
}
static inline void sm_fp_leave(sm_fpmode mode) {
    if (_mm_getcsr() != mode) _mm_setcsr(mode);
}
#elif defined(__aarch64__)
typedef uint64_t sm_fpmode;
static inline sm_fpmode sm_fp_enter(void) {
    uint64_t mode;
    __asm__ volatile("mrs %0, fpcr" : "=r"(mode));
    const uint64_t ieee = mode & ~((1ull << 24) | (3ull << 22) | (1ull << 19)); /* FZ, RMode, FZ16 */
    if (ieee != mode) __asm__ volatile("msr fpcr, %0" : : "r"(ieee));
    return mode;
}
static inline void sm_fp_leave(sm_fpmode mode) { __asm__ volatile("msr fpcr, %0" : : "r"(mode)); }
#else
typedef int sm_fpmode;
static inline sm_fpmode sm_fp_enter(void) { return 0; }
static inline void sm_fp_leave(sm_fpmode mode) { (void)mode; }
#endif

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


#endif
