/* The fused CPU kernel: per-row loss sums and the gradient of the multi-label soft-margin loss in one pass.
 *
 * An adapter of softmargin/_formula.py (read the derivation there), tested against it:
 *   l(x, y) = log1p(exp(-|x|)) + (1 - y) relu(x) + y relu(-x)      three non-negative terms: no overflow, no cancellation
 *   g(x, y) = (1 - y) sigmoid(x) - y sigmoid(-x)                    exact for hard labels, finite for infinite x
 * with 0 * inf taken as 0 (a right prediction at infinity) and a zero weight removing its element.
 *
 * A second family of row functions adds the imbalance options (pos_weight, mask, label smoothing, asymmetric
 * focusing; see element_loss_and_grad_options in _formula.py), so that they keep the fused pass too.
 *
 * float32, float16 and bfloat16 are computed in float32: the plain loss with an exp and a log1p of our own
 * (scalar_math.h; with AVX-512 in loops written with intrinsics, float16/bfloat16 inputs with shorter polynomials,
 * good to 4.2e-7; without it in portable loops, float16/bfloat16 with a shorter log1p, good to 2e-6: far below their
 * own rounding), the options with glibc's vector expf/log1pf (about 1 ulp); float64 in float64 with glibc's
 * exp/log1p. Element losses are summed in float64 (the AVX-512 loops: per lane in float32 over a block of 32 vectors
 * first), so a row's loss is accurate to about 1e-7 relative (float32).
 *
 * The files, by concern:
 *   softmargin.h      the ABI: the argument struct, the dtype and status enums, the exported functions
 *   scalar_math.h     exp/log1p polynomials, float16/bfloat16 conversions
 *   rows.h            the portable row functions (generator macros, documented there)
 *   rows_avx512.h     the AVX-512 row functions
 *   threads.h         rows to threads
 *   kernel.c          this file: the instantiations, the dispatch table, argument checks and the entry points
 *
 * Built at install time (setup.py, through softmargin/kernels/build.py), once per CPU variant, never with
 * -march=native: "avx512bf16" and "avx512" (-march=x86-64-v4, with and without AVX512-BF16), "avx2" (x86-64-v3:
 * the portable loops with AVX2/FMA/F16C) and "baseline" (the architecture's default: x86-64, aarch64, ...). The
 * loader picks the best variant this CPU supports (softmargin_cpu_supports, asked of the baseline library), so a
 * wheel built on one machine runs, correctly and fast, on another. -ffast-math is deliberately absent: it would drop
 * the inf/NaN semantics the formula needs. SOFTMARGIN_PORTABLE forces the portable loops in any build.
 */
#include <stddef.h>
#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "softmargin.h"
#include "rows.h"
#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__) && defined(__AVX512VL__) &&              \
    !defined(SOFTMARGIN_PORTABLE)
#include "rows_avx512.h"
#endif
#include "threads.h"

#ifndef SOFTMARGIN_VARIANT
#define SOFTMARGIN_VARIANT "custom"
#endif
#ifndef SOFTMARGIN_SOURCE_HASH
#define SOFTMARGIN_SOURCE_HASH "unknown"
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
/* float16/bfloat16 inputs with a float32 target, read as it is (soft labels finer than the input: rounded to its 11
   or 8 bits first, they moved a mean loss by 1e-6 or 1e-5 relative, and a small gradient sigmoid(x) - y by more
   than itself); the loops compute in float32 anyway. A target exact in the input's dtype (0/1) gives the same bits
   as in that dtype: the same arithmetic on the same float32 values. */
DEFINE_OPTS(f16_f32, float, expf, log1pf, _Float16, F16LOAD, float, ID, F16STORE)
DEFINE_OPTS(bf16_f32, float, expf, log1pf, uint16_t, bf16_to_f32, float, ID, f32_to_bf16)


