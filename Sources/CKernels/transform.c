/* Common-mode-free row transforms (saliency_transform.h). Written once with GCC/clang vector
   extensions and compiled per instruction set through target attributes; -ffp-contract is off for
   this file's arithmetic (no FMA in any variant), so every variant computes the same floats. */
#include "saliency_transform.h"
#include <float.h>
#include <math.h>
#include <string.h>

#pragma STDC FP_CONTRACT OFF
#if defined(__clang__)
#pragma clang fp contract(off)
#endif

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

/* Helpers are macros (statement expressions): a function taking or returning a 32-byte vector
   would change the ABI between the variants. */
#define splat(a) ((v8f){(a), (a), (a), (a), (a), (a), (a), (a)})
#define splati(a) ((v8i){(a), (a), (a), (a), (a), (a), (a), (a)})
#define load8(p) ({ v8f _v; memcpy(&_v, (p), sizeof _v); _v; })
#define store8(p, v) do { v8f _t = (v); memcpy((p), &_t, sizeof _t); } while (0)

/* Cephes logf: mantissa reduced to [sqrt(1/2), sqrt(2)) by integer arithmetic (no compare), the
   exponent converted through the 1.5 * 2^23 trick; degree-9 polynomial. Positive normal inputs. */
#define log8(xin) ({                                                                               \
    v8f _x = (xin);                                                                                \
    v8i _ix = (v8i)_x - splati(0x3F3504F3);                                                        \
    v8i _k = _ix >> 23;                                                                            \
    v8f _m = (v8f)((_ix & splati(0x007FFFFF)) + splati(0x3F3504F3));                               \
    v8f _e = (v8f)(_k + splati(0x4B400000)) - splat(12582912.0f);                                  \
    v8f _f = _m - splat(1.0f);                                                                     \
    v8f _z = _f * _f;                                                                              \
    v8f _y = splat(7.0376836292e-2f);                                                              \
    _y = _y * _f - splat(1.1514610310e-1f);                                                        \
    _y = _y * _f + splat(1.1676998740e-1f);                                                        \
    _y = _y * _f - splat(1.2420140846e-1f);                                                        \
    _y = _y * _f + splat(1.4249322787e-1f);                                                        \
    _y = _y * _f - splat(1.6668057665e-1f);                                                        \
    _y = _y * _f + splat(2.0000714765e-1f);                                                        \
    _y = _y * _f - splat(2.4999993993e-1f);                                                        \
    _y = _y * _f + splat(3.3333331174e-1f);                                                        \
    _y = _y * _f;                                                                                  \
    _y = _y * _z;                                                                                  \
    _y = _y + _e * splat(-2.12194440e-4f);                                                         \
    _y = _y - _z * splat(0.5f);                                                                    \
    (_f + _y) + _e * splat(0.693359375f); })

/* Sum of 8 lanes in a fixed order, in double. */
#define hsum(a) ({ v8f _a = (a); double _t = 0; for (int _l = 0; _l < 8; _l++) _t += (double)_a[_l]; _t; })

/* The tail (n % 8 values) goes through the same vector code, padded. */
#define load_tail(p, r, pad) ({ v8f _v = splat(pad); for (int64_t _l = 0; _l < (r); _l++) _v[_l] = (p)[_l]; _v; })

