/* Rows to threads: each thread takes a contiguous range of rows and sums every row alone, in a fixed order, so the
 * results are bitwise the same for any thread count.
 *
 * OpenMP where the build has it: loaded beside torch, this is torch's own libgomp (the same soname), so the kernel
 * runs on the pool torch's operators just used instead of fighting its spinning workers for cores. Without OpenMP,
 * and in a forked child (below), POSIX threads started per call. */
#ifndef SOFTMARGIN_THREADS_H
#define SOFTMARGIN_THREADS_H
#include <pthread.h>

#include "rows.h"

#define MAX_THREADS 256
#define MIN_ELEMENTS_PER_THREAD (1 << 15) /* below this a thread costs more than it saves */

typedef struct job {
    row_fn fn;
    int64_t xsize, ysize, wsize, wrowstep, pwrowstep, maskrowstep, row0, row1;
    rowargs base; /* row 0's pointers; the scalars */
    const double *row_scale;
    double *out;
    int *bad;
    const int64_t *sp_indptr; /* sparse targets: N + 1 offsets into base.sp_idx / base.sp_val, or NULL */
    void (*packed)(const struct job *); /* NULL, or all the rows at once (short rows: kernel.c) */
} job;

/* Row r's arguments (the row function's input) into *a. (Filled in place: returned by value, the struct was
   copied once more per row, and C = 17 rows took 100 ns instead of 83.) */
static inline void row_args(rowargs *a, const job *j, int64_t r, void *scratch) {
    *a = j->base;
    a->scratch = scratch;
    a->bad = j->bad;
    a->x = (const char *)a->x + r * a->C * j->xsize;
    if (a->y) a->y = (const char *)a->y + r * a->C * j->ysize;
    a->w = (const char *)a->w + r * j->wrowstep * j->wsize;
    if (a->pw) a->pw = (const char *)a->pw + r * j->pwrowstep * j->wsize;
    if (a->mask) a->mask += r * j->maskrowstep;
    if (a->g) a->g = (char *)a->g + r * a->C * j->xsize;
    if (j->row_scale) a->scale = j->row_scale[r];
    if (j->sp_indptr) {
        a->sparse = 1;
        a->sp_idx = j->base.sp_idx ? j->base.sp_idx + j->sp_indptr[r] : 0;
        if (a->sp_val) a->sp_val = (const char *)a->sp_val + j->sp_indptr[r] * j->ysize;
        a->sp_n = j->sp_indptr[r + 1] - j->sp_indptr[r];
    }
}

static void run_rows(const job *j) {
    const sm_fpmode mode = sm_fp_enter(); /* a worker may hold another thread's FTZ/DAZ: scalar_math.h */
    if (j->packed) {
        j->packed(j);
    } else {
        double scratch[BLOCK]; /* large enough for BLOCK elements of any type */
        for (int64_t r = j->row0; r < j->row1; r++) {
            rowargs a;
            row_args(&a, j, r, scratch);
            j->out[r] = j->fn(&a);
        }
    }
    sm_fp_leave(mode);
}

/* The number of threads worth starting for N rows of C elements, at most `requested`. */
static int useful_threads(int requested, int64_t N, int64_t C) {
    int nthreads = requested < 1 ? 1 : requested > MAX_THREADS ? MAX_THREADS : requested;
    const int64_t useful = N * C / MIN_ELEMENTS_PER_THREAD;
    if (useful < nthreads) nthreads = useful < 1 ? 1 : (int)useful;
    if (nthreads > N) nthreads = N < 1 ? 1 : (int)N;
    return nthreads;
}

/* ---- fork ----
 * GNU libgomp does not survive fork(): a child forked from a thread that ran a parallel region (ours or torch's)
 * inherits that thread's pool, whose workers do not exist in the child, and its next parallel region of more than
 * one thread waits for them forever (measured: NumPy's multiprocessing.Pool and os.fork() children hung in
 * softmargin_fused; torch's own operators hang there too). A team of one thread never touches the pool, which is why
 * torch's DataLoader workers, set to one thread, run. A forked child therefore runs the rows on POSIX threads started
 * per call (the same rows to the same jobs: bitwise the same results), and count_rows and softmargin_scale on the
 * calling thread. */
static int sm_forked;
static void sm_fork_child(void) { sm_forked = 1; }
__attribute__((constructor)) static void sm_watch_fork(void) { pthread_atfork(0, 0, sm_fork_child); }

/* Threads an OpenMP region may have here: 1 in a forked child. */
static inline int omp_threads(int nthreads) { return sm_forked ? 1 : nthreads; }

static void *run_thread(void *arg) {
    run_rows((const job *)arg);
    return 0;
}

/* Run jobs[0 .. nthreads - 1], one per thread. */
static void run_jobs(job *jobs, int nthreads) {
    if (nthreads <= 1) { /* no parallel region to enter: small calls notice its cost (about a microsecond) */
        run_rows(&jobs[0]);
        return;
    }
#ifdef _OPENMP
    if (!sm_forked) {
#pragma omp parallel for num_threads(nthreads) schedule(static, 1)
        for (int t = 0; t < nthreads; t++) run_rows(&jobs[t]);
        return;
    }
#endif
    pthread_t threads[MAX_THREADS];
    int started[MAX_THREADS];
    for (int t = 1; t < nthreads; t++) started[t] = pthread_create(&threads[t], 0, run_thread, &jobs[t]) == 0;
    run_rows(&jobs[0]);
    for (int t = 1; t < nthreads; t++) {
        if (started[t]) pthread_join(threads[t], 0);
        else run_rows(&jobs[t]); /* no thread to be had: do its rows here */
    }
}

/* Each row's nonzero bytes of a contiguous (N, C) uint8 mask: the per-row divisors of a masked loss. */
static void count_rows(const uint8_t *mask, int64_t N, int64_t C, int32_t *out, int nthreads) {
    if (nthreads < 1 || N * C < ((int64_t)1 << 18)) nthreads = 1;
    nthreads = omp_threads(nthreads);
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

#endif
