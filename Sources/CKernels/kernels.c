// See include/saliency_kernels.h. Every variant performs the same IEEE operations in the same
// order; contraction into FMA is disabled so that no variant rounds differently.
#pragma clang fp contract(off)

#include "saliency_kernels.h"
#include <stdatomic.h>
#include <stddef.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SALIENCY_X86 1
#endif

// MARK: - Scalar (the reference; also the tail of the vector variants)

static inline int scan_lane(const saliency_scan_columns *c, const float *row, int64_t j, int64_t *peaks) {
    float s = row[j];
    int isExt = s > c->ext[j];
    int isPeak = s > c->thr[j];
    float d = isExt ? 0.0f : s - c->shift[j];
    c->bsum[j] = c->bsum[j] + d;
    c->bsumsq[j] = c->bsumsq[j] + d * d;
    uint32_t since = c->since[j] + (uint32_t)isPeak;
    c->since[j] = since;
    *peaks += isPeak;
    return isExt | (isPeak & (((since & c->strideMask) == 0) | (since == c->dueAt)));
}

static int64_t scan_tail(const saliency_scan_columns *c, const float *row, int64_t from,
                         int32_t *eventBase, uint8_t *eventMask, int64_t groups, int64_t *peaks) {
    for (int64_t base = from; base < c->count; base += 8) {
        unsigned mask = 0;
        for (int64_t l = 0; l < 8 && base + l < c->count; l++)
            mask |= (unsigned)scan_lane(c, row, base + l, peaks) << l;
        eventBase[groups] = (int32_t)base;
        eventMask[groups] = (uint8_t)mask;
        groups += mask != 0;
    }
    return groups;
}

static int64_t scan_generic(const saliency_scan_columns *c, const float *row,
                            int32_t *eventBase, uint8_t *eventMask, int64_t *peaks) {
    *peaks = 0;
    return scan_tail(c, row, 0, eventBase, eventMask, 0, peaks);
}

static int check_generic(const void *row, int64_t count) {
    const unsigned char *p = (const unsigned char *)row;
    int bad = 0;
    for (int64_t i = 0; i < count; i++) {
        float v;
        __builtin_memcpy(&v, p + 4 * i, 4);   // any alignment
        bad |= !(v >= 0.0f && v < __builtin_inff());
    }
    return bad;
}

static int copy_checked_generic(float *dst, const void *src, int64_t count) {
    const unsigned char *p = (const unsigned char *)src;
    for (int64_t i = 0; i < count; i++) __builtin_memcpy(dst + i, p + 4 * i, 4);
    return check_generic(dst, count);
}

static inline void merge_one(const saliency_merge_columns *c, int64_t j) {
    double nb = c->rowsInBlock - (double)c->blockExtremes[j];
    if (nb > 0) {
        double s1 = (double)c->bsum[j], s2 = (double)c->bsumsq[j];
        double meanB = (double)c->shift[j] + s1 / nb;
        double m2B = s2 - s1 * s1 / nb;
        if (!(m2B > 0)) m2B = 0;
        double na = c->count_[j];
        double total = na + nb;
        double delta = meanB - c->mean[j];
        c->mean[j] = c->mean[j] + delta * nb / total;
        c->m2[j] = c->m2[j] + (m2B + delta * delta * na * nb / total);
        c->count_[j] = total;
    }
    c->shift[j] = (float)c->mean[j];
    c->bsum[j] = 0;
    c->bsumsq[j] = 0;
    c->blockExtremes[j] = 0;
}

static void merge_generic(const saliency_merge_columns *c) {
    for (int64_t j = 0; j < c->count; j++) merge_one(c, j);
}

#ifdef SALIENCY_X86
// MARK: - SSE2 (baseline x86-64): 8 filters as two 4-lane halves

static inline unsigned sse_half(const saliency_scan_columns *c, const float *row, int64_t i, __m128i *peakAcc) {
    __m128 s = _mm_loadu_ps(row + i);
    __m128 isExt = _mm_cmpgt_ps(s, _mm_loadu_ps(c->ext + i));
    __m128 isPeak = _mm_cmpgt_ps(s, _mm_loadu_ps(c->thr + i));
    __m128 d = _mm_andnot_ps(isExt, _mm_sub_ps(s, _mm_loadu_ps(c->shift + i)));
    _mm_storeu_ps(c->bsum + i, _mm_add_ps(_mm_loadu_ps(c->bsum + i), d));
    _mm_storeu_ps(c->bsumsq + i, _mm_add_ps(_mm_loadu_ps(c->bsumsq + i), _mm_mul_ps(d, d)));
    __m128i p = _mm_castps_si128(isPeak);
    *peakAcc = _mm_sub_epi32(*peakAcc, p);
    __m128i since = _mm_sub_epi32(_mm_loadu_si128((const __m128i *)(c->since + i)), p);
    _mm_storeu_si128((__m128i *)(c->since + i), since);
    __m128i hit = _mm_or_si128(_mm_cmpeq_epi32(_mm_and_si128(since, _mm_set1_epi32((int)c->strideMask)), _mm_setzero_si128()),
                               _mm_cmpeq_epi32(since, _mm_set1_epi32((int)c->dueAt)));
    return (unsigned)_mm_movemask_ps(_mm_or_ps(_mm_and_ps(_mm_castsi128_ps(hit), isPeak), isExt));
}

