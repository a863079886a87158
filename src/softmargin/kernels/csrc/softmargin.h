/* The ABI of the fused CPU kernel library: the one place the Python loader (kernels/cpu.py) and the C code agree on.
 *
 * Python never restates this by hand: the loader checks SOFTMARGIN_ABI_VERSION (softmargin_abi_version()), builds
 * its ctypes mirror of softmargin_args from the field list and checks every field's offset and size and the
 * struct's size against what softmargin_abi_layout() reports from this header, and reads the dtype names in code
 * order from softmargin_dtype_names(). A mismatch refuses to load the library (the callers then fall back), it can
 * never reach the kernel as memory corruption.
 *
 * Change anything below, bump SOFTMARGIN_ABI_VERSION.
 */
#ifndef SOFTMARGIN_H
#define SOFTMARGIN_H

#include <stdint.h>

#define SOFTMARGIN_ABI_VERSION 7

/* Element types. The names (softmargin_dtype_names) are numpy's and torch's. */
enum softmargin_dtype { SM_F32 = 0, SM_F64 = 1, SM_F16 = 2, SM_BF16 = 3, SM_U8 = 4, SM_NUM_DTYPES = 5 };
#define SOFTMARGIN_DTYPE_NAMES "float32,float64,float16,bfloat16,uint8"

/* Results of softmargin_fused and softmargin_count_rows: >= 0 success, < 0 a rejected call (nothing written). */
enum softmargin_status {
    SM_OK = 0,
    SM_TARGET_OUT_OF_RANGE = 1, /* computed all the same; a row function saw a target outside [0, 1] or NaN */
    SM_WEIGHT_OUT_OF_RANGE = 2, /* softmargin_reduced: a weight is negative, infinite or NaN (nothing computed) */
    SM_DECLINED = 3,            /* softmargin_reduced_options: a row the general path computes otherwise (nothing
                                   reliable written: the caller runs that path) */
    SM_ERR_NULL = -1,           /* a pointer the call needs is NULL */
    SM_ERR_SIZE = -2,           /* a negative size or row step, or sizes whose product overflows */
    SM_ERR_DTYPE = -3,          /* an unknown dtype code, or an input/target pair the kernel has no loop for */
    SM_ERR_ARGUMENT = -4,       /* another inconsistent argument (options flag, sparse offsets) */
};

/* One call of the kernel. x, y and grad are contiguous (num_rows, num_classes) arrays of xtype (y: of ytype, which
 * is xtype, SM_U8, or SM_F32 for a float16/bfloat16 xtype: a soft target finer than the input, read as it is, not
 * rounded to the input's dtype first); weight and pos_weight hold the compute type (float32 for float32/float16/
 * bfloat16 inputs, float64 for float64) and mask uint8, each either one row (row step 0) or num_rows rows (row step
 * num_classes).
 *
 * Sparse targets: y NULL, sparse_indptr (num_rows + 1 offsets), sparse_indices (each row's positive columns,
 * ascending; may be NULL when there are none) and sparse_values (ytype, NULL for all ones) give each row's positives.
 * options = 0 runs the plain loss (pos_weight, mask, label_smoothing, the gammas and clip are ignored); options = 1
 * needs pos_weight and mask (rows of ones where the caller has none). out receives each row's weighted loss sum
 * (float64); the gradient (row_scale[r] or scale times d loss / d x) goes to grad when it is not NULL.
 * num_threads < 1 means 1. Every row is summed by one thread in a fixed order: results are bitwise the same for
 * any thread count. */
typedef struct softmargin_args {
    int32_t xtype, ytype;
    const void *x, *y;
    const void *weight;
    int64_t weight_row_step;
    const void *pos_weight;
    int64_t pos_weight_row_step;
    const uint8_t *mask;
    int64_t mask_row_step;
    int64_t num_rows, num_classes;
    double scale;
    const double *row_scale;
    int32_t options;
    double label_smoothing, gamma_pos, gamma_neg, clip;
    double *out;
    void *grad;
    int32_t num_threads;
    const int64_t *sparse_indptr, *sparse_indices;
    const void *sparse_values;
} softmargin_args;

/* The field names of softmargin_args in order, comma-separated; softmargin_abi_layout fills offsets[i] and sizes[i]
 * for the first n of them and returns sizeof(softmargin_args). */
#define SOFTMARGIN_ARGS_FIELDS                                                                                 \
    "xtype,ytype,x,y,weight,weight_row_step,pos_weight,pos_weight_row_step,mask,mask_row_step,num_rows,"       \
    "num_classes,scale,row_scale,options,label_smoothing,gamma_pos,gamma_neg,clip,out,grad,num_threads,"       \
    "sparse_indptr,sparse_indices,sparse_values"

int softmargin_abi_version(void);
int64_t softmargin_abi_layout(int64_t *offsets, int64_t *sizes, int64_t n);
const char *softmargin_abi_fields(void);
const char *softmargin_dtype_names(void);
/* Bit d set: the plain loss's row functions for input dtype d check the target's range as they read it (the
 * options' row functions check it in every dtype). */
