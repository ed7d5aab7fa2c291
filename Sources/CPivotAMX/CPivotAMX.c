#include "CPivotAMX.h"

#include <string.h>

#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#define AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl")))
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

// Blocking: K in chunks of KC_BLOCKS 32-deep blocks and N in chunks of NC_COLUMNS, so a
// packed A chunk (M×1024 bf16) and the packed B chunk (1024×256 bf16, 512 KiB) share L2.
enum { KC_BLOCKS = 32, NC_COLUMNS = 256, TILE_ELEMS = 512 };

static int amx_state = -1;

int pivot_amx_available(void) {
  if (amx_state >= 0) return amx_state;
  unsigned a, b, c, d;
  int ok = 0;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    int amx_bf16 = (d >> 22) & 1, amx_tile = (d >> 24) & 1, avx512bw = (b >> 30) & 1;
    if (amx_bf16 && amx_tile && avx512bw)
      ok = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
  }
  amx_state = ok;
  return ok;
}

typedef struct {
  uint8_t palette_id, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} __attribute__((packed)) tile_config;

AMX_TARGET static void load_tile_config(void) {
  tile_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.palette_id = 1;
  for (int t = 0; t < 8; t++) { cfg.colsb[t] = 64; cfg.rows[t] = 16; }  // every tile 16 rows × 64 bytes
  _tile_loadconfig(&cfg);
}

// float32 → bfloat16 bits, nearest even, 16 lanes; NaN stays NaN (quiet bit set).
AMX_TARGET static inline __m512i round_bf16(__m512 x) {
  __m512i u = _mm512_castps_si512(x);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  return _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
}

static inline uint16_t round_bf16_scalar(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  if (x != x) return (uint16_t)((u >> 16) | 0x40);
  return (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

// 32 consecutive float32 → 32 bfloat16 (one tile row, 64 bytes).
AMX_TARGET static inline __m512i row_from_f32(const float *p) {
  __m256i lo = _mm512_cvtepi32_epi16(round_bf16(_mm512_loadu_ps(p)));
  __m256i hi = _mm512_cvtepi32_epi16(round_bf16(_mm512_loadu_ps(p + 16)));
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

// Two rows of 16 bfloat16 interleaved into 16 (even, odd) pairs: the VNNI layout's tile row.
AMX_TARGET static inline __m512i interleave_bf16(__m256i even, __m256i odd) {
  return _mm512_or_si512(_mm512_cvtepu16_epi32(even), _mm512_slli_epi32(_mm512_cvtepu16_epi32(odd), 16));
}

AMX_TARGET static inline __m256i bf16_from_f32x16(const float *p) {
  return _mm512_cvtepi32_epi16(round_bf16(_mm512_loadu_ps(p)));
}

// In-place transpose of a 16×16 matrix of 32-bit elements held one row per register.
AMX_TARGET static void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // Each 128-bit lane now holds a transposed 4×4 block; move the blocks across registers.
  for (int i = 0; i < 4; i++) {
    for (int j = 0; j < 2; j++) {
      int a = i + 8 * j, b = i + 4 + 8 * j;
      t[a] = _mm512_shuffle_i32x4(r[a], r[b], 0x88);
      t[b] = _mm512_shuffle_i32x4(r[a], r[b], 0xDD);
    }
  }
  for (int i = 0; i < 8; i++) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xDD);
  }
}

size_t pivot_amx_packed_a_count(int m, int k) {
  size_t mb = (size_t)((m + 31) / 32) * 2, kb = (size_t)((k + 31) / 32);
  return mb * kb * TILE_ELEMS;
}

size_t pivot_amx_panel_count(void) { return (NC_COLUMNS / 32) * 2 * KC_BLOCKS * TILE_ELEMS; }

// Tile (mb, kb) of packed A: rows 16·mb…, columns 32·kb…, row-major, 64-byte rows, zero padded.
static inline size_t a_tile_offset(int mb, int kb, int k_blocks) {
  return ((size_t)mb * k_blocks + (size_t)kb) * TILE_ELEMS;
}