static int64_t scan_sse2(const saliency_scan_columns *c, const float *row,
                         int32_t *eventBase, uint8_t *eventMask, int64_t *peaks) {
    int64_t n = c->count & ~(int64_t)7, groups = 0;
    __m128i acc = _mm_setzero_si128();
    for (int64_t i = 0; i < n; i += 8) {
        unsigned mask = sse_half(c, row, i, &acc) | (sse_half(c, row, i + 4, &acc) << 4);
        eventBase[groups] = (int32_t)i;
        eventMask[groups] = (uint8_t)mask;
        groups += mask != 0;
    }
    int32_t lanes[4];
    _mm_storeu_si128((__m128i *)lanes, acc);
    *peaks = (int64_t)(uint32_t)lanes[0] + (uint32_t)lanes[1] + (uint32_t)lanes[2] + (uint32_t)lanes[3];
    return scan_tail(c, row, n, eventBase, eventMask, groups, peaks);
}

static int check_sse2(const void *bytes, int64_t count) {
    const float *row = (const float *)bytes;
    int64_t n = count & ~(int64_t)3;
    const __m128 zero = _mm_setzero_ps(), inf = _mm_set1_ps(__builtin_inff());
    __m128 good = _mm_castsi128_ps(_mm_set1_epi32(-1));
    for (int64_t i = 0; i < n; i += 4) {
        __m128 s = _mm_loadu_ps(row + i);   // NaN fails both comparisons
        good = _mm_and_ps(good, _mm_and_ps(_mm_cmpge_ps(s, zero), _mm_cmplt_ps(s, inf)));
    }
    return (_mm_movemask_ps(good) != 0xF) | check_generic((const unsigned char *)bytes + 4 * n, count - n);
}

static int copy_checked_sse2(float *dst, const void *src, int64_t count) {
    int64_t n = count & ~(int64_t)3;
    const float *in = (const float *)src;
    const __m128 zero = _mm_setzero_ps(), inf = _mm_set1_ps(__builtin_inff());
    __m128 good = _mm_castsi128_ps(_mm_set1_epi32(-1));
    for (int64_t i = 0; i < n; i += 4) {
        __m128 s = _mm_loadu_ps(in + i);
        _mm_storeu_ps(dst + i, s);
        good = _mm_and_ps(good, _mm_and_ps(_mm_cmpge_ps(s, zero), _mm_cmplt_ps(s, inf)));
    }
    return (_mm_movemask_ps(good) != 0xF) | copy_checked_generic(dst + n, (const unsigned char *)src + 4 * n, count - n);
}

// MARK: - AVX2: 8 filters per step

__attribute__((target("avx2")))
static int copy_checked_avx2(float *dst, const void *src, int64_t count) {
    int64_t n = count & ~(int64_t)7;
    const float *in = (const float *)src;
    const __m256 zero = _mm256_setzero_ps(), inf = _mm256_set1_ps(__builtin_inff());
    __m256 good = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    for (int64_t i = 0; i < n; i += 8) {
        __m256 s = _mm256_loadu_ps(in + i);
        _mm256_storeu_ps(dst + i, s);
        good = _mm256_and_ps(good, _mm256_and_ps(_mm256_cmp_ps(s, zero, _CMP_GE_OQ), _mm256_cmp_ps(s, inf, _CMP_LT_OQ)));
    }
    return (_mm256_movemask_ps(good) != 0xFF) | copy_checked_generic(dst + n, (const unsigned char *)src + 4 * n, count - n);
}

__attribute__((target("avx2")))
static int check_avx2(const void *bytes, int64_t count) {
    const float *row = (const float *)bytes;
    int64_t n = count & ~(int64_t)7;
    const __m256 zero = _mm256_setzero_ps(), inf = _mm256_set1_ps(__builtin_inff());
    __m256 good = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    for (int64_t i = 0; i < n; i += 8) {
        __m256 s = _mm256_loadu_ps(row + i);
        good = _mm256_and_ps(good, _mm256_and_ps(_mm256_cmp_ps(s, zero, _CMP_GE_OQ), _mm256_cmp_ps(s, inf, _CMP_LT_OQ)));
    }
    return (_mm256_movemask_ps(good) != 0xFF) | check_generic((const unsigned char *)bytes + 4 * n, count - n);
}