#define DEFINE_VARIANT(SUFFIX, ATTR)                                                               \
ATTR static double sum_##SUFFIX(const float *s, int64_t n) {                                      \
    v8f acc = splat(0.0f);                                                                         \
    int64_t i = 0;                                                                                 \
    for (; i + 8 <= n; i += 8) acc += load8(s + i);                                                \
    if (i < n) acc += load_tail(s + i, n - i, 0.0f);                                               \
    return hsum(acc);                                                                              \
}                                                                                                  \
ATTR static int logres_##SUFFIX(const float *s, float *y, int64_t n) {                            \
    double total = sum_##SUFFIX(s, n);                                                             \
    double mean = total / (double)n;                                                               \
    double epsd = 0.01 * mean > (double)FLT_MIN ? 0.01 * mean : (double)FLT_MIN;                   \
    float eps = (float)epsd;                                                                       \
    float scale = (float)(1.0 / (mean + epsd));                                                    \
    if (!isfinite((float)(total + epsd)) || !isnormal(scale)) return 0;                            \
    v8f e = splat(eps), sc = splat(scale), acc = splat(0.0f);                                      \
    v8f a1 = splat(0.0f), a2 = splat(0.0f), a3 = splat(0.0f);                                      \
    int64_t i = 0;                                                                                 \
    /* four independent chains: the polynomial is latency-bound */                                 \
    for (; i + 32 <= n; i += 32) {                                                                 \
        acc += log8((load8(s + i) + e) * sc);                                                      \
        a1 += log8((load8(s + i + 8) + e) * sc);                                                   \
        a2 += log8((load8(s + i + 16) + e) * sc);                                                  \
        a3 += log8((load8(s + i + 24) + e) * sc);                                                  \
    }                                                                                              \
    acc = (acc + a1) + (a2 + a3);                                                                  \
    for (; i + 8 <= n; i += 8) acc += log8((load8(s + i) + e) * sc);                               \
    if (i < n) {                                                                                   \
        /* padding with (pad + eps)*scale == 1 exactly is not possible in general: mask instead */ \
        v8f t = log8((load_tail(s + i, n - i, 0.0f) + e) * sc);                                    \
        for (int64_t l = n - i; l < 8; l++) t[l] = 0;                                              \
        acc += t;                                                                                  \
    }                                                                                              \
    float g = (float)((double)scale * exp(-hsum(acc) / (double)n));                                \
    if (!isnormal(g)) return 0;                                                                    \
    v8f gv = splat(g);                                                                             \
    i = 0;                                                                                         \
    for (; i + 8 <= n; i += 8) store8(y + i, (load8(s + i) + e) * gv);                             \
    for (; i < n; i++) y[i] = (s[i] + eps) * g;                                                    \
    return 1;                                                                                      \
}                                                                                                  \
ATTR static int ratio_##SUFFIX(const float *s, float *y, int64_t n) {                             \
    double total = sum_##SUFFIX(s, n);                                                             \
    if (!isfinite(total)) return 0;                                                                \
    double mean = total / (double)n;                                                               \
    double epsd = 0.01 * mean > (double)FLT_MIN ? 0.01 * mean : (double)FLT_MIN;                   \
    float inv = (float)(1.0 / (mean + epsd));                                                      \
    if (!isfinite(inv)) return 0;                                                                  \
    v8f iv = splat(inv);                                                                           \
    int64_t i = 0;                                                                                 \
    for (; i + 8 <= n; i += 8) store8(y + i, load8(s + i) * iv);                                   \
    for (; i < n; i++) y[i] = s[i] * inv;                                                          \
    return 1;                                                                                      \
}

#if defined(__x86_64__) || defined(__i386__)
DEFINE_VARIANT(avx2, __attribute__((target("avx2"))))
DEFINE_VARIANT(base, )
static int (*logres_fn)(const float *, float *, int64_t);
static int (*ratio_fn)(const float *, float *, int64_t);
static const char *isa_name;
static void choose(void) {
    int avx2 = __builtin_cpu_supports("avx2");
    ratio_fn = avx2 ? ratio_avx2 : ratio_base;
    isa_name = avx2 ? "avx2" : "sse2";
    __atomic_store_n(&logres_fn, avx2 ? logres_avx2 : logres_base, __ATOMIC_RELEASE);
}
int saliency_layer_logres(const float *s, float *y, int64_t n) {
    int (*f)(const float *, float *, int64_t) = __atomic_load_n(&logres_fn, __ATOMIC_ACQUIRE);
    if (!f) { choose(); f = logres_fn; }
    return f(s, y, n);
}
int saliency_layer_ratio(const float *s, float *y, int64_t n) {
    if (!__atomic_load_n(&logres_fn, __ATOMIC_ACQUIRE)) choose();
    return ratio_fn(s, y, n);
}
const char *saliency_transform_isa(void) {
    if (!__atomic_load_n(&logres_fn, __ATOMIC_ACQUIRE)) choose();
    return isa_name;
}
#else
DEFINE_VARIANT(base, )
int saliency_layer_logres(const float *s, float *y, int64_t n) { return logres_base(s, y, n); }
int saliency_layer_ratio(const float *s, float *y, int64_t n) { return ratio_base(s, y, n); }
const char *saliency_transform_isa(void) { return "generic"; }
#endif

void saliency_log8(const float *x, float *out) { store8(out, log8(load8(x))); }
