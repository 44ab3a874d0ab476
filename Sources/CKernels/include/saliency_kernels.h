// saliencyd's vector kernels for the FilterBank hot path, with run-time ISA dispatch.
//
// Why C: Swift cannot compile one function for AVX2 while the rest of the binary stays runnable
// on baseline x86-64 (no per-function target attribute, no multiversioning). These kernels are
// built twice (SSE2 and AVX2). Each variant is an immutable table of function pointers
// (`saliency_kernels_table`); a FilterBank holds the one it was given, so banks with different
// variants can run side by side in one process (there is no process-wide switch). Both variants
// perform the same IEEE operations in the same order (no FMA contraction), so results are
// bit-identical whichever runs; the Swift tests check that by running two banks side by side.
//
// The kernels own no state and know nothing of statistics beyond the arithmetic they are given:
// the meaning of every array is documented in FilterBank.swift.
#ifndef SALIENCY_KERNELS_H
#define SALIENCY_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/// Columns of a FilterBank read or written by the row scan (all `count` long).
typedef struct {
    const float *thr;      // t_j, rounded toward -inf
    const float *ext;      // z_j, rounded toward -inf (+inf: no tail model)
    const float *shift;    // moment block reference
    float *bsum;           // block sum of (s - shift) over non-extreme values
    float *bsumsq;         // block sum of (s - shift)^2
    uint32_t *since;       // peaks since the last fit
    uint32_t strideMask;   // ring sampling stride m - 1 (m a power of two)
    uint32_t dueAt;        // refit_after_peaks
    int64_t count;         // K
} saliency_scan_columns;

/// One row through the columns. For every j: extremes (s > ext) are left out of the moment
/// block; peaks (s > thr) increment since[j]; an *event* is a lane that is an extreme, or a peak
/// whose new since[j] is a multiple of the stride or equals dueAt. Events are reported in groups
/// of 8 filters: eventBase[g] = first filter of the group, eventMask[g] = bit l set for filter
/// eventBase[g] + l. Capacity needed: count / 8 + 1 groups. Returns the number of groups;
/// *peaks receives the number of values above thr (extremes included).
int64_t saliency_scan_row(const saliency_scan_columns *c, const float *row,
                          int32_t *eventBase, uint8_t *eventMask, int64_t *peaks);

/// Columns of the lower-tail scan (all `count` long; docs/statistics.md, "Two tails").
typedef struct {
    const float *thr;      // lower threshold t_j, rounded toward +inf (s < thr <=> s < t exactly)
    const float *ext;      // lower extreme threshold, rounded toward +inf; -0.0 (sign bit): "zero watch"
    uint32_t *since;       // lower peaks since the last fit
    uint32_t strideMask;   // ring sampling stride m - 1
    uint32_t dueAt;        // refit_after_peaks
    int64_t count;         // K
} saliency_lower_columns;

/// One row through the lower-tail columns. For every j, with zero = (s == 0):
/// a lower peak is s < thr and not zero (since[j] increments); an *event* is s < ext (an extreme,
/// a zero included when ext > 0), a zero when ext has its sign bit set (zero watch), or a peak
/// whose new since[j] is a multiple of the stride or equals dueAt. Events are reported like
/// saliency_scan_row's. Returns the number of groups; *peaks receives the number of lower peaks.
/// No arithmetic on the values: every variant returns the same bits.
int64_t saliency_scan_lower(const saliency_lower_columns *c, const float *row,
                            int32_t *eventBase, uint8_t *eventMask, int64_t *peaks);

/// Both passes in one loop (tails = both): exactly saliency_scan_row on `c` and
/// saliency_scan_lower on `lo`, reading each value once. Groups are reported when either tail has
/// an event: eventMask[g] holds the upper tail's lanes, lowerMask[g] the lower tail's.
/// *peaks / *lowerPeaks as the two functions report them.
int64_t saliency_scan_both(const saliency_scan_columns *c, const saliency_lower_columns *lo, const float *row,
                           int32_t *eventBase, uint8_t *eventMask, uint8_t *lowerMask, int64_t *peaks, int64_t *lowerPeaks);

/// Columns of the moment merge (Chan et al. 1979), all `count` long.
typedef struct {
    float *shift, *bsum, *bsumsq;
    uint16_t *blockExtremes;
    double *count_, *mean, *m2;   // Welford state (count, mean, M2)
    int64_t count;
    double rowsInBlock;
} saliency_merge_columns;

