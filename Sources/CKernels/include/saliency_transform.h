#ifndef SALIENCY_TRANSFORM_H
#define SALIENCY_TRANSFORM_H
#include <stdint.h>

/* Common-mode-free row transforms, one layer at a time (Sources/EVTOnline/RowTransform.swift;
   docs/statistics.md, "Common-mode-free scorers"). AVX2 where the CPU has it, else SSE2 (x86-64)
   or generic vectors; every variant gives bit-identical results (same lanes, same operation
   order, no contraction). Each returns 1 on success and 0 when the Float path cannot represent
   the layer (sums overflow or a scale is not a normal float): the caller then redoes it in Double. */

/* y_i = (s_i + eps)/G, G = geometric mean of s_j + eps, eps = max(0.01 * mean(s), FLT_MIN). */
int saliency_layer_logres(const float *s, float *y, int64_t n);
/* y_i = s_i/(mean(s) + eps), the same eps. */
int saliency_layer_ratio(const float *s, float *y, int64_t n);
/* Natural log of 8 positive normal floats (exposed for tests: |error| < 4e-6 absolute). */
void saliency_log8(const float *x, float *out);
/* "avx2", "sse2" or "generic": the variant the transforms run on this CPU. */
const char *saliency_transform_isa(void);

#endif