AMX_TARGET void pivot_amx_pack_a(const float *a, long rs, long cs, int m, int k, uint16_t *packed) {
  int m_blocks = ((m + 31) / 32) * 2, k_blocks = (k + 31) / 32;
  for (int mb = 0; mb < m_blocks; mb++) {
    for (int kb = 0; kb < k_blocks; kb++) {
      uint16_t *tile = packed + a_tile_offset(mb, kb, k_blocks);
      int i0 = mb * 16, p0 = kb * 32;
      int full = i0 + 16 <= m && p0 + 32 <= k;
      if (full && cs == 1) {
        for (int r = 0; r < 16; r++) _mm512_storeu_si512(tile + r * 32, row_from_f32(a + (long)(i0 + r) * rs + p0));
      } else if (full && rs == 1) {
        // A is a transposed view (columns contiguous): pair columns p, p+1 into dwords, then transpose.
        __m512i rows[16];
        for (int q = 0; q < 16; q++)
          rows[q] = interleave_bf16(bf16_from_f32x16(a + (long)(p0 + 2 * q) * cs + i0),
                                    bf16_from_f32x16(a + (long)(p0 + 2 * q + 1) * cs + i0));
        transpose16(rows);
        for (int r = 0; r < 16; r++) _mm512_storeu_si512(tile + r * 32, rows[r]);
      } else {
        for (int r = 0; r < 16; r++)
          for (int q = 0; q < 32; q++) {
            int i = i0 + r, p = p0 + q;
            tile[r * 32 + q] = (i < m && p < k) ? round_bf16_scalar(a[(long)i * rs + (long)p * cs]) : 0;
          }
      }
    }
  }
}

// B element (p, j) as bfloat16 bits, zero outside k×n.
static inline uint16_t b_element(const void *b, int is_bf16, long sk, long sn, int k, int n, int p, int j) {
  if (p >= k || j >= n) return 0;
  long at = (long)p * sk + (long)j * sn;
  return is_bf16 ? ((const uint16_t *)b)[at] : round_bf16_scalar(((const float *)b)[at]);
}

// One B tile in VNNI layout: row q holds (B[p0+2q][j0+c], B[p0+2q+1][j0+c]) for c = 0…15.
AMX_TARGET static void pack_b_tile(const void *b, int is_bf16, long sk, long sn, int k, int n, int p0, int j0, uint16_t *tile) {
  int full = p0 + 32 <= k && j0 + 16 <= n;
  if (full && sn == 1) {  // rows of B contiguous: interleave row pairs
    for (int q = 0; q < 16; q++) {
      long e = (long)(p0 + 2 * q) * sk + j0, o = e + sk;
      __m256i ev, ov;
      if (is_bf16) {
        ev = _mm256_loadu_si256((const __m256i *)((const uint16_t *)b + e));
        ov = _mm256_loadu_si256((const __m256i *)((const uint16_t *)b + o));
      } else {
        ev = bf16_from_f32x16((const float *)b + e);
        ov = bf16_from_f32x16((const float *)b + o);
      }
      _mm512_storeu_si512(tile + q * 32, interleave_bf16(ev, ov));
    }
  } else if (full && sk == 1) {  // columns of B contiguous (a weight stored (out, in)): transpose dwords
    __m512i rows[16];
    for (int c = 0; c < 16; c++) {
      long at = (long)(j0 + c) * sn + p0;
      rows[c] = is_bf16 ? _mm512_loadu_si512((const uint16_t *)b + at) : row_from_f32((const float *)b + at);
    }
    transpose16(rows);
    for (int q = 0; q < 16; q++) _mm512_storeu_si512(tile + q * 32, rows[q]);
  } else {
    for (int q = 0; q < 16; q++)
      for (int c = 0; c < 16; c++) {
        tile[q * 32 + 2 * c] = b_element(b, is_bf16, sk, sn, k, n, p0 + 2 * q, j0 + c);
        tile[q * 32 + 2 * c + 1] = b_element(b, is_bf16, sk, sn, k, n, p0 + 2 * q + 1, j0 + c);
      }
  }
}