DEFINE_EXACT_BLOCK(exact_f32_f32, float, ID, float, ID, ID)
DEFINE_EXACT_BLOCK(exact_f32_u8, float, ID, uint8_t, U8LOAD, ID)
DEFINE_EXACT_BLOCK(exact_f16_f16, _Float16, F16LOAD, _Float16, F16LOAD, F16STORE)
DEFINE_EXACT_BLOCK(exact_f16_u8, _Float16, F16LOAD, uint8_t, U8LOAD, F16STORE)
DEFINE_EXACT_BLOCK(exact_bf16_bf16, uint16_t, bf16_to_f32, uint16_t, bf16_to_f32, f32_to_bf16)
DEFINE_EXACT_BLOCK(exact_bf16_u8, uint16_t, bf16_to_f32, uint8_t, U8LOAD, f32_to_bf16)
DEFINE_EXACT_BLOCK(exact_f16_f32, _Float16, F16LOAD, float, ID, F16STORE)
DEFINE_EXACT_BLOCK(exact_bf16_f32, uint16_t, bf16_to_f32, float, ID, f32_to_bf16)
#ifdef SOFTMARGIN_AVX512
/* the eight input/target pairs of one kind of loss: P the row functions' prefix, EXACT(S) their exact blocks */
#define DEFINE_AVX512_ALL(P, EXACT, F32S, HALFS)                                                               \
    DEFINE_AVX512(P##f32_f32, float, avx_load_f32, float, avx_load_f32, avx_store_f32, EXACT(f32_f32), F32S)  \
    DEFINE_AVX512(P##f32_u8, float, avx_load_f32, uint8_t, avx_load_u8, avx_store_f32, EXACT(f32_u8), F32S)   \
    DEFINE_AVX512(P##f16_f16, _Float16, avx_load_f16, _Float16, avx_load_f16, avx_store_f16, EXACT(f16_f16), HALFS) \
    DEFINE_AVX512(P##f16_u8, _Float16, avx_load_f16, uint8_t, avx_load_u8, avx_store_f16, EXACT(f16_u8), HALFS) \
    DEFINE_AVX512(P##bf16_bf16, uint16_t, avx_load_bf16, uint16_t, avx_load_bf16, avx_store_bf16, EXACT(bf16_bf16), HALFS) \
    DEFINE_AVX512(P##bf16_u8, uint16_t, avx_load_bf16, uint8_t, avx_load_u8, avx_store_bf16, EXACT(bf16_u8), HALFS) \
    DEFINE_AVX512(P##f16_f32, _Float16, avx_load_f16, float, avx_load_f32, avx_store_f16, EXACT(f16_f32), HALFS) \
    DEFINE_AVX512(P##bf16_f32, uint16_t, avx_load_bf16, float, avx_load_f32, avx_store_bf16, EXACT(bf16_f32), HALFS)
#define PLAIN_EXACT(S) exact_##S
#define WEIGHTED_EXACT(S) weighted_##S##_block
DEFINE_AVX512_ALL(fast_, PLAIN_EXACT, F32_STEP, HALF_STEP)

/* The plain loss of rows of at most 16 classes (dense targets, one weight row, no per-row scale), packed: such a row
   is one vector, mostly empty for small C, and its chain of dependent instructions plus the call around it cost
   80 ns a row at any C up to 16 (32x10: 2.5 us of a 2.9 us kernel call). Here full vectors run over the rows'
   elements laid end to end, then each row's sums are loaded back as the vector the row function would have summed
   (its lanes past C zero) and reduced by the same functions (avx_add_block, avx_row_total): each row's loss and
   gradient are bitwise the row function's (tested). A row whose elements need the exact path (|x| >= 86, inf or NaN, a target
   outside [0, 1], w * l overflowing, a subnormal bfloat16 gradient) goes to the row function instead. */
#define SHORT_ROW_MAX 16
#define PACKED_ELEMENT_F32(X, Y, G, LO, XMAX, YMAX) avx_f32_element(X, Y, G, LO, XMAX, YMAX)
#define PACKED_ELEMENT_HALF(X, Y, G, LO, XMAX, YMAX) avx_half_element(X, Y, G, XMAX, YMAX)
#define DEFINE_AVX512_PACKED(NAME, XT, LOADX, YT, LOADY, STORE, ELEMENT, HAS_LO)                               \
    static void NAME(const job *j) {                                                                           \
        const int64_t C = j->base.C, rows = 16 * (BLOCK / (16 * C)), period = 16 * C;                          \
        float wtile[2 * 16 * SHORT_ROW_MAX]; /* the weight row repeated: any 16 consecutive from a phase */    \
        for (int64_t k = 0; k < 32; k++) memcpy(wtile + k * C, j->base.w, (size_t)C * sizeof(float));        \
        const __m512 scale = _mm512_set1_ps((float)j->base.scale), zero = _mm512_setzero_ps();                 \
        float whi[BLOCK] __attribute__((aligned(64))), wlo[BLOCK] __attribute__((aligned(64)));               \
        XT gscratch[BLOCK] __attribute__((aligned(64)));                                                       \
        double scratch[BLOCK];                                                                                 \
        uint64_t redo_bits[BLOCK / 64 + 1];                                                                    \
        const __mmask16 rowmask = (__mmask16)((1u << C) - 1);                                                  \
        for (int64_t r0 = j->row0; r0 < j->row1; r0 += rows) {                                                 \
            const int64_t nr = j->row1 - r0 < rows ? j->row1 - r0 : rows, n = nr * C;                          \
            const XT *restrict xb = (const XT *)j->base.x + r0 * C;                                            \
            const YT *restrict yb = (const YT *)j->base.y + r0 * C;                                            \
            XT *restrict g = j->base.g ? (XT *)j->base.g + r0 * C : gscratch;                                  \
            const int64_t phase = (r0 * C) % period;                                                           \
            memset(redo_bits, 0, sizeof redo_bits);                                                            \
            for (int64_t c = 0; c < n; c += 16) {                                                              \
                const __mmask16 m = n - c >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - c)) - 1);      \
                const __m512 wv = _mm512_maskz_loadu_ps(m, wtile + (phase + c) % period);                     \
                __m512i xmax = _mm512_setzero_si512(), ymax = _mm512_setzero_si512();                          \
                __m512 gv, lo = zero;                                                                          \
                const __m512 hi = ELEMENT(LOADX(xb + c, m), LOADY(yb + c, m), &gv, &lo, &xmax, &ymax);         \
                _mm512_store_ps(whi + c, _mm512_fmadd_ps(wv, hi, zero));                                       \
                if (HAS_LO) _mm512_store_ps(wlo + c, _mm512_fmadd_ps(wv, lo, zero));                           \
                __mmask16 redo = STORE(g + c, _mm512_mul_ps(_mm512_mul_ps(wv, scale), gv), m);                 \
                redo |= _mm512_cmpge_epu32_mask(xmax, _mm512_set1_epi32(BITS_86));                             \
                redo |= _mm512_cmpgt_epu32_mask(ymax, _mm512_set1_epi32(BITS_1));                              \
                redo_bits[c / 64] |= (uint64_t)(redo & m) << (c % 64);                                         \
            }                                                                                                  \
            for (int64_t i = 0; i < nr; i++) {                                                                 \
                const int64_t e = i * C, off = e % 64;                                                         \
                uint64_t bits = redo_bits[e / 64] >> off;                                                      \
                if (off + C > 64) bits |= redo_bits[e / 64 + 1] << (64 - off);                                 \
                const __m512 bsum = _mm512_maskz_loadu_ps(rowmask, whi + e);                                   \
                const __m512 bsum_lo = HAS_LO ? _mm512_maskz_loadu_ps(rowmask, wlo + e) : zero;                \
                if ((bits & rowmask) || _mm512_fpclass_ps_mask(_mm512_add_ps(bsum, bsum_lo), 0x99)) {          \
                    rowargs a;                                                                                 \
                    row_args(&a, j, r0 + i, scratch);                                                          \
                    j->out[r0 + i] = j->fn(&a);                                                                \
                    continue;                                                                                  \
                }                                                                                              \
                __m512d row_lo = _mm512_setzero_pd(), row_hi = _mm512_setzero_pd();                            \
                avx_add_block(bsum, bsum_lo, &row_lo, &row_hi);                                                \
                j->out[r0 + i] = avx_row_total(0.0, row_lo, row_hi);                                           \
            }                                                                                                  \
        }                                                                                                      \
    }
DEFINE_AVX512_PACKED(packed_f32_f32, float, avx_load_f32, float, avx_load_f32, avx_store_f32, PACKED_ELEMENT_F32, 1)
DEFINE_AVX512_PACKED(packed_f32_u8, float, avx_load_f32, uint8_t, avx_load_u8, avx_store_f32, PACKED_ELEMENT_F32, 1)
DEFINE_AVX512_PACKED(packed_f16_f16, _Float16, avx_load_f16, _Float16, avx_load_f16, avx_store_f16, PACKED_ELEMENT_HALF, 0)
DEFINE_AVX512_PACKED(packed_f16_u8, _Float16, avx_load_f16, uint8_t, avx_load_u8, avx_store_f16, PACKED_ELEMENT_HALF, 0)
DEFINE_AVX512_PACKED(packed_bf16_bf16, uint16_t, avx_load_bf16, uint16_t, avx_load_bf16, avx_store_bf16, PACKED_ELEMENT_HALF, 0)
DEFINE_AVX512_PACKED(packed_bf16_u8, uint16_t, avx_load_bf16, uint8_t, avx_load_u8, avx_store_bf16, PACKED_ELEMENT_HALF, 0)
DEFINE_AVX512_PACKED(packed_f16_f32, _Float16, avx_load_f16, float, avx_load_f32, avx_store_f16, PACKED_ELEMENT_HALF, 0)
DEFINE_AVX512_PACKED(packed_bf16_f32, uint16_t, avx_load_bf16, float, avx_load_f32, avx_store_bf16, PACKED_ELEMENT_HALF, 0)
/* [xtype][target kind: TARGET_KIND] (float64: none) */
static void (*const PACKED_FNS[4][3])(const job *) = {{packed_f32_f32, packed_f32_u8, 0},
                                                      {0, 0, 0},
                                                      {packed_f16_f16, packed_f16_u8, packed_f16_f32},
                                                      {packed_bf16_bf16, packed_bf16_u8, packed_bf16_f32}};
/* the packed function for these rows, or NULL: the plain loss, dense targets, one weight row, no per-row scale,
   1 <= C <= 16, at least two rows (a single row takes the row function) */
#define PACKED(XTYPE, TKIND, KIND, S, ROWS)                                                                    \
    ((KIND) == 0 && (S)->y && !(S)->row_scale && (S)->weight_row_step == 0 && (S)->num_classes >= 1 &&         \
             (S)->num_classes <= SHORT_ROW_MAX && (ROWS) >= 2                                                  \
         ? PACKED_FNS[XTYPE][TKIND]                                                                            \
         : 0)
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
DEFINE_FOCUSED_DISPATCH(f16_f32)
DEFINE_FOCUSED_DISPATCH(bf16_f32)
#define FOCUSED_FN(S) avxf_##S
#define WEIGHTED_FN(S) avxw_##S
#else
#define PACKED(XTYPE, TKIND, KIND, S, ROWS) ((void (*)(const job *))0)
#define WEIGHTED_FN(S) weighted_##S
#define FOCUSED_FN(S) focused_##S
DEFINE_PLAIN_FAST(fast_f32_f32, float, ID, float, ID, ID, 1, exact_f32_f32)
DEFINE_PLAIN_FAST(fast_f32_u8, float, ID, uint8_t, U8LOAD, ID, 1, exact_f32_u8)
DEFINE_PLAIN_FAST(fast_f16_f16, _Float16, F16LOAD, _Float16, F16LOAD, F16STORE, 0, exact_f16_f16)
DEFINE_PLAIN_FAST(fast_f16_u8, _Float16, F16LOAD, uint8_t, U8LOAD, F16STORE, 0, exact_f16_u8)
DEFINE_PLAIN_FAST(fast_bf16_bf16, uint16_t, bf16_to_f32, uint16_t, bf16_to_f32, f32_to_bf16, 0, exact_bf16_bf16)
DEFINE_PLAIN_FAST(fast_bf16_u8, uint16_t, bf16_to_f32, uint8_t, U8LOAD, f32_to_bf16, 0, exact_bf16_u8)
DEFINE_PLAIN_FAST(fast_f16_f32, _Float16, F16LOAD, float, ID, F16STORE, 0, exact_f16_f32)
DEFINE_PLAIN_FAST(fast_bf16_f32, uint16_t, bf16_to_f32, float, ID, f32_to_bf16, 0, exact_bf16_f32)
#endif

/* [xtype][target kind][0 plain, 1 pos_weight/mask/smoothing, 2 with focusing]: the float32 compute types take
   the plain loss with our exp/log1p, float64 and the options glibc's. The target kind (TARGET_KIND): 0 the input's
   own dtype, 1 uint8, 2 float32 for a float16/bfloat16 input (float32 and float64 inputs have none: zeros). */
#define FNS(P, W, F, S, U) {{P##S, W(S), F(S)}, {P##U, W(U), F(U)}, {0, 0, 0}}
#define HALF_FNS(P, W, F, S, U, F32) {{P##S, W(S), F(S)}, {P##U, W(U), F(U)}, {P##F32, W(F32), F(F32)}}
#define GLIBC_WEIGHTED(S) weighted_##S
#define GLIBC_FOCUSED(S) focused_##S
static const row_fn ROW_FNS[4][3][3] = {
    FNS(fast_, WEIGHTED_FN, FOCUSED_FN, f32_f32, f32_u8), FNS(plain_, GLIBC_WEIGHTED, GLIBC_FOCUSED, f64_f64, f64_u8),
    HALF_FNS(fast_, WEIGHTED_FN, FOCUSED_FN, f16_f16, f16_u8, f16_f32),
    HALF_FNS(fast_, WEIGHTED_FN, FOCUSED_FN, bf16_bf16, bf16_u8, bf16_f32)};
#define TARGET_KIND(S) ((S)->ytype == (S)->xtype ? 0 : (S)->ytype == SM_U8 ? 1 : 2)

static const int64_t ELEMENT_SIZE[SM_NUM_DTYPES] = {4, 8, 2, 2, 1};

int softmargin_abi_version(void) { return SOFTMARGIN_ABI_VERSION; }
const char *softmargin_abi_fields(void) { return SOFTMARGIN_ARGS_FIELDS; }
const char *softmargin_dtype_names(void) { return SOFTMARGIN_DTYPE_NAMES; }
const char *softmargin_variant(void) { return SOFTMARGIN_VARIANT; }
const char *softmargin_source_hash(void) { return SOFTMARGIN_SOURCE_HASH; }

#define FIELD(NAME) {offsetof(softmargin_args, NAME), sizeof(((softmargin_args *)0)->NAME)}
int64_t softmargin_abi_layout(int64_t *offsets, int64_t *sizes, int64_t n) {
    static const size_t layout[][2] = {
        FIELD(xtype), FIELD(ytype), FIELD(x), FIELD(y), FIELD(weight), FIELD(weight_row_step), FIELD(pos_weight),
        FIELD(pos_weight_row_step), FIELD(mask), FIELD(mask_row_step), FIELD(num_rows), FIELD(num_classes),
        FIELD(scale), FIELD(row_scale), FIELD(options), FIELD(label_smoothing), FIELD(gamma_pos), FIELD(gamma_neg),
        FIELD(clip), FIELD(out), FIELD(grad), FIELD(num_threads), FIELD(sparse_indptr), FIELD(sparse_indices),
        FIELD(sparse_values)};
    const int64_t count = (int64_t)(sizeof layout / sizeof layout[0]);
    for (int64_t i = 0; i < n && i < count; i++) {
        offsets[i] = (int64_t)layout[i][0];
        sizes[i] = (int64_t)layout[i][1];
    }
    return n == count ? (int64_t)sizeof(softmargin_args) : -count; /* a wrong count says how many there are */
}

int softmargin_target_checked(void) { return 1 << SM_F32 | 1 << SM_F16 | 1 << SM_BF16; }

int softmargin_features(void) {
#ifdef SOFTMARGIN_AVX512
    return 1;
#else
    return 0;
#endif
}

int softmargin_cpu_supports(const char *variant) {
    if (!strcmp(variant, "baseline") || !strcmp(variant, SOFTMARGIN_VARIANT)) return 1;
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
    __builtin_cpu_init();
    const int v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2");
    const int v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                   __builtin_cpu_supports("avx512cd");
    if (!strcmp(variant, "avx2")) return v3;
    if (!strcmp(variant, "avx512")) return v4;
    if (!strcmp(variant, "avx512bf16")) return v4 && __builtin_cpu_supports("avx512bf16");
#endif
    return 0;
}

void softmargin_f16_from_f32(const float *in, _Float16 *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = f32_to_f16(in[i]);
}
void softmargin_f16_to_f32(const _Float16 *in, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = f16_to_f32(in[i]);
}

/* An error: the message (naming the argument) to the caller's buffer, the status returned. */
static int reject(int status, char *message, int64_t size, const char *text) {
    if (message && size > 0) snprintf(message, (size_t)size, "%s", text);
    return status;
}
#define REJECT(STATUS, TEXT) return reject(STATUS, message, message_size, TEXT)

/* n * m * size fits in an int64 and in the address space (n, m >= 0). */
static int fits(int64_t n, int64_t m, int64_t size) {
    if (n == 0 || m == 0) return 1;
    const int64_t limit = (int64_t)(SIZE_MAX / 2 < INT64_MAX ? SIZE_MAX / 2 : INT64_MAX);
    return n <= limit / m && n * m <= limit / size;
}

int softmargin_count_rows(const uint8_t *mask, int64_t N, int64_t C, int32_t *out, int nthreads) {
    if (N < 0 || C < 0 || !fits(N, C, 1)) return SM_ERR_SIZE;
    if (N > 0 && (!out || (C > 0 && !mask))) return SM_ERR_NULL;
    count_rows(mask, N, C, out, nthreads);
    return SM_OK;
}

static int fused(const softmargin_args *args, char *message, int64_t message_size);

/* The entry points run in IEEE mode on the calling thread too (its FTZ/DAZ, if any, given back): scalar_math.h. */
int softmargin_fused(const softmargin_args *args, char *message, int64_t message_size) {
    const sm_fpmode mode = sm_fp_enter();
    const int status = fused(args, message, message_size);
    sm_fp_leave(mode);
    return status;
}

static int fused(const softmargin_args *args, char *message, int64_t message_size) {
    if (!args) REJECT(SM_ERR_NULL, "args is NULL");
    const softmargin_args *s = args;
    const int64_t N = s->num_rows, C = s->num_classes;
    if (s->xtype < SM_F32 || s->xtype > SM_BF16) REJECT(SM_ERR_DTYPE, "xtype is not a known input dtype code");
    const int half_input = s->xtype == SM_F16 || s->xtype == SM_BF16;
    if (s->ytype != s->xtype && s->ytype != SM_U8 && !(s->ytype == SM_F32 && half_input))
        REJECT(SM_ERR_DTYPE, "ytype is neither xtype nor uint8 (nor float32, which a float16/bfloat16 xtype takes)");
    if (N < 0 || C < 0) REJECT(SM_ERR_SIZE, "num_rows or num_classes is negative");
    if (s->weight_row_step < 0 || s->pos_weight_row_step < 0 || s->mask_row_step < 0)
        REJECT(SM_ERR_SIZE, "a row step is negative");
    const int64_t xsize = ELEMENT_SIZE[s->xtype], ysize = ELEMENT_SIZE[s->ytype];
    if (!fits(N, C, 8) || !fits(N, s->weight_row_step, 8) || !fits(N, s->pos_weight_row_step, 8) ||
        !fits(N, s->mask_row_step, 1))
        REJECT(SM_ERR_SIZE, "num_rows * num_classes (or a row step) overflows");
    if (s->options != 0 && s->options != 1) REJECT(SM_ERR_ARGUMENT, "options is neither 0 nor 1");
    if (N == 0) return SM_OK;
    if (!s->out) REJECT(SM_ERR_NULL, "out is NULL");
    if (C > 0) {
        if (!s->x) REJECT(SM_ERR_NULL, "x is NULL");
        if (!s->weight) REJECT(SM_ERR_NULL, "weight is NULL");
        if (!s->y && !s->sparse_indptr) REJECT(SM_ERR_NULL, "y and sparse_indptr are both NULL");
        if (s->options && (!s->pos_weight || !s->mask))
            REJECT(SM_ERR_NULL, "pos_weight or mask is NULL (with options they are rows of ones at least)");
    }
    if (!s->y && s->sparse_indptr) {
        const int64_t *indptr = s->sparse_indptr;
        if (indptr[0] < 0) REJECT(SM_ERR_ARGUMENT, "sparse_indptr[0] is negative");
        for (int64_t r = 0; r < N; r++)
            if (indptr[r + 1] < indptr[r]) REJECT(SM_ERR_ARGUMENT, "sparse_indptr is not non-decreasing");
        if (indptr[N] > indptr[0] && !s->sparse_indices) REJECT(SM_ERR_NULL, "sparse_indices is NULL");
    }
    int nthreads = useful_threads(s->num_threads, N, C);
    const int options = s->options;
    void *g = s->grad;
    rowargs base = {s->x, s->y, s->weight, options ? s->pos_weight : 0, options ? s->mask : 0, C, s->scale, g, 0,
                    s->label_smoothing, s->gamma_pos, s->gamma_neg, s->clip, s->sparse_indices, s->sparse_values,
                    0, 0, 0};
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
    const int kind = !options ? 0 : (s->gamma_pos != 0 || s->gamma_neg != 0 || s->clip != 0) ? 2 : 1;
    for (int t = 0; t < nthreads; t++) {
        job j = {ROW_FNS[s->xtype][TARGET_KIND(s)][kind], xsize, ysize, s->xtype == SM_F64 ? 8 : 4,
                 s->weight_row_step, s->pos_weight_row_step, s->mask_row_step, N * t / nthreads,
                 N * (t + 1) / nthreads, base, s->row_scale, s->out, &bad[t], s->y ? 0 : s->sparse_indptr,
                 PACKED(s->xtype, TARGET_KIND(s), kind, s, N * (t + 1) / nthreads - N * t / nthreads)};
        jobs[t] = j;
    }
    run_jobs(jobs, nthreads);
    for (int t = 0; t < nthreads; t++)
        if (bad[t]) return SM_TARGET_OUT_OF_RANGE;
    return SM_OK;
}

/* A weight row's values are finite and >= 0 (NaN fails both tests). */
static int weights_ok(const void *weight, int xtype, int64_t C) {
    if (xtype == SM_F64) {
        const double *w = weight;
        for (int64_t c = 0; c < C; c++)
            if (!(w[c] >= 0 && w[c] <= DBL_MAX)) return 0;
    } else {
        const float *w = weight;
        for (int64_t c = 0; c < C; c++)
            if (!(w[c] >= 0 && w[c] <= FLT_MAX)) return 0;
    }
    return 1;
}

#define SMALL 256 /* rows (and classes) whose buffers live on the stack */

/* A reduced loss written in result_type; torch converts float64 to float16/bfloat16 through float32, as here. */
static void write_result(void *result, int32_t result_type, int64_t i, double total) {
    switch (result_type) {
    case SM_F32: ((float *)result)[i] = (float)total; break;
    case SM_F64: ((double *)result)[i] = total; break;
    case SM_F16: ((_Float16 *)result)[i] = f32_to_f16((float)total); break;
    default: ((uint16_t *)result)[i] = f32_to_bf16((float)total); break;
    }
}

static int reduced(const softmargin_args *args, int32_t weight_type, int32_t per_sample_type, int32_t result_type,
                   int32_t reduction, int32_t check, void *result, char *message, int64_t message_size);

int softmargin_reduced(const softmargin_args *args, int32_t weight_type, int32_t per_sample_type, int32_t result_type,
                       int32_t reduction, int32_t check, void *result, char *message, int64_t message_size) {
    const sm_fpmode mode = sm_fp_enter();
    const int status =
        reduced(args, weight_type, per_sample_type, result_type, reduction, check, result, message, message_size);
    sm_fp_leave(mode);
    return status;
}

static int reduced(const softmargin_args *args, int32_t weight_type, int32_t per_sample_type, int32_t result_type,
                   int32_t reduction, int32_t check, void *result, char *message, int64_t message_size) {
    if (!args) REJECT(SM_ERR_NULL, "args is NULL");
    if (args->out) REJECT(SM_ERR_ARGUMENT, "out is not NULL (the row sums live in the call's own buffer)");
    if (args->options) REJECT(SM_ERR_ARGUMENT, "options is not 0 (the reduced call is the plain loss)");
    if (args->weight_row_step) REJECT(SM_ERR_ARGUMENT, "weight_row_step is not 0 (one weight row)");
    if (args->xtype < SM_F32 || args->xtype > SM_BF16) REJECT(SM_ERR_DTYPE, "xtype is not a known input dtype code");
    if (per_sample_type != (args->xtype == SM_F64 ? SM_F64 : SM_F32) && per_sample_type != SM_F64)
        REJECT(SM_ERR_DTYPE, "per_sample_type is neither float32 (for a float32/16 input) nor float64");
    if (result_type < SM_F32 || result_type > SM_BF16) REJECT(SM_ERR_DTYPE, "result_type is not a float dtype code");
    if (reduction < 0 || reduction > 2) REJECT(SM_ERR_ARGUMENT, "reduction is none of 0 (none), 1 (mean), 2 (sum)");
    if (!result) REJECT(SM_ERR_NULL, "result is NULL");
    const int64_t N = args->num_rows, C = args->num_classes;
    if (N <= 0 || C <= 0) REJECT(SM_ERR_SIZE, "num_rows or num_classes is not positive");
    if (!fits(N, C, 8)) REJECT(SM_ERR_SIZE, "num_rows * num_classes overflows");
    if (!args->x || !args->y) REJECT(SM_ERR_NULL, "x or y is NULL");
    const int32_t kernel_wtype = args->xtype == SM_F64 ? SM_F64 : SM_F32;
    const int half_weight = args->weight && weight_type == args->xtype && kernel_wtype != args->xtype;
    if (args->weight && weight_type != kernel_wtype && !half_weight)
        REJECT(SM_ERR_DTYPE, "weight_type is neither the kernel's weight type (float64 for a float64 input, else "
                             "float32) nor a float16/bfloat16 input's own dtype");
    if (check && args->xtype == SM_F64) { /* float64's row functions do not look at the target */
        if (args->ytype == SM_F64) {
            const double *y = args->y;
            for (int64_t i = 0; i < N * C; i++)
                if (!(y[i] >= 0 && y[i] <= 1)) return SM_TARGET_OUT_OF_RANGE;
        } else {
            const uint8_t *y = args->y;
            uint8_t largest = 0;
            for (int64_t i = 0; i < N * C; i++) largest = y[i] > largest ? y[i] : largest;
            if (largest > 1) return SM_TARGET_OUT_OF_RANGE;
        }
    }
    double small_rows[SMALL], small_ones[SMALL];
    const int64_t wsize = args->xtype == SM_F64 ? 8 : 4;
    /* ones: the weight row the kernel reads when it is not the caller's own (no weight: ones; a float16/bfloat16
       weight: converted to float32 here, exactly, as weight.to(torch.float32) would) */
    const int own_row = args->weight && !half_weight;
    double *rows = N <= SMALL ? small_rows : malloc((size_t)N * sizeof(double));
    void *ones = own_row || C * wsize <= (int64_t)sizeof small_ones ? small_ones : malloc((size_t)(C * wsize));
    if (!rows || !ones) {
        if (rows != small_rows) free(rows);
        if (ones != small_ones) free(ones);
        REJECT(SM_ERR_SIZE, "out of memory for the row sums");
    }
    softmargin_args s = *args;
    if (half_weight) {
        float *w = ones;
        if (weight_type == SM_BF16)
            for (int64_t c = 0; c < C; c++) w[c] = bf16_to_f32(((const uint16_t *)args->weight)[c]);
        else
            for (int64_t c = 0; c < C; c++) w[c] = f16_to_f32(((const _Float16 *)args->weight)[c]);
        s.weight = ones;
    }
    if (check && s.weight && !weights_ok(s.weight, s.xtype, C)) {
        if (rows != small_rows) free(rows);
        if (ones != small_ones) free(ones);
        return SM_WEIGHT_OUT_OF_RANGE;
    }
    if (!s.weight) {
        for (int64_t c = 0; c < C; c++) {
            if (s.xtype == SM_F64) ((double *)ones)[c] = 1.0;
            else ((float *)ones)[c] = 1.0f;
        }
        s.weight = ones;
    }
    s.out = rows;
    int status = softmargin_fused(&s, message, message_size);
    if (status == SM_TARGET_OUT_OF_RANGE && !check) status = SM_OK; /* computed all the same; not asked to look */
    if (status == SM_OK) {
        double total = 0;
        for (int64_t r = 0; r < N; r++) { /* in order: as reduce()'s cumsum */
            const double loss = per_sample_type == SM_F32 ? (double)(float)(rows[r] / (double)C) : rows[r] / (double)C;
            if (reduction == 0) write_result(result, result_type, r, loss); /* each sample's, as per_sample.to() */
            total += loss;
        }
        if (reduction == 1) total = total / (double)N;
        if (reduction) write_result(result, result_type, 0, total);
    }
    if (rows != small_rows) free(rows);
    if (ones != small_ones) free(ones);
    return status;
}

static int reduced_options(const softmargin_args *args, int32_t per_sample_type, int32_t result_type,
                           int32_t reduction, int32_t check, void *result, double *counted, char *message,
                           int64_t message_size);

int softmargin_reduced_options(const softmargin_args *args, int32_t per_sample_type, int32_t result_type,
                               int32_t reduction, int32_t check, void *result, double *counted, char *message,
                               int64_t message_size) {
    const sm_fpmode mode = sm_fp_enter();
    const int status = reduced_options(args, per_sample_type, result_type, reduction, check, result, counted,
                                       message, message_size);
    sm_fp_leave(mode);
    return status;
}

/* A weight row's values are finite and > 0 (pos_weight's range). */
static int positive_ok(const void *weight, int xtype, int64_t C) {
    if (xtype == SM_F64) {
        const double *w = weight;
        for (int64_t c = 0; c < C; c++)
            if (!(w[c] > 0 && w[c] <= DBL_MAX)) return 0;
    } else {
        const float *w = weight;
        for (int64_t c = 0; c < C; c++)
            if (!(w[c] > 0 && w[c] <= FLT_MAX)) return 0;
    }
    return 1;
}

static int reduced_options(const softmargin_args *args, int32_t per_sample_type, int32_t result_type,
                           int32_t reduction, int32_t check, void *result, double *counted, char *message,
                           int64_t message_size) {
    if (!args) REJECT(SM_ERR_NULL, "args is NULL");
    if (args->out) REJECT(SM_ERR_ARGUMENT, "out is not NULL (the row sums live in the call's own buffer)");
    if (args->row_scale) REJECT(SM_ERR_ARGUMENT, "row_scale is not NULL (the call sets each row's scale)");
    if (args->options != 1) REJECT(SM_ERR_ARGUMENT, "options is not 1 (the plain loss is softmargin_reduced's)");
    if (args->sparse_indptr || !args->y) REJECT(SM_ERR_ARGUMENT, "y is NULL or the target sparse (a dense y only)");
    if (args->weight_row_step || args->pos_weight_row_step)
        REJECT(SM_ERR_ARGUMENT, "weight_row_step or pos_weight_row_step is not 0 (one row each)");
    if (args->xtype < SM_F32 || args->xtype > SM_BF16) REJECT(SM_ERR_DTYPE, "xtype is not a known input dtype code");
    if (per_sample_type != (args->xtype == SM_F64 ? SM_F64 : SM_F32) && per_sample_type != SM_F64)
        REJECT(SM_ERR_DTYPE, "per_sample_type is neither float32 (for a float32/16 input) nor float64");
    if (result_type < SM_F32 || result_type > SM_BF16) REJECT(SM_ERR_DTYPE, "result_type is not a float dtype code");
    if (reduction < 0 || reduction > 2) REJECT(SM_ERR_ARGUMENT, "reduction is none of 0 (none), 1 (mean), 2 (sum)");
    if (!result || !counted) REJECT(SM_ERR_NULL, "result or counted is NULL");
    const int64_t N = args->num_rows, C = args->num_classes;
    if (N <= 0 || C <= 0) REJECT(SM_ERR_SIZE, "num_rows or num_classes is not positive");
    if (!fits(N, C, 8)) REJECT(SM_ERR_SIZE, "num_rows * num_classes overflows");
    if (args->mask_row_step != 0 && args->mask_row_step != C)
        REJECT(SM_ERR_ARGUMENT, "mask_row_step is neither 0 (one row) nor num_classes (a row per sample)");
    if (!args->x) REJECT(SM_ERR_NULL, "x is NULL");
    const int64_t wsize = args->xtype == SM_F64 ? 8 : 4; /* weights in the kernel's type (the caller converts) */
    if (check && ((args->weight && !weights_ok(args->weight, args->xtype, C)) ||
                  (args->pos_weight && !positive_ok(args->pos_weight, args->xtype, C))))
        return SM_WEIGHT_OUT_OF_RANGE;
    const int per_row_mask = args->mask && args->mask_row_step == C;
    double small_rows[SMALL], small_scales[SMALL];
    int32_t small_counts[SMALL];
    const int small = N <= SMALL || !per_row_mask;
    double *rows = N <= SMALL ? small_rows : malloc((size_t)N * sizeof(double));
    double *scales = small ? small_scales : malloc((size_t)N * sizeof(double));
    int32_t *counts = small ? small_counts : malloc((size_t)N * sizeof(int32_t));
    /* rows of ones for what the caller has none of: the weight and pos_weight (kernel type), the mask (bytes) */
    unsigned char *ones = malloc((size_t)(2 * C * wsize + C));
    if (!rows || !scales || !counts || !ones) {
        if (rows != small_rows) free(rows);
        if (scales != small_scales) free(scales);
        if (counts != small_counts) free(counts);
        free(ones);
        REJECT(SM_ERR_SIZE, "out of memory for the row sums");
    }
    unsigned char *ones_mask = ones + 2 * C * wsize;
    for (int64_t c = 0; c < C; c++) {
        if (args->xtype == SM_F64) ((double *)ones)[c] = ((double *)ones)[C + c] = 1.0;
        else ((float *)ones)[c] = ((float *)ones)[C + c] = 1.0f;
        ones_mask[c] = 1;
    }
    softmargin_args s = *args;
    if (!s.weight) s.weight = ones;
    if (!s.pos_weight) s.pos_weight = ones + C * wsize;
    if (!s.mask) {
        s.mask = ones_mask;
        s.mask_row_step = 0;
    }
    /* each row's divisor and gradient scale, as _chunks.row_bookkeeping (reduction "none"): without a mask C and
       1 / C; with one, its observed labels and 1 / their count, or 0 for a row with none */
    double count = (double)C, rows_counted = (double)N;
    if (args->mask && !per_row_mask) {
        int64_t k = 0;
        for (int64_t c = 0; c < C; c++) k += args->mask[c] != 0;
        count = (double)k;
        rows_counted = k ? (double)N : 0.0;
    }
    if (per_row_mask) {
        count_rows(args->mask, N, C, counts, s.num_threads);
        rows_counted = 0;
        for (int64_t r = 0; r < N; r++) {
            scales[r] = counts[r] > 0 ? 1.0 / (double)counts[r] : 0.0;
            rows_counted += counts[r] > 0;
        }
        s.row_scale = scales;
    } else {
        s.scale = count ? 1.0 / count : 0.0;
    }
    s.out = rows;
    int status = softmargin_fused(&s, message, message_size);
    if (status == SM_TARGET_OUT_OF_RANGE && !check) status = SM_OK; /* computed all the same; not asked to look */
    if (status == SM_OK && args->pos_weight && args->xtype != SM_F64) {
        /* pw * softplus(-x) formed in float32 may overflow where the row's mean does not: the general path
           redoes such rows in float64 (_chunks.redo_overflowed_rows); leave them to it */
        for (int64_t r = 0; r < N; r++)
            if (isinf(rows[r])) status = SM_DECLINED;
    }
    if (status == SM_OK) {
        double total = 0;
        for (int64_t r = 0; r < N; r++) { /* in order: as reduce()'s cumsum */
            const double k = per_row_mask ? (double)counts[r] : count; /* the row's divisor */
            const int observed = k > 0;
            double loss = observed || !args->mask ? rows[r] / k : 0.0;
            if (per_sample_type == SM_F32) loss = (double)(float)loss;
            if (reduction == 0) write_result(result, result_type, r, loss); /* each sample's, as per_sample.to() */
            total += loss;
        }
        if (reduction == 1) total = total / (args->mask ? (rows_counted > 1 ? rows_counted : 1.0) : (double)N);
        if (reduction) write_result(result, result_type, 0, total);
        *counted = args->mask ? rows_counted : (double)N;
    }
    if (rows != small_rows) free(rows);
    if (scales != small_scales) free(scales);
    if (counts != small_counts) free(counts);
    free(ones);
    return status;
}

/* grad (n elements of T) times SCALAR in place, computed as LOAD(g) * s and stored by STORE: float32/float64 as they
   are (ID), float16/bfloat16 as torch multiplies two such tensors: in float32, rounded once. */
#define SCALE_LOOP(T, SCALAR, LOAD, STORE)                                                                     \
    do {                                                                                                       \
        const __typeof__(SCALAR) s = (SCALAR);                                                                 \
        T *g = grad;                                                                                           \
        _Pragma("omp parallel num_threads(nthreads)") {                                                        \
            const sm_fpmode mode = sm_fp_enter(); /* workers too: scalar_math.h */                             \
            _Pragma("omp for simd schedule(static)")                                                           \
            for (int64_t i = 0; i < n; i++) g[i] = STORE(LOAD(g[i]) * s);                                      \
            sm_fp_leave(mode);                                                                                 \
        }                                                                                                      \
    } while (0)

int softmargin_scale(void *grad, int32_t dtype, int64_t n, const void *factor, int32_t factor_type, double divisor,
                     int32_t num_threads) {
    if (n < 0) return SM_ERR_SIZE;
    if (dtype < SM_F32 || dtype > SM_BF16 || factor_type < SM_F32 || factor_type > SM_BF16) return SM_ERR_DTYPE;
    if (!factor || (n > 0 && !grad)) return SM_ERR_NULL;
    /* IEEE mode from here on (scalar_math.h): the factor's conversion too, which under DAZ read a subnormal incoming
       gradient (a float32 1e-39, a float16 5e-6) as 0, and the whole gradient came back 0 */
    const sm_fpmode mode = sm_fp_enter();
    double f;
    switch (factor_type) {
    case SM_F32: f = *(const float *)factor; break;
    case SM_F64: f = *(const double *)factor; break;
    case SM_F16: f = f16_to_f32(*(const _Float16 *)factor); break;
    default: f = bf16_to_f32(*(const uint16_t *)factor); break;
    }
    const int wanted = n < ((int64_t)1 << 18) || num_threads < 1 ? 1 : num_threads > MAX_THREADS ? MAX_THREADS : num_threads;
    const int nthreads = omp_threads(wanted);
    /* the incoming gradient over the batch size, in the per-sample losses' dtype (float64 for float64, else
       float32), then in the gradient's: the operator's path (input_grads) */
    const float s32 = (float)(f / divisor);
    switch (dtype) {
    case SM_F32: SCALE_LOOP(float, s32, ID, ID); break;
    case SM_F64: SCALE_LOOP(double, f / divisor, ID, ID); break;
    case SM_F16: SCALE_LOOP(_Float16, f16_to_f32(f32_to_f16(s32)), f16_to_f32, f32_to_f16); break;
    default: SCALE_LOOP(uint16_t, bf16_to_f32(f32_to_bf16(s32)), bf16_to_f32, f32_to_bf16); break;
    }
    (void)nthreads;
    sm_fp_leave(mode);
    return SM_OK;
}