int softmargin_target_checked(void);
/* Bit 0: the plain loss takes the AVX-512 loops (float32, float16, bfloat16) in this build. */
int softmargin_features(void);
/* The build's variant name ("avx512bf16", "avx512", "avx2", "baseline") and whether this CPU can run a variant (the
 * baseline library answers for all: it holds no instruction a CPU of its architecture lacks). */
const char *softmargin_variant(void);
/* A digest of the sources the library was built from (kernels/build.py's source_hash). */
const char *softmargin_source_hash(void);
int softmargin_cpu_supports(const char *variant);

/* Run the kernel; returns a softmargin_status. On an error, a message naming the argument goes to message
 * (message_size bytes, NUL-terminated; message may be NULL). */
int softmargin_fused(const softmargin_args *args, char *message, int64_t message_size);
/* The plain loss reduced over the batch, for the eager fast path (softmargin/torch/_ops.py, _PlainLoss): args as for
 * softmargin_fused (options 0, the weight one row or NULL for ones), except out, which must be NULL: the row sums
 * live in a buffer of the call's own. The gradient (scale times d loss / d x) goes to grad when it is not NULL.
 * Then, as the operator's path followed by torch's operations does (_native_plain, reduce() in _ops.py): each row's
 * loss, row sum / num_classes in float64, is rounded to per_sample_type (SM_F32, or SM_F64 for a float64 input or
 * target); the rows are summed in
 * float64 in order, first to last (reduce() sums in order with cumsum on the CPU); divided by num_rows for
 * reduction 1 (mean; 2 is sum); the result written to *result in result_type (the input's dtype; float16 and
 * bfloat16 through float32, as torch converts). Reduction 0 (none) writes each row's loss to result[r] instead
 * (num_rows values of result_type).
 * check != 0 checks the weight's values first (finite, >= 0; else SM_WEIGHT_OUT_OF_RANGE, nothing computed) and,
 * for a float64 input, the target's range (float32/float16/bfloat16 row functions check it as they read it):
 * SM_TARGET_OUT_OF_RANGE.
 * weight_type is the weight's dtype: the kernel's weight type (SM_F64 for a float64 input, else SM_F32) or, for a
 * float16/bfloat16 input, the input's own dtype, converted to float32 here (exactly, as torch's .to(float32)). */
int softmargin_reduced(const softmargin_args *args, int32_t weight_type, int32_t per_sample_type, int32_t result_type,
                       int32_t reduction, int32_t check, void *result, char *message, int64_t message_size);
/* The loss with options (options 1: pos_weight, a mask, label smoothing, asymmetric focusing) reduced over the
 * batch, for the eager fast path of such calls (softmargin/torch/_ops.py, _OptionsLoss): args as for softmargin_fused
 * with a dense y, except that out and row_scale must be NULL (the call's own buffers), the weight and pos_weight are
 * one row (row step 0) in the kernel's weight type or NULL for ones, and the mask is NULL (no mask), one row (row step
 * 0) or one per sample (row step num_classes). As the operator's path followed by torch's operations does (_native,
 * row_bookkeeping, reduce() in _ops.py): each row's loss is its weighted sum over its divisor (num_classes; with a
 * mask its observed labels, a row with none 0), rounded to per_sample_type; the rows summed in float64 in order;
 * divided for reduction 1 (mean) by num_rows (with a mask: the rows with an observed label, at least 1); written to
 * *result in result_type (reduction 0, none: each row's loss to result[r]); *counted receives the rows that count in a mean (all, or those with an observed label).
 * The gradient (each row's 1 / divisor times d loss / d x; 0 for a row with nothing observed) goes to grad when it
 * is not NULL. check != 0 checks the weight (finite, >= 0) and pos_weight (finite, > 0) first
 * (SM_WEIGHT_OUT_OF_RANGE, nothing computed) and the target's range (SM_TARGET_OUT_OF_RANGE). SM_DECLINED: with a
 * pos_weight and a float32/float16/bfloat16 input a row's sum overflowed float32 (the general path redoes it in
 * float64). */
int softmargin_reduced_options(const softmargin_args *args, int32_t per_sample_type, int32_t result_type,
                               int32_t reduction, int32_t check, void *result, double *counted, char *message,
                               int64_t message_size);
/* grad[i] *= s for i < n, s = (dtype)(per-sample type)((double)*factor / divisor): the backward of the reduced loss
 * (autograd's incoming gradient, read as factor_type, over the batch size for a mean), as the operator's path
 * computes it with torch's operations (float16/bfloat16: the product in float32, rounded once). Any float dtype. */
int softmargin_scale(void *grad, int32_t dtype, int64_t n, const void *factor, int32_t factor_type, double divisor,
                     int32_t num_threads);
/* Each row's nonzero bytes of a contiguous (num_rows, num_classes) uint8 mask, as int32 into out. */
int softmargin_count_rows(const uint8_t *mask, int64_t num_rows, int64_t num_classes, int32_t *out, int num_threads);
/* The float16 conversions the loops use, over arrays (the tests check them against NumPy's). */
void softmargin_f16_from_f32(const float *in, _Float16 *out, int64_t n);
void softmargin_f16_to_f32(const _Float16 *in, float *out, int64_t n);

#endif