// The B chunk for K blocks kb0… (nkb of them) and columns jc…jc_end: 32-column panels, each
// two 16-column halves of nkb tiles. With rows of B contiguous (dx = dy·W reads W so) the rows
// are swept whole, 2 × 256 columns at a time; tile by tile would read each row 32 bytes at a
// time, every read a cache miss.
AMX_TARGET static void pack_b_chunk(const void *b, int is_bf16, long sk, long sn, int k, int n, int kb0, int nkb,
                                    int jc, int jc_end, uint16_t *panels) {
  size_t panel_elems = 2 * (size_t)nkb * TILE_ELEMS;
  int groups = (jc_end - jc + 15) / 16;  // 16-column groups
  int sweep = sn == 1 && jc + 16 * groups == jc_end && jc_end <= n;
  for (int kb = 0; sweep && kb < nkb; kb++) {
    int p0 = (kb0 + kb) * 32;
    if (p0 + 32 > k) {  // the last, partial K block
      for (int g = 0; g < groups; g++)
        pack_b_tile(b, is_bf16, sk, sn, k, n, p0, jc + 16 * g,
                    panels + (size_t)(g / 2) * panel_elems + ((size_t)(g % 2) * nkb + kb) * TILE_ELEMS);
      continue;
    }
    for (int q = 0; q < 16; q++) {
      long even = (long)(p0 + 2 * q) * sk, odd = even + sk;
      for (int g = 0; g < groups; g++) {
        long col = jc + 16 * g;
        __m256i ev, ov;
        if (is_bf16) {
          ev = _mm256_loadu_si256((const __m256i *)((const uint16_t *)b + even + col));
          ov = _mm256_loadu_si256((const __m256i *)((const uint16_t *)b + odd + col));
        } else {
          ev = bf16_from_f32x16((const float *)b + even + col);
          ov = bf16_from_f32x16((const float *)b + odd + col);
        }
        uint16_t *tile = panels + (size_t)(g / 2) * panel_elems + ((size_t)(g % 2) * nkb + kb) * TILE_ELEMS;
        _mm512_storeu_si512(tile + q * 32, interleave_bf16(ev, ov));
      }
    }
  }
  // Otherwise group by group along K: each of a group's 16 columns is read as one stream.
  for (int g = 0; !sweep && g < groups; g++)
    for (int kb = 0; kb < nkb; kb++)
      pack_b_tile(b, is_bf16, sk, sn, k, n, (kb0 + kb) * 32, jc + 16 * g,
                  panels + (size_t)(g / 2) * panel_elems + ((size_t)(g % 2) * nkb + kb) * TILE_ELEMS);
}

// Moves a 16×16 float32 accumulator tile between a tile register and C through a bounce
// buffer in L1 (masked at the edges). The tile register must be an immediate, hence macros.
#define TILE_IN(t, row0, col0)                                                            \
  do {                                                                                    \
    int rows_ = m - (row0), cols_ = n1 - (col0);                                          \
    if (first || rows_ <= 0 || cols_ <= 0) { _tile_zero(t); break; }                      \
    copy_in(c + (long)(row0) * ldc + (col0), ldc, rows_ < 16 ? rows_ : 16, cols_ < 16 ? cols_ : 16, bounce); \
    _tile_loadd(t, bounce, 64);                                                           \
  } while (0)

AMX_TARGET static inline void copy_in(const float *c, long ldc, int rows, int cols, float *tile) {
  __mmask16 mask = (__mmask16)((1u << cols) - 1);
  for (int r = 0; r < 16; r++)
    _mm512_store_ps(tile + r * 16, r < rows ? _mm512_maskz_loadu_ps(mask, c + (long)r * ldc) : _mm512_setzero_ps());
}

// Stores go through the bounce buffer even for whole tiles: a tile store straight into C
// writes 16 lines 4·ldc bytes apart, which measured several times slower than storing to L1
// and copying rows out.
#define TILE_OUT(t, row0, col0)                                                           \
  do {                                                                                    \
    int rows_ = m - (row0), cols_ = n1 - (col0);                                          \
    if (rows_ <= 0 || cols_ <= 0) break;                                                  \
    _tile_stored(t, bounce, 64);                                                          \
    copy_out(bounce, c + (long)(row0) * ldc + (col0), ldc, rows_ < 16 ? rows_ : 16, cols_ < 16 ? cols_ : 16); \
  } while (0)