/// Merges each filter's block into its Welford state, re-centres shift on the new mean and
/// clears the block. Per filter, with nb = rowsInBlock - blockExtremes (skipped when nb = 0):
///   meanB = shift + s1/nb; m2B = max(0, s2 - s1*s1/nb); total = n + nb; delta = meanB - mean;
///   mean += delta*nb/total; m2 += m2B + delta*delta*n*nb/total; n = total.
void saliency_merge_moments(const saliency_merge_columns *c);

/// 1 if any of the `count` float32 values at `row` (any alignment; host byte order) is NaN, ±inf
/// or negative (-0.0 is accepted: a zero magnitude), else 0. Branch-free over the row.
int saliency_row_has_invalid(const void *row, int64_t count);

/// The Grimshaw sums of the GPD fit (EVTOnline/Grimshaw.swift), for t_i = x*y_i:
///   *sumLog = sum log(1 + t_i),   *sumRatio = sum t_i/(1 + t_i)
/// with fdlibm's log polynomial and one shared division (see `logAndReciprocal` there).
/// Double: `count` a multiple of 4; single: a multiple of 8 (callers pad with zeros, which add
/// nothing). Requires 1 + x*max(y) > 0 and normal values. The reduction tree is fixed (4 and 8
/// partial sums), so every variant returns the same bits.
void saliency_grimshaw_sums_f64(const double *y, int64_t count, double x, double *sumLog, double *sumRatio);
void saliency_grimshaw_sums_f32(const float *y, int64_t count, float x, float *sumLog, float *sumRatio);

/// The kernel variants. `BEST`: the best instruction set this CPU supports (AVX2 where present);
/// `BASELINE`: the baseline of the architecture (SSE2 on x86-64). Elsewhere both are "generic".
enum { SALIENCY_KERNELS_BEST = 0, SALIENCY_KERNELS_BASELINE = 1 };

/// One variant of every kernel above, as an immutable table (static storage, never freed).
typedef struct {
    int64_t (*scan_row)(const saliency_scan_columns *c, const float *row,
                        int32_t *eventBase, uint8_t *eventMask, int64_t *peaks);
    void (*merge_moments)(const saliency_merge_columns *c);
    int64_t (*scan_lower)(const saliency_lower_columns *c, const float *row,
                          int32_t *eventBase, uint8_t *eventMask, int64_t *peaks);
    int (*row_has_invalid)(const void *row, int64_t count);
    int64_t (*scan_both)(const saliency_scan_columns *c, const saliency_lower_columns *lo, const float *row,
                         int32_t *eventBase, uint8_t *eventMask, uint8_t *lowerMask, int64_t *peaks, int64_t *lowerPeaks);
    void (*grimshaw_sums_f64)(const double *y, int64_t count, double x, double *sumLog, double *sumRatio);
    void (*grimshaw_sums_f32)(const float *y, int64_t count, float x, float *sumLog, float *sumRatio);
    const char *isa;   // "avx2", "sse2" or "generic"
} saliency_kernels;

/// The table of `variant` (SALIENCY_KERNELS_BEST or _BASELINE), or NULL for any other value.
/// Thread-safe; the same pointer on every call.
const saliency_kernels *saliency_kernels_table(int variant);

/// The free functions above (saliency_scan_row, ..., saliency_grimshaw_sums_f32) run the BEST table.

/// The instruction set of the BEST table: "avx2" or "sse2" (x86-64), "generic" elsewhere.
const char *saliency_kernels_isa(void);

/// Allocates `bytes` of zero-filled anonymous memory (Linux: mmap, so pages are claimed only when
/// first written) and, for 2 MiB or more, asks the kernel to back them with transparent huge
/// pages (madvise MADV_HUGEPAGE; a hint only). For the FilterBank's large columns: random accesses
/// into a 26 MiB ring then miss the TLB far less. NULL on failure. Free with `saliency_free_huge`
/// and the same `bytes`.
void *saliency_alloc_huge(size_t bytes);
void saliency_free_huge(void *p, size_t bytes);

/// Pins the calling thread to the CPU it is running on (Linux); returns that CPU, or -1. For
/// single-core measurements (`saliencyctl bench`): a thread migrated between CPUs loses its
/// private caches, which on small VMs makes runs of the same benchmark scatter by ±25 %.
int saliency_pin_to_current_cpu(void);

/// Hint that the cache line holding `p` will be written soon (PREFETCHW where available).
static inline __attribute__((always_inline)) void saliency_prefetch_write(const void *p) {
    __builtin_prefetch(p, 1, 3);
}

/// Hint that the cache line holding `p` will be read soon.
static inline __attribute__((always_inline)) void saliency_prefetch_read(const void *p) {
    __builtin_prefetch(p, 0, 3);
}

#endif
