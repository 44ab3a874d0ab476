// See include/saliency_kernels.h. Every variant performs the same IEEE operations in the same
// order; contraction into FMA is disabled so that no variant rounds differently.
#pragma clang fp contract(off)
#define _GNU_SOURCE 1   // sched_getcpu, sched_setaffinity (saliency_pin_to_current_cpu)

#include "saliency_kernels.h"
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sched.h>
#include <sys/mman.h>
#endif

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

static inline int lower_lane(const saliency_lower_columns *c, const float *row, int64_t j, int64_t *peaks) {
    float s = row[j];
    float e = c->ext[j];
    uint32_t eBits; __builtin_memcpy(&eBits, &e, 4);
    int zero = s == 0.0f;
    int isExt = s < e;
    int watch = (eBits >> 31) & zero;
    int isPeak = (s < c->thr[j]) & !zero;
    uint32_t since = c->since[j] + (uint32_t)isPeak;
    c->since[j] = since;
    *peaks += isPeak;
    return isExt | watch | (isPeak & (((since & c->strideMask) == 0) | (since == c->dueAt)));
}

static int64_t lower_tail(const saliency_lower_columns *c, const float *row, int64_t from,
                          int32_t *eventBase, uint8_t *eventMask, int64_t groups, int64_t *peaks) {
    for (int64_t base = from; base < c->count; base += 8) {
        unsigned mask = 0;
        for (int64_t l = 0; l < 8 && base + l < c->count; l++)
            mask |= (unsigned)lower_lane(c, row, base + l, peaks) << l;
        eventBase[groups] = (int32_t)base;
        eventMask[groups] = (uint8_t)mask;
        groups += mask != 0;
    }
    return groups;
}

static int64_t lower_generic(const saliency_lower_columns *c, const float *row,
                             int32_t *eventBase, uint8_t *eventMask, int64_t *peaks) {
    *peaks = 0;
    return lower_tail(c, row, 0, eventBase, eventMask, 0, peaks);
}

static int64_t both_tail(const saliency_scan_columns *c, const saliency_lower_columns *lo, const float *row, int64_t from,
                         int32_t *eventBase, uint8_t *eventMask, uint8_t *lowerMask, int64_t groups, int64_t *peaks, int64_t *lowerPeaks) {
    for (int64_t base = from; base < c->count; base += 8) {
        unsigned mu = 0, ml = 0;
        for (int64_t l = 0; l < 8 && base + l < c->count; l++) {
            mu |= (unsigned)scan_lane(c, row, base + l, peaks) << l;
            ml |= (unsigned)lower_lane(lo, row, base + l, lowerPeaks) << l;
        }
        eventBase[groups] = (int32_t)base;
        eventMask[groups] = (uint8_t)mu;
        lowerMask[groups] = (uint8_t)ml;
        groups += (mu | ml) != 0;
    }
    return groups;
}