__attribute__((target("avx2")))
static int64_t scan_avx2(const saliency_scan_columns *c, const float *row,
                         int32_t *eventBase, uint8_t *eventMask, int64_t *peaks) {
    int64_t n = c->count & ~(int64_t)7, groups = 0;
    __m256i acc = _mm256_setzero_si256();
    const __m256i strideMask = _mm256_set1_epi32((int)c->strideMask), dueAt = _mm256_set1_epi32((int)c->dueAt);
    for (int64_t i = 0; i < n; i += 8) {
        __m256 s = _mm256_loadu_ps(row + i);
        __m256 isExt = _mm256_cmp_ps(s, _mm256_loadu_ps(c->ext + i), _CMP_GT_OQ);
        __m256 isPeak = _mm256_cmp_ps(s, _mm256_loadu_ps(c->thr + i), _CMP_GT_OQ);
        __m256 d = _mm256_andnot_ps(isExt, _mm256_sub_ps(s, _mm256_loadu_ps(c->shift + i)));
        _mm256_storeu_ps(c->bsum + i, _mm256_add_ps(_mm256_loadu_ps(c->bsum + i), d));
        _mm256_storeu_ps(c->bsumsq + i, _mm256_add_ps(_mm256_loadu_ps(c->bsumsq + i), _mm256_mul_ps(d, d)));
        __m256i p = _mm256_castps_si256(isPeak);
        acc = _mm256_sub_epi32(acc, p);
        __m256i since = _mm256_sub_epi32(_mm256_loadu_si256((const __m256i *)(c->since + i)), p);
        _mm256_storeu_si256((__m256i *)(c->since + i), since);
        __m256i hit = _mm256_or_si256(_mm256_cmpeq_epi32(_mm256_and_si256(since, strideMask), _mm256_setzero_si256()),
                                      _mm256_cmpeq_epi32(since, dueAt));
        unsigned mask = (unsigned)_mm256_movemask_ps(_mm256_or_ps(_mm256_and_ps(_mm256_castsi256_ps(hit), isPeak), isExt));
        eventBase[groups] = (int32_t)i;
        eventMask[groups] = (uint8_t)mask;
        groups += mask != 0;
    }
    int32_t lanes[8];
    _mm256_storeu_si256((__m256i *)lanes, acc);
    int64_t total = 0;
    for (int l = 0; l < 8; l++) total += (uint32_t)lanes[l];
    *peaks = total;
    return scan_tail(c, row, n, eventBase, eventMask, groups, peaks);
}

__attribute__((target("avx2")))
static void merge_avx2(const saliency_merge_columns *c) {
    int64_t n = c->count & ~(int64_t)3;
    const __m256d rows = _mm256_set1_pd(c->rowsInBlock), zero = _mm256_setzero_pd();
    for (int64_t j = 0; j < n; j += 4) {
        __m128i be16 = _mm_loadl_epi64((const __m128i *)(c->blockExtremes + j));
        __m256d nb = _mm256_sub_pd(rows, _mm256_cvtepi32_pd(_mm_cvtepu16_epi32(be16)));
        __m256d s1 = _mm256_cvtps_pd(_mm_loadu_ps(c->bsum + j));
        __m256d s2 = _mm256_cvtps_pd(_mm_loadu_ps(c->bsumsq + j));
        __m256d meanB = _mm256_add_pd(_mm256_cvtps_pd(_mm_loadu_ps(c->shift + j)), _mm256_div_pd(s1, nb));
        __m256d m2B = _mm256_sub_pd(s2, _mm256_div_pd(_mm256_mul_pd(s1, s1), nb));
        m2B = _mm256_and_pd(m2B, _mm256_cmp_pd(m2B, zero, _CMP_GT_OQ));   // !(m2B > 0) -> 0
        __m256d na = _mm256_loadu_pd(c->count_ + j), mean = _mm256_loadu_pd(c->mean + j), m2 = _mm256_loadu_pd(c->m2 + j);
        __m256d total = _mm256_add_pd(na, nb);
        __m256d delta = _mm256_sub_pd(meanB, mean);
        __m256d newMean = _mm256_add_pd(mean, _mm256_div_pd(_mm256_mul_pd(delta, nb), total));
        __m256d newM2 = _mm256_add_pd(m2, _mm256_add_pd(m2B, _mm256_div_pd(_mm256_mul_pd(_mm256_mul_pd(_mm256_mul_pd(delta, delta), na), nb), total)));
        __m256d live = _mm256_cmp_pd(nb, zero, _CMP_GT_OQ);
        mean = _mm256_blendv_pd(mean, newMean, live);
        _mm256_storeu_pd(c->mean + j, mean);
        _mm256_storeu_pd(c->m2 + j, _mm256_blendv_pd(m2, newM2, live));
        _mm256_storeu_pd(c->count_ + j, _mm256_blendv_pd(na, total, live));
        _mm_storeu_ps(c->shift + j, _mm256_cvtpd_ps(mean));
        _mm_storeu_ps(c->bsum + j, _mm_setzero_ps());
        _mm_storeu_ps(c->bsumsq + j, _mm_setzero_ps());
        _mm_storel_epi64((__m128i *)(c->blockExtremes + j), _mm_setzero_si128());
    }
    for (int64_t j = n; j < c->count; j++) merge_one(c, j);
}
#endif