AMX_TARGET static inline void copy_out(const float *tile, float *c, long ldc, int rows, int cols) {
  __mmask16 mask = (__mmask16)((1u << cols) - 1);
  for (int r = 0; r < rows; r++) _mm512_mask_storeu_ps(c + (long)r * ldc, mask, _mm512_load_ps(tile + r * 16));
}

AMX_TARGET void pivot_amx_gemm_columns(const uint16_t *packed_a, int m, int k,
                                       const void *b, int b_is_bf16, long sk, long sn, int n0, int n1,
                                       float *c, long ldc, int accumulate, uint16_t *panels) {
  int m_blocks = ((m + 31) / 32) * 2, k_blocks = (k + 31) / 32;
  float bounce[256] __attribute__((aligned(64)));
  load_tile_config();
  for (int jc = n0; jc < n1; jc += NC_COLUMNS) {
    int jc_end = jc + NC_COLUMNS < n1 ? jc + NC_COLUMNS : n1;
    for (int kb0 = 0; kb0 < k_blocks; kb0 += KC_BLOCKS) {
      int nkb = k_blocks - kb0 < KC_BLOCKS ? k_blocks - kb0 : KC_BLOCKS;
      int first = kb0 == 0 && !accumulate;
      size_t panel_elems = 2 * (size_t)nkb * TILE_ELEMS;  // one 32-column panel: two 16-column halves
      pack_b_chunk(b, b_is_bf16, sk, sn, k, n1, kb0, nkb, jc, jc_end, panels);
      for (int mb = 0; mb < m_blocks; mb += 2) {
        int i0 = mb * 16;
        const uint16_t *a0 = packed_a + a_tile_offset(mb, kb0, k_blocks);
        const uint16_t *a1 = packed_a + a_tile_offset(mb + 1, kb0, k_blocks);
        // Row block outer, panels inner: C is written in runs of NC_COLUMNS floats per row.
        for (int j0 = jc; j0 < jc_end; j0 += 32) {
          const uint16_t *b0 = panels + (size_t)((j0 - jc) / 32) * panel_elems, *b1 = b0 + (size_t)nkb * TILE_ELEMS;
          TILE_IN(0, i0, j0);
          TILE_IN(1, i0, j0 + 16);
          TILE_IN(2, i0 + 16, j0);
          TILE_IN(3, i0 + 16, j0 + 16);
          for (int kb = 0; kb < nkb; kb++) {
            _tile_loadd(4, a0 + (size_t)kb * TILE_ELEMS, 64);
            _tile_loadd(5, a1 + (size_t)kb * TILE_ELEMS, 64);
            _tile_loadd(6, b0 + (size_t)kb * TILE_ELEMS, 64);
            _tile_loadd(7, b1 + (size_t)kb * TILE_ELEMS, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
          }
          TILE_OUT(0, i0, j0);
          TILE_OUT(1, i0, j0 + 16);
          TILE_OUT(2, i0 + 16, j0);
          TILE_OUT(3, i0 + 16, j0 + 16);
        }
      }
    }
  }
  _tile_release();
}

#else  // no AMX on this platform

int pivot_amx_available(void) { return 0; }
size_t pivot_amx_packed_a_count(int m, int k) { (void)m; (void)k; return 0; }
void pivot_amx_pack_a(const float *a, long rs, long cs, int m, int k, uint16_t *packed) {
  (void)a; (void)rs; (void)cs; (void)m; (void)k; (void)packed;
}
size_t pivot_amx_panel_count(void) { return 0; }
void pivot_amx_gemm_columns(const uint16_t *packed_a, int m, int k, const void *b, int b_is_bf16, long sk, long sn,
                            int n0, int n1, float *c, long ldc, int accumulate, uint16_t *panel) {
  (void)packed_a; (void)m; (void)k; (void)b; (void)b_is_bf16; (void)sk; (void)sn;
  (void)n0; (void)n1; (void)c; (void)ldc; (void)accumulate; (void)panel;
}

#endif