static int64_t both_generic(const saliency_scan_columns *c, const saliency_lower_columns *lo, const float *row,
                            int32_t *eventBase, uint8_t *eventMask, uint8_t *lowerMask, int64_t *peaks, int64_t *lowerPeaks) {
    *peaks = 0; *lowerPeaks = 0;
    return both_tail(c, lo, row, 0, eventBase, eventMask, lowerMask, 0, peaks, lowerPeaks);
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


// MARK: - Grimshaw sums (scalar reference: lane j of the vector variants is element i + j)

#define LG1 6.666666666666735130e-01
#define LG2 3.999999999940941908e-01
#define LG3 2.857142874366239149e-01
#define LG4 2.222219843214978396e-01
#define LG5 1.818357216161805012e-01
#define LG6 1.531383769920937332e-01
#define LG7 1.479819860511658591e-01
#define LN2HI 6.93147180369123816490e-01
#define LN2LO 1.90821492927058770002e-10
#define LG1F 6.6666662693e-01f
#define LG2F 4.0000972152e-01f
#define LG3F 2.8498786688e-01f
#define LG4F 2.4279078841e-01f
#define LN2HIF 6.9313812256e-01f
#define LN2LOF 9.0580006145e-06f

static inline void term_f64(double x, double yv, double *lg, double *ratio) {
    double t = x * yv;
    double a = 1.0 + t;
    uint64_t ix; __builtin_memcpy(&ix, &a, 8);
    uint64_t tmp = ix + 0x00095f619980c433ULL;
    uint64_t e = tmp >> 52;
    uint64_t mBits = ix - ((e - 1023) << 52);
    double m; __builtin_memcpy(&m, &mBits, 8);
    uint64_t kb = e | 0x4330000000000000ULL;
    double kd; __builtin_memcpy(&kd, &kb, 8);
    kd = kd - (4503599627370496.0 + 1023);
    double f = m - 1.0, g = 2.0 + f;
    double d = 1.0 / (a * g);
    double sv = f * a * d, r = g * d;
    double z = sv * sv, w = z * z;
    double t1 = w * (LG2 + w * (LG4 + w * LG6));
    double t2 = z * (LG1 + w * (LG3 + w * (LG5 + w * LG7)));
    double rr = t2 + t1;
    double hfsq = 0.5 * f * f;
    double logA = kd * LN2HI - ((hfsq - (sv * (hfsq + rr) + kd * LN2LO)) - f);
    *lg = logA + (t - (a - 1.0)) * r;
    *ratio = t * r;
}

static void sums_f64_generic(const double *y, int64_t count, double x, double *sumLog, double *sumRatio) {
    double l[4] = {0, 0, 0, 0}, v[4] = {0, 0, 0, 0};
    for (int64_t i = 0; i < count; i += 4)
        for (int j = 0; j < 4; j++) { double a, b; term_f64(x, y[i + j], &a, &b); l[j] = l[j] + a; v[j] = v[j] + b; }
    *sumLog = (l[0] + l[2]) + (l[1] + l[3]);
    *sumRatio = (v[0] + v[2]) + (v[1] + v[3]);
}

static inline void term_f32(float x, float yv, float *lg, float *ratio) {
    float t = x * yv;
    float a = 1.0f + t;
    uint32_t ix; __builtin_memcpy(&ix, &a, 4);
    uint32_t tmp = ix + 0x004afb0dU;
    uint32_t e = tmp >> 23;
    uint32_t mBits = ix - ((e - 127) << 23);
    float m; __builtin_memcpy(&m, &mBits, 4);
    uint32_t kb = e | 0x4b000000U;
    float kf; __builtin_memcpy(&kf, &kb, 4);
    kf = kf - (8388608.0f + 127.0f);
    float f = m - 1.0f, g = 2.0f + f;
    float d = 1.0f / (a * g);
    float sv = f * a * d, r = g * d;
    float z = sv * sv, w = z * z;
    float t1 = w * (LG2F + w * LG4F);
    float t2 = z * (LG1F + w * LG3F);
    float rr = t2 + t1;
    float hfsq = 0.5f * f * f;
    float logA = kf * LN2HIF - ((hfsq - (sv * (hfsq + rr) + kf * LN2LOF)) - f);
    *lg = logA + (t - (a - 1.0f)) * r;
    *ratio = t * r;
}

static inline float reduce8(const float *p) {
    // ((p0+p4)+(p2+p6)) + ((p1+p5)+(p3+p7)): the tree every variant uses.
    return ((p[0] + p[4]) + (p[2] + p[6])) + ((p[1] + p[5]) + (p[3] + p[7]));
}

static void sums_f32_generic(const float *y, int64_t count, float x, float *sumLog, float *sumRatio) {
    float l[8] = {0}, v[8] = {0};
    for (int64_t i = 0; i < count; i += 8)
        for (int j = 0; j < 8; j++) { float a, b; term_f32(x, y[i + j], &a, &b); l[j] = l[j] + a; v[j] = v[j] + b; }
    *sumLog = reduce8(l);
    *sumRatio = reduce8(v);
}

#ifdef SALIENCY_X86
// MARK: - SSE2 (baseline x86-64): 8 filters as two 4-lane halves

// The per-element steps of the Grimshaw sums (term_f64/term_f32 above), one vector at a time:
// P is the intrinsic prefix (_mm, _mm256) and W the register width in bits (128, 256), so one
// body serves both instruction sets. NAME(t, &lg, &ratio): lg = log(1 + t), ratio = t/(1 + t).
#define DEFINE_TERM_PD(NAME, ATTR, VD, VI, P, W) \
ATTR static inline void NAME(VD t, VD *lgOut, VD *ratioOut) { \
    const VD one = P##_set1_pd(1.0), two = P##_set1_pd(2.0), half = P##_set1_pd(0.5); \
    VD a = P##_add_pd(one, t); \
    VI ix = P##_castpd_si##W(a); \
    VI e = P##_srli_epi64(P##_add_epi64(ix, P##_set1_epi64x(0x00095f619980c433LL)), 52); \
    VD m = P##_castsi##W##_pd(P##_sub_epi64(ix, P##_slli_epi64(P##_sub_epi64(e, P##_set1_epi64x(1023)), 52))); \
    VD kd = P##_sub_pd(P##_castsi##W##_pd(P##_or_si##W(e, P##_set1_epi64x(0x4330000000000000LL))), \
                       P##_set1_pd(4503599627370496.0 + 1023)); \
    VD f = P##_sub_pd(m, one), g = P##_add_pd(two, f); \
    VD d = P##_div_pd(one, P##_mul_pd(a, g)); \
    VD sv = P##_mul_pd(P##_mul_pd(f, a), d), r = P##_mul_pd(g, d); \
    VD z = P##_mul_pd(sv, sv), w = P##_mul_pd(z, z); \
    VD t1 = P##_mul_pd(w, P##_add_pd(P##_set1_pd(LG2), P##_mul_pd(w, P##_add_pd(P##_set1_pd(LG4), P##_mul_pd(w, P##_set1_pd(LG6)))))); \
    VD t2 = P##_mul_pd(z, P##_add_pd(P##_set1_pd(LG1), P##_mul_pd(w, P##_add_pd(P##_set1_pd(LG3), \
                       P##_mul_pd(w, P##_add_pd(P##_set1_pd(LG5), P##_mul_pd(w, P##_set1_pd(LG7)))))))); \
    VD rr = P##_add_pd(t2, t1); \
    VD hfsq = P##_mul_pd(P##_mul_pd(half, f), f); \
    VD logA = P##_sub_pd(P##_mul_pd(kd, P##_set1_pd(LN2HI)), \
                         P##_sub_pd(P##_sub_pd(hfsq, P##_add_pd(P##_mul_pd(sv, P##_add_pd(hfsq, rr)), P##_mul_pd(kd, P##_set1_pd(LN2LO)))), f)); \
    *lgOut = P##_add_pd(logA, P##_mul_pd(P##_sub_pd(t, P##_sub_pd(a, one)), r)); \
    *ratioOut = P##_mul_pd(t, r); \
}

#define DEFINE_TERM_PS(NAME, ATTR, VF, VI, P, W) \
ATTR static inline void NAME(VF t, VF *lgOut, VF *ratioOut) { \
    const VF one = P##_set1_ps(1.0f), two = P##_set1_ps(2.0f), half = P##_set1_ps(0.5f); \
    VF a = P##_add_ps(one, t); \
    VI ix = P##_castps_si##W(a); \
    VI e = P##_srli_epi32(P##_add_epi32(ix, P##_set1_epi32(0x004afb0d)), 23); \
    VF m = P##_castsi##W##_ps(P##_sub_epi32(ix, P##_slli_epi32(P##_sub_epi32(e, P##_set1_epi32(127)), 23))); \
    VF kf = P##_sub_ps(P##_castsi##W##_ps(P##_or_si##W(e, P##_set1_epi32(0x4b000000))), P##_set1_ps(8388608.0f + 127.0f)); \
    VF f = P##_sub_ps(m, one), g = P##_add_ps(two, f); \
    VF d = P##_div_ps(one, P##_mul_ps(a, g)); \
    VF sv = P##_mul_ps(P##_mul_ps(f, a), d), r = P##_mul_ps(g, d); \
    VF z = P##_mul_ps(sv, sv), w = P##_mul_ps(z, z); \
    VF t1 = P##_mul_ps(w, P##_add_ps(P##_set1_ps(LG2F), P##_mul_ps(w, P##_set1_ps(LG4F)))); \
    VF t2 = P##_mul_ps(z, P##_add_ps(P##_set1_ps(LG1F), P##_mul_ps(w, P##_set1_ps(LG3F)))); \
    VF rr = P##_add_ps(t2, t1); \
    VF hfsq = P##_mul_ps(P##_mul_ps(half, f), f); \
    VF logA = P##_sub_ps(P##_mul_ps(kf, P##_set1_ps(LN2HIF)), \
                         P##_sub_ps(P##_sub_ps(hfsq, P##_add_ps(P##_mul_ps(sv, P##_add_ps(hfsq, rr)), P##_mul_ps(kf, P##_set1_ps(LN2LOF)))), f)); \
    *lgOut = P##_add_ps(logA, P##_mul_ps(P##_sub_ps(t, P##_sub_ps(a, one)), r)); \
    *ratioOut = P##_mul_ps(t, r); \
}

DEFINE_TERM_PD(term_pd_sse2, , __m128d, __m128i, _mm, 128)
DEFINE_TERM_PS(term_ps_sse2, , __m128, __m128i, _mm, 128)
DEFINE_TERM_PD(term_pd_avx2, __attribute__((target("avx2"))), __m256d, __m256i, _mm256, 256)
DEFINE_TERM_PS(term_ps_avx2, __attribute__((target("avx2"))), __m256, __m256i, _mm256, 256)


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

static inline unsigned sse_lower_half(const saliency_lower_columns *c, const float *row, int64_t i, __m128i *peakAcc) {
    __m128 s = _mm_loadu_ps(row + i);
    __m128 e = _mm_loadu_ps(c->ext + i);
    __m128 zero = _mm_cmpeq_ps(s, _mm_setzero_ps());
    __m128 isExt = _mm_cmplt_ps(s, e);
    __m128 watch = _mm_and_ps(zero, _mm_castsi128_ps(_mm_srai_epi32(_mm_castps_si128(e), 31)));
    __m128 isPeak = _mm_andnot_ps(zero, _mm_cmplt_ps(s, _mm_loadu_ps(c->thr + i)));
    __m128i p = _mm_castps_si128(isPeak);
    *peakAcc = _mm_sub_epi32(*peakAcc, p);
    __m128i since = _mm_sub_epi32(_mm_loadu_si128((const __m128i *)(c->since + i)), p);
    _mm_storeu_si128((__m128i *)(c->since + i), since);
    __m128i hit = _mm_or_si128(_mm_cmpeq_epi32(_mm_and_si128(since, _mm_set1_epi32((int)c->strideMask)), _mm_setzero_si128()),
                               _mm_cmpeq_epi32(since, _mm_set1_epi32((int)c->dueAt)));
    return (unsigned)_mm_movemask_ps(_mm_or_ps(_mm_or_ps(_mm_and_ps(_mm_castsi128_ps(hit), isPeak), isExt), watch));
}

static int64_t lower_sse2(const saliency_lower_columns *c, const float *row,
                          int32_t *eventBase, uint8_t *eventMask, int64_t *peaks) {
    int64_t n = c->count & ~(int64_t)7, groups = 0;
    __m128i acc = _mm_setzero_si128();
    for (int64_t i = 0; i < n; i += 8) {
        unsigned mask = sse_lower_half(c, row, i, &acc) | (sse_lower_half(c, row, i + 4, &acc) << 4);
        eventBase[groups] = (int32_t)i;
        eventMask[groups] = (uint8_t)mask;
        groups += mask != 0;
    }
    int32_t lanes[4];
    _mm_storeu_si128((__m128i *)lanes, acc);
    *peaks = (int64_t)(uint32_t)lanes[0] + (uint32_t)lanes[1] + (uint32_t)lanes[2] + (uint32_t)lanes[3];
    return lower_tail(c, row, n, eventBase, eventMask, groups, peaks);
}

static int64_t both_sse2(const saliency_scan_columns *c, const saliency_lower_columns *lo, const float *row,
                         int32_t *eventBase, uint8_t *eventMask, uint8_t *lowerMask, int64_t *peaks, int64_t *lowerPeaks) {
    int64_t n = c->count & ~(int64_t)7, groups = 0;
    __m128i acc = _mm_setzero_si128(), accL = _mm_setzero_si128();
    for (int64_t i = 0; i < n; i += 8) {
        unsigned mu = sse_half(c, row, i, &acc) | (sse_half(c, row, i + 4, &acc) << 4);
        unsigned ml = sse_lower_half(lo, row, i, &accL) | (sse_lower_half(lo, row, i + 4, &accL) << 4);
        eventBase[groups] = (int32_t)i;
        eventMask[groups] = (uint8_t)mu;
        lowerMask[groups] = (uint8_t)ml;
        groups += (mu | ml) != 0;
    }
    int32_t lanes[4], lanesL[4];
    _mm_storeu_si128((__m128i *)lanes, acc);
    _mm_storeu_si128((__m128i *)lanesL, accL);
    *peaks = (int64_t)(uint32_t)lanes[0] + (uint32_t)lanes[1] + (uint32_t)lanes[2] + (uint32_t)lanes[3];
    *lowerPeaks = (int64_t)(uint32_t)lanesL[0] + (uint32_t)lanesL[1] + (uint32_t)lanesL[2] + (uint32_t)lanesL[3];
    return both_tail(c, lo, row, n, eventBase, eventMask, lowerMask, groups, peaks, lowerPeaks);
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

static void sums_f64_sse2(const double *y, int64_t count, double x, double *sumLog, double *sumRatio) {
    const __m128d xv = _mm_set1_pd(x);
    // Two 2-lane accumulators, alternating: lane sums S0, S1 | S2, S3 by element index mod 4.
    __m128d accL0 = _mm_setzero_pd(), accV0 = _mm_setzero_pd(), accL1 = _mm_setzero_pd(), accV1 = _mm_setzero_pd();
    for (int64_t i = 0; i < count; i += 4) {
        __m128d lg, ratio;
        term_pd_sse2(_mm_mul_pd(xv, _mm_loadu_pd(y + i)), &lg, &ratio);
        accL0 = _mm_add_pd(accL0, lg); accV0 = _mm_add_pd(accV0, ratio);
        term_pd_sse2(_mm_mul_pd(xv, _mm_loadu_pd(y + i + 2)), &lg, &ratio);
        accL1 = _mm_add_pd(accL1, lg); accV1 = _mm_add_pd(accV1, ratio);
    }
    double l0[2], l1[2], v0[2], v1[2];
    _mm_storeu_pd(l0, accL0); _mm_storeu_pd(l1, accL1); _mm_storeu_pd(v0, accV0); _mm_storeu_pd(v1, accV1);
    *sumLog = (l0[0] + l1[0]) + (l0[1] + l1[1]);
    *sumRatio = (v0[0] + v1[0]) + (v0[1] + v1[1]);
}

static void sums_f32_sse2(const float *y, int64_t count, float x, float *sumLog, float *sumRatio) {
    const __m128 xv = _mm_set1_ps(x);
    __m128 accL0 = _mm_setzero_ps(), accV0 = _mm_setzero_ps(), accL1 = _mm_setzero_ps(), accV1 = _mm_setzero_ps();
    for (int64_t i = 0; i < count; i += 8) {
        __m128 lg, ratio;
        term_ps_sse2(_mm_mul_ps(xv, _mm_loadu_ps(y + i)), &lg, &ratio);
        accL0 = _mm_add_ps(accL0, lg); accV0 = _mm_add_ps(accV0, ratio);
        term_ps_sse2(_mm_mul_ps(xv, _mm_loadu_ps(y + i + 4)), &lg, &ratio);
        accL1 = _mm_add_ps(accL1, lg); accV1 = _mm_add_ps(accV1, ratio);
    }
    float l[8], v[8];
    _mm_storeu_ps(l, accL0); _mm_storeu_ps(l + 4, accL1); _mm_storeu_ps(v, accV0); _mm_storeu_ps(v + 4, accV1);
    *sumLog = reduce8(l);
    *sumRatio = reduce8(v);
}

// MARK: - AVX2: 8 filters per step

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
static int64_t lower_avx2(const saliency_lower_columns *c, const float *row,
                          int32_t *eventBase, uint8_t *eventMask, int64_t *peaks) {
    int64_t n = c->count & ~(int64_t)7, groups = 0;
    __m256i acc = _mm256_setzero_si256();
    const __m256i strideMask = _mm256_set1_epi32((int)c->strideMask), dueAt = _mm256_set1_epi32((int)c->dueAt);
    for (int64_t i = 0; i < n; i += 8) {
        __m256 s = _mm256_loadu_ps(row + i);
        __m256 e = _mm256_loadu_ps(c->ext + i);
        __m256 zero = _mm256_cmp_ps(s, _mm256_setzero_ps(), _CMP_EQ_OQ);
        __m256 isExt = _mm256_cmp_ps(s, e, _CMP_LT_OQ);
        __m256 watch = _mm256_and_ps(zero, _mm256_castsi256_ps(_mm256_srai_epi32(_mm256_castps_si256(e), 31)));
        __m256 isPeak = _mm256_andnot_ps(zero, _mm256_cmp_ps(s, _mm256_loadu_ps(c->thr + i), _CMP_LT_OQ));
        __m256i p = _mm256_castps_si256(isPeak);
        acc = _mm256_sub_epi32(acc, p);
        __m256i since = _mm256_sub_epi32(_mm256_loadu_si256((const __m256i *)(c->since + i)), p);
        _mm256_storeu_si256((__m256i *)(c->since + i), since);
        __m256i hit = _mm256_or_si256(_mm256_cmpeq_epi32(_mm256_and_si256(since, strideMask), _mm256_setzero_si256()),
                                      _mm256_cmpeq_epi32(since, dueAt));
        unsigned mask = (unsigned)_mm256_movemask_ps(_mm256_or_ps(_mm256_or_ps(_mm256_and_ps(_mm256_castsi256_ps(hit), isPeak), isExt), watch));
        eventBase[groups] = (int32_t)i;
        eventMask[groups] = (uint8_t)mask;
        groups += mask != 0;
    }
    int32_t lanes[8];
    _mm256_storeu_si256((__m256i *)lanes, acc);
    int64_t total = 0;
    for (int l = 0; l < 8; l++) total += (uint32_t)lanes[l];
    *peaks = total;
    return lower_tail(c, row, n, eventBase, eventMask, groups, peaks);
}

// Software prefetch of the fused pass's 10 streams (row, 6 upper and 3 lower columns), one line
// per stream every 16 filters, 256 filters (1 KiB per stream) ahead. A hint only (results are
// unchanged); measured in thread CPU time at K = 26,560 on the shared 2-vCPU VM: 6 of 6
// interleaved pairs faster than without (BENCHMARKS.md, "Two tails"). 0 disables it.
#ifndef SALIENCY_BOTH_PREFETCH
#define SALIENCY_BOTH_PREFETCH 256
#endif
__attribute__((target("avx2")))
static int64_t both_avx2(const saliency_scan_columns *c, const saliency_lower_columns *lo, const float *row,
                         int32_t *eventBase, uint8_t *eventMask, uint8_t *lowerMask, int64_t *peaks, int64_t *lowerPeaks) {
    int64_t n = c->count & ~(int64_t)7, groups = 0;
    __m256i acc = _mm256_setzero_si256(), accL = _mm256_setzero_si256();
    const __m256i strideMask = _mm256_set1_epi32((int)c->strideMask), dueAt = _mm256_set1_epi32((int)c->dueAt);
    const __m256i strideMaskL = _mm256_set1_epi32((int)lo->strideMask), dueAtL = _mm256_set1_epi32((int)lo->dueAt);
    // The columns in locals: the stores below could alias *c and *lo, so reading them through the
    // structs reloads every pointer on every iteration (9 loads per group; measured, perf annotate).
    const float *thr = c->thr, *ext = c->ext, *shift = c->shift;
    float *bsum = c->bsum, *bsumsq = c->bsumsq;
    uint32_t *sinceU = c->since;
    const float *thrL = lo->thr, *extL = lo->ext;
    uint32_t *sinceLo = lo->since;
    for (int64_t i = 0; i < n; i += 8) {
#if SALIENCY_BOTH_PREFETCH > 0
        if ((i & 15) == 0 && i + SALIENCY_BOTH_PREFETCH < n) {
            const int64_t a = i + SALIENCY_BOTH_PREFETCH;
            _mm_prefetch((const char *)(row + a), _MM_HINT_T0);
            _mm_prefetch((const char *)(thr + a), _MM_HINT_T0);
            _mm_prefetch((const char *)(ext + a), _MM_HINT_T0);
            _mm_prefetch((const char *)(shift + a), _MM_HINT_T0);
            _mm_prefetch((const char *)(bsum + a), _MM_HINT_T0);
            _mm_prefetch((const char *)(bsumsq + a), _MM_HINT_T0);
            _mm_prefetch((const char *)(sinceU + a), _MM_HINT_T0);
            _mm_prefetch((const char *)(thrL + a), _MM_HINT_T0);
            _mm_prefetch((const char *)(extL + a), _MM_HINT_T0);
            _mm_prefetch((const char *)(sinceLo + a), _MM_HINT_T0);
        }
#endif
        __m256 s = _mm256_loadu_ps(row + i);
        // Upper tail and moments: exactly scan_avx2's steps.
        __m256 isExt = _mm256_cmp_ps(s, _mm256_loadu_ps(ext + i), _CMP_GT_OQ);
        __m256 isPeak = _mm256_cmp_ps(s, _mm256_loadu_ps(thr + i), _CMP_GT_OQ);
        __m256 d = _mm256_andnot_ps(isExt, _mm256_sub_ps(s, _mm256_loadu_ps(shift + i)));
        _mm256_storeu_ps(bsum + i, _mm256_add_ps(_mm256_loadu_ps(bsum + i), d));
        _mm256_storeu_ps(bsumsq + i, _mm256_add_ps(_mm256_loadu_ps(bsumsq + i), _mm256_mul_ps(d, d)));
        __m256i p = _mm256_castps_si256(isPeak);
        acc = _mm256_sub_epi32(acc, p);
        __m256i since = _mm256_sub_epi32(_mm256_loadu_si256((const __m256i *)(sinceU + i)), p);
        _mm256_storeu_si256((__m256i *)(sinceU + i), since);
        __m256i hit = _mm256_or_si256(_mm256_cmpeq_epi32(_mm256_and_si256(since, strideMask), _mm256_setzero_si256()),
                                      _mm256_cmpeq_epi32(since, dueAt));
        unsigned mu = (unsigned)_mm256_movemask_ps(_mm256_or_ps(_mm256_and_ps(_mm256_castsi256_ps(hit), isPeak), isExt));
        // Lower tail: exactly lower_avx2's steps.
        __m256 e = _mm256_loadu_ps(extL + i);
        __m256 zero = _mm256_cmp_ps(s, _mm256_setzero_ps(), _CMP_EQ_OQ);
        __m256 isExtL = _mm256_cmp_ps(s, e, _CMP_LT_OQ);
        __m256 watch = _mm256_and_ps(zero, _mm256_castsi256_ps(_mm256_srai_epi32(_mm256_castps_si256(e), 31)));
        __m256 isPeakL = _mm256_andnot_ps(zero, _mm256_cmp_ps(s, _mm256_loadu_ps(thrL + i), _CMP_LT_OQ));
        __m256i pl = _mm256_castps_si256(isPeakL);
        accL = _mm256_sub_epi32(accL, pl);
        __m256i sinceL = _mm256_sub_epi32(_mm256_loadu_si256((const __m256i *)(sinceLo + i)), pl);
        _mm256_storeu_si256((__m256i *)(sinceLo + i), sinceL);
        __m256i hitL = _mm256_or_si256(_mm256_cmpeq_epi32(_mm256_and_si256(sinceL, strideMaskL), _mm256_setzero_si256()),
                                       _mm256_cmpeq_epi32(sinceL, dueAtL));
        unsigned ml = (unsigned)_mm256_movemask_ps(_mm256_or_ps(_mm256_or_ps(_mm256_and_ps(_mm256_castsi256_ps(hitL), isPeakL), isExtL), watch));
        eventBase[groups] = (int32_t)i;
        eventMask[groups] = (uint8_t)mu;
        lowerMask[groups] = (uint8_t)ml;
        groups += (mu | ml) != 0;
    }
    int32_t lanes[8], lanesL[8];
    _mm256_storeu_si256((__m256i *)lanes, acc);
    _mm256_storeu_si256((__m256i *)lanesL, accL);
    int64_t total = 0, totalL = 0;
    for (int l = 0; l < 8; l++) { total += (uint32_t)lanes[l]; totalL += (uint32_t)lanesL[l]; }
    *peaks = total;
    *lowerPeaks = totalL;
    return both_tail(c, lo, row, n, eventBase, eventMask, lowerMask, groups, peaks, lowerPeaks);
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

__attribute__((target("avx2")))
static void sums_f64_avx2(const double *y, int64_t count, double x, double *sumLog, double *sumRatio) {
    const __m256d xv = _mm256_set1_pd(x);
    __m256d accL = _mm256_setzero_pd(), accV = _mm256_setzero_pd();
    for (int64_t i = 0; i < count; i += 4) {
        __m256d lg, ratio;
        term_pd_avx2(_mm256_mul_pd(xv, _mm256_loadu_pd(y + i)), &lg, &ratio);
        accL = _mm256_add_pd(accL, lg); accV = _mm256_add_pd(accV, ratio);
    }
    double l[4], v[4];
    _mm256_storeu_pd(l, accL); _mm256_storeu_pd(v, accV);
    *sumLog = (l[0] + l[2]) + (l[1] + l[3]);
    *sumRatio = (v[0] + v[2]) + (v[1] + v[3]);
}

__attribute__((target("avx2")))
static void sums_f32_avx2(const float *y, int64_t count, float x, float *sumLog, float *sumRatio) {
    const __m256 xv = _mm256_set1_ps(x);
    __m256 accL = _mm256_setzero_ps(), accV = _mm256_setzero_ps();
    for (int64_t i = 0; i < count; i += 8) {
        __m256 lg, ratio;
        term_ps_avx2(_mm256_mul_ps(xv, _mm256_loadu_ps(y + i)), &lg, &ratio);
        accL = _mm256_add_ps(accL, lg); accV = _mm256_add_ps(accV, ratio);
    }
    float l[8], v[8];
    _mm256_storeu_ps(l, accL); _mm256_storeu_ps(v, accV);
    *sumLog = reduce8(l);
    *sumRatio = reduce8(v);
}
#endif

// MARK: - Dispatch

// One immutable table per variant. Nothing here is mutable after start-up except the cached
// "best" pointer, which every thread computes to the same value (a benign, idempotent race made
// explicit with an atomic).
#ifdef SALIENCY_X86
static const saliency_kernels table_sse2 = {
    scan_sse2, merge_generic, lower_sse2, check_sse2, both_sse2, sums_f64_sse2, sums_f32_sse2, "sse2",
};
static const saliency_kernels table_avx2 = {
    scan_avx2, merge_avx2, lower_avx2, check_avx2, both_avx2, sums_f64_avx2, sums_f32_avx2, "avx2",
};
#else
static const saliency_kernels table_generic = {
    scan_generic, merge_generic, lower_generic, check_generic, both_generic, sums_f64_generic, sums_f32_generic, "generic",
};
#endif

static int cpu_has_avx2(void) {
#ifdef SALIENCY_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
#else
    return 0;
#endif
}

static _Atomic(const saliency_kernels *) best_table = NULL;

static const saliency_kernels *baseline(void) {
#ifdef SALIENCY_X86
    return &table_sse2;
#else
    return &table_generic;
#endif
}

static const saliency_kernels *best(void) {
    const saliency_kernels *t = atomic_load_explicit(&best_table, memory_order_acquire);
    if (t == NULL) {
#ifdef SALIENCY_X86
        t = cpu_has_avx2() ? &table_avx2 : &table_sse2;
#else
        t = &table_generic;
#endif
        atomic_store_explicit(&best_table, t, memory_order_release);
    }
    return t;
}

const saliency_kernels *saliency_kernels_table(int variant) {
    switch (variant) {
    case SALIENCY_KERNELS_BEST: return best();
    case SALIENCY_KERNELS_BASELINE: return baseline();
    default: return NULL;
    }
}

const char *saliency_kernels_isa(void) { return best()->isa; }

int64_t saliency_scan_row(const saliency_scan_columns *c, const float *row,
                          int32_t *eventBase, uint8_t *eventMask, int64_t *peaks) {
    return best()->scan_row(c, row, eventBase, eventMask, peaks);
}

void saliency_merge_moments(const saliency_merge_columns *c) { best()->merge_moments(c); }

int64_t saliency_scan_both(const saliency_scan_columns *c, const saliency_lower_columns *lo, const float *row,
                           int32_t *eventBase, uint8_t *eventMask, uint8_t *lowerMask, int64_t *peaks, int64_t *lowerPeaks) {
    return best()->scan_both(c, lo, row, eventBase, eventMask, lowerMask, peaks, lowerPeaks);
}

int64_t saliency_scan_lower(const saliency_lower_columns *c, const float *row,
                            int32_t *eventBase, uint8_t *eventMask, int64_t *peaks) {
    return best()->scan_lower(c, row, eventBase, eventMask, peaks);
}

int saliency_row_has_invalid(const void *row, int64_t count) { return best()->row_has_invalid(row, count); }

static size_t huge_rounded(size_t bytes) {
    const size_t huge = (size_t)2 << 20, page = 4096;
    if (bytes == 0) bytes = 1;
    /* Small columns round to pages: a small model must not pay 2 MiB per ring. */
    return bytes < huge ? (bytes + page - 1) / page * page : (bytes + huge - 1) / huge * huge;
}

void *saliency_alloc_huge(size_t bytes) {
    size_t rounded = huge_rounded(bytes);
    if (rounded < bytes) return NULL;   /* overflow */
#if defined(__linux__)
    /* Anonymous pages are zero and claimed only when first written: the ring's memory follows
       what the filters have learned, not what the schema announced. */
    void *p = mmap(NULL, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
#if defined(MADV_HUGEPAGE)
    if (rounded >= ((size_t)2 << 20)) (void)madvise(p, rounded, MADV_HUGEPAGE);   /* a hint */
#endif
    return p;
#else
    void *p = calloc(1, rounded);
    return p;
#endif
}

void saliency_free_huge(void *p, size_t bytes) {
    if (p == NULL) return;
#if defined(__linux__)
    (void)munmap(p, huge_rounded(bytes));
#else
    (void)bytes;
    free(p);
#endif
}

void saliency_grimshaw_sums_f64(const double *y, int64_t count, double x, double *sumLog, double *sumRatio) {
    best()->grimshaw_sums_f64(y, count, x, sumLog, sumRatio);
}

void saliency_grimshaw_sums_f32(const float *y, int64_t count, float x, float *sumLog, float *sumRatio) {
    best()->grimshaw_sums_f32(y, count, x, sumLog, sumRatio);
}

int saliency_pin_to_current_cpu(void) {
#if defined(__linux__)
    int cpu = sched_getcpu();
    if (cpu < 0 || cpu >= CPU_SETSIZE) return -1;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set) == 0 ? cpu : -1;
#else
    return -1;
#endif
}