// MARK: - Dispatch

typedef int64_t (*scan_fn)(const saliency_scan_columns *, const float *, int32_t *, uint8_t *, int64_t *);
typedef void (*merge_fn)(const saliency_merge_columns *);
typedef int (*check_fn)(const void *, int64_t);
static _Atomic(check_fn) check_impl = NULL;
typedef int (*copy_fn)(float *, const void *, int64_t);
static _Atomic(copy_fn) copy_impl = NULL;

static _Atomic(scan_fn) scan_impl = NULL;
static _Atomic(merge_fn) merge_impl = NULL;
static _Atomic(const char *) isa_name = NULL;

static int cpu_has_avx2(void) {
#ifdef SALIENCY_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
#else
    return 0;
#endif
}

static void select_variant(int variant) {
#ifdef SALIENCY_X86
    if (variant == 0 && cpu_has_avx2()) {
        atomic_store_explicit(&scan_impl, scan_avx2, memory_order_relaxed);
        atomic_store_explicit(&merge_impl, merge_avx2, memory_order_relaxed);
        atomic_store_explicit(&check_impl, check_avx2, memory_order_relaxed);
        atomic_store_explicit(&copy_impl, copy_checked_avx2, memory_order_relaxed);
        atomic_store_explicit(&isa_name, "avx2", memory_order_relaxed);
    } else {
        atomic_store_explicit(&scan_impl, scan_sse2, memory_order_relaxed);
        atomic_store_explicit(&merge_impl, merge_generic, memory_order_relaxed);
        atomic_store_explicit(&check_impl, check_sse2, memory_order_relaxed);
        atomic_store_explicit(&copy_impl, copy_checked_sse2, memory_order_relaxed);
        atomic_store_explicit(&isa_name, "sse2", memory_order_relaxed);
    }
#else
    (void)variant;
    atomic_store_explicit(&scan_impl, scan_generic, memory_order_relaxed);
    atomic_store_explicit(&merge_impl, merge_generic, memory_order_relaxed);
    atomic_store_explicit(&check_impl, check_generic, memory_order_relaxed);
    atomic_store_explicit(&copy_impl, copy_checked_generic, memory_order_relaxed);
    atomic_store_explicit(&isa_name, "generic", memory_order_relaxed);
#endif
}

int saliency_kernels_force(int variant) {
    if (variant != 0 && variant != 1) return -1;
    select_variant(variant);
    return 0;
}

const char *saliency_kernels_isa(void) {
    if (atomic_load_explicit(&isa_name, memory_order_relaxed) == NULL) select_variant(0);
    return atomic_load_explicit(&isa_name, memory_order_relaxed);
}

int64_t saliency_scan_row(const saliency_scan_columns *c, const float *row,
                          int32_t *eventBase, uint8_t *eventMask, int64_t *peaks) {
    scan_fn f = atomic_load_explicit(&scan_impl, memory_order_relaxed);
    if (f == NULL) { select_variant(0); f = atomic_load_explicit(&scan_impl, memory_order_relaxed); }
    return f(c, row, eventBase, eventMask, peaks);
}

void saliency_merge_moments(const saliency_merge_columns *c) {
    merge_fn f = atomic_load_explicit(&merge_impl, memory_order_relaxed);
    if (f == NULL) { select_variant(0); f = atomic_load_explicit(&merge_impl, memory_order_relaxed); }
    f(c);
}

int saliency_row_has_invalid(const void *row, int64_t count) {
    check_fn f = atomic_load_explicit(&check_impl, memory_order_relaxed);
    if (f == NULL) { select_variant(0); f = atomic_load_explicit(&check_impl, memory_order_relaxed); }
    return f(row, count);
}

int saliency_copy_row_checked(float *dst, const void *src, int64_t count) {
    copy_fn f = atomic_load_explicit(&copy_impl, memory_order_relaxed);
    if (f == NULL) { select_variant(0); f = atomic_load_explicit(&copy_impl, memory_order_relaxed); }
    return f(dst, src, count);
}
