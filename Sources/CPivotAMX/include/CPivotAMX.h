#ifndef PIVOT_CPIVOTAMX_H
#define PIVOT_CPIVOTAMX_H

#include <stddef.h>
#include <stdint.h>

// Matrix products with bfloat16 inputs and float32 accumulation on Intel AMX tiles
// (TDPBF16PS: a 16×32 by 32×16 block product per instruction). Swift cannot name tile
// registers, so the micro-kernel and its packing live here; the split over threads and every
// decision of when to use it stay in PivotTensor.
//
// A is m×k float32 with A[i][p] at a[i*rs + p*cs]; B is k×n, B[p][j] at b[p*sk + j*sn], in
// float32 or bfloat16 bits. Every input is rounded to bfloat16 (nearest even) on packing.

// 1 when the CPU has AMX-BF16 and the OS granted this process tile state (asked once).
int pivot_amx_available(void);

// uint16 elements of A packed into 16×32 tiles, rows padded to a multiple of 32.
size_t pivot_amx_packed_a_count(int m, int k);
void pivot_amx_pack_a(const float *a, long rs, long cs, int m, int k, uint16_t *packed);

// uint16 elements of one worker's B panel scratch.
size_t pivot_amx_panel_count(void);

// C[i][j] = (accumulate ? C[i][j] : 0) + Σp A[i][p]·B[p][j] for i < m, n0 ≤ j < n1
// (n0 a multiple of 32), C row-major with row stride ldc. Call with AMX available only.
void pivot_amx_gemm_columns(const uint16_t *packed_a, int m, int k,
                            const void *b, int b_is_bf16, long sk, long sn, int n0, int n1,
                            float *c, long ldc, int accumulate, uint16_t *panel_scratch);

/// Asks for the cache line at `p` ahead of its use (Swift has no prefetch of its own); inlined
/// into the Swift kernels that stream weights.
static inline void pivot_prefetch(const void *p) { __builtin_prefetch(p, 0, 0); }

#endif
