// LANCE int8 Winograd convolution F(m x m, 3 x 3), m = 2 or 4, stride 1, CPU.
//
// Three phases, fused per job = (block of tiles, chunk of out channels), jobs split
// across threads by at::parallel_for (OpenMP), so V and the int32 products stay in cache:
//   1. input transform + quantize, per tile: V = B^T d B (fp32), q = round(V / v_scale[pos][c])
//      clamped to -127..127, stored per position as (tiles, Cs channels) rows of the block;
//   2. one int8 GEMM per transform position with int32 accumulation over channels,
//      acc[tile][pos] (kc) = V[pos] (tiles, Cs) x U[pos] (Cs, kc) (AMX tiles or registers);
//   3. per tile: M = acc * out_scale[pos][k], Y = A^T M A, + bias (+ residual), relu.
// Input and output are channels last (NHWC memory, NCHW shape): L channels of a pixel are one
// vector load or store; an NCHW input is converted once on entry (AVX-512: our own 16 x 16
// register transposes, to_channels_last).
// Input and output may also be PT2E's uint8 activations (its dequantize and quantize_per_tensor
// folded in by the fusion planner): a uint8 x is read as q - zero point (exact integers, so V
// is exact) and its scale goes into the V quantization (x_scale / v_scale); with y_scale the
// epilogue writes clamp(round(y / y_scale) + zero point, 0, 255). A quarter of the bytes of
// float32 on both sides, and no quantize / dequantize pass of their own.
// U arrives packed (a*a, Cs/4, Kp, 4) int8 (quant/winograd.py pack_weights): 16 out channels x
// 4 channels are one 64-byte row.
//
// Variants (SF_ISA, picked at run time by kernels/extension.py):
//   avx512_amx:  as avx512_vnni, but the GEMMs run on AMX tiles (tdpbusd, u8 x s8 -> s32).
//   avx512_vnni: V as uint8 (q + 128), vpdpbusd (u8 x s8 -> s32, 4 products per lane); the
//                +128 shift is undone by starting the accumulators at -128 * sum_c q_u
//                (-128 * u_sum; the AMX variant subtracts it in phase 3 instead).
//   avx2:        V as int16, U widened to int16, vpmaddwd (s16 x s16 -> s32, 2 per lane), as
//                ncnn's int8 Winograd does: vpmaddubsw would saturate its int16 pair sums.
//   generic:     V as int16, scalar int32 multiply-add.
// All four give the same int32 accumulators (every product and sum is exact).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#if defined(__AVX512VNNI__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(__AMX_INT8__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#ifndef SF_ISA
#error "build with -DSF_ISA=<variant name>"
#endif
#define SF_STR2(x) #x
#define SF_STR(x) SF_STR2(x)

namespace {

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define SF_VNNI 1
using vtype = uint8_t;  // q + 128
constexpr int32_t kShift = 128;
#else
#define SF_VNNI 0
using vtype = int16_t;
constexpr int32_t kShift = 0;
#endif
#if SF_VNNI && defined(__AMX_INT8__) && defined(__AMX_TILE__)
#define SF_AMX 1
#else
#define SF_AMX 0
#endif

// B^T and A^T of F(2,3) and F(4,3) are quant/winograd.py `transforms`, written out (factored)
// in apply_bt / apply_at below.

// Cs: channels rounded up to 4 (U's packing); Cv: the length of a V row in the block buffers
// (Cs; rounded up to 64 for AMX, whose tile rows are 64 bytes).
// xs: floats from one pixel of x to the next (C, or C rounded up to 16 from to_channels_last).
// xzp: the zero point of a uint8 input (0 for float32).
struct Problem {
  int64_t N, C, H, W, K, ph, pw, Ho, Wo, th, tw, P, Cs, Kp, Cv, xs;
  int32_t xzp;
};

// Channels per step of the transforms: one native vector of fp32 (a zmm; on AVX2 a ymm; two
// xmm on the generic build). Wider GCC vectors than the registers spill: 16-lane vectors
// made the AVX2 variant 1.1-1.7x slower.
constexpr int L = SF_VNNI ? 16 : 8;
typedef float vecf __attribute__((vector_size(4 * L)));
typedef int32_t veci __attribute__((vector_size(4 * L)));

#define SF_UNROLL _Pragma("GCC unroll 36")  // register arrays: GCC keeps them in registers
                                            // only when every loop over them is unrolled

inline vecf loadv(const float* p) {
  vecf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// r = B^T d over a vectors (F(2,3): a = 4, adds only; F(4,3): a = 6, factored so that every
// output is 2-3 adds/FMAs). Exact in fp32 for the test inputs (quarter integers), so the
// summation order is free.
template <int M>
inline void apply_bt(const vecf* d, int ds, vecf* r, int rs) {
  if constexpr (M == 2) {
    r[0] = d[0] - d[2 * ds]; r[rs] = d[ds] + d[2 * ds];
    r[2 * rs] = d[2 * ds] - d[ds]; r[3 * rs] = d[ds] - d[3 * ds];
  } else {
    const vecf d0 = d[0], d1 = d[ds], d2 = d[2 * ds], d3 = d[3 * ds], d4 = d[4 * ds], d5 = d[5 * ds];
    const vecf s12 = d1 + d2, s34 = d3 + d4, m12 = d1 - d2, m43 = d4 - d3, m42 = d4 - d2,
              m31 = d3 - d1;
    r[0] = (d4 - 5.0f * d2) + 4.0f * d0;
    r[rs] = s34 - 4.0f * s12;
    r[2 * rs] = m43 + 4.0f * m12;
    r[3 * rs] = m42 + 2.0f * m31;
    r[4 * rs] = m42 - 2.0f * m31;
    r[5 * rs] = (d5 - 5.0f * d3) + 4.0f * d1;
  }
}

// y = A^T m over a vectors into m outputs
template <int M>
inline void apply_at(const vecf* m, int ms, vecf* y, int ys) {
  if constexpr (M == 2) {
    y[0] = m[0] + m[ms] + m[2 * ms]; y[ys] = m[ms] - m[2 * ms] - m[3 * ms];
  } else {
    const vecf a = m[ms] + m[2 * ms], b = m[ms] - m[2 * ms], c = m[3 * ms] + m[4 * ms],
              e = m[3 * ms] - m[4 * ms];
    y[0] = m[0] + a + c; y[ys] = b + 2.0f * e; y[2 * ys] = a + 4.0f * c; y[3 * ys] = b + 8.0f * e + m[5 * ms];
  }
}

// q = clamp(round_half_even(v * inv), -127, 127) (+ kShift) for L lanes, the first n stored.
inline void quantize(vecf v, const float* inv, vtype* dst, int64_t n) {
#if SF_VNNI
  __m512 r = _mm512_mul_ps(static_cast<__m512>(v), _mm512_loadu_ps(inv));
  r = _mm512_min_ps(_mm512_set1_ps(127.0f), _mm512_max_ps(_mm512_set1_ps(-127.0f), r));
  const __m512i q = _mm512_cvt_roundps_epi32(r, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // -127..127 as int8, then + 128 as uint8 (flipping the sign bit)
  const __m128i u = _mm_xor_si128(_mm512_cvtepi32_epi8(q), _mm_set1_epi8(static_cast<char>(0x80)));
  if (n == L)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), u);
  else
    _mm_mask_storeu_epi8(dst, static_cast<__mmask16>((1u << n) - 1), u);
#elif defined(__AVX2__)
  __m256 r = _mm256_round_ps(_mm256_mul_ps(static_cast<__m256>(v), _mm256_loadu_ps(inv)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  r = _mm256_min_ps(_mm256_set1_ps(127.0f), _mm256_max_ps(_mm256_set1_ps(-127.0f), r));
  const __m256i q = _mm256_cvtps_epi32(r);
  // packs works per 128-bit lane: (q lo, q lo, q hi, q hi); the quarters 0 and 2 are the 8 int16
  const __m128i w = _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packs_epi32(q, q), 0xD8));
  if (n == L) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), w);
  } else {
    alignas(16) int16_t tmp[L];
    _mm_store_si128(reinterpret_cast<__m128i*>(tmp), w);
    std::memcpy(dst, tmp, n * sizeof(vtype));
  }
#else
  vtype q8[L];
  for (int l = 0; l < L; ++l) {
    float r = std::nearbyint(v[l] * inv[l]);  // half to even, like torch.round
    r = std::min(127.0f, std::max(-127.0f, r));
    q8[l] = static_cast<vtype>(static_cast<int32_t>(r) + kShift);
  }
  std::memcpy(dst, q8, n * sizeof(vtype));
#endif
}

// The first n of L floats at p, zero past them.
inline vecf load_n(const float* p, int64_t n) {
  if (n == L) return loadv(p);
#if SF_VNNI
  return static_cast<vecf>(_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p));
#else
  vecf v = {};
  for (int64_t l = 0; l < n; ++l) v[l] = p[l];
  return v;
#endif
}

// The first n of L uint8 at p minus the zero point, as fp32 (exact small integers), zero past
// them: a quantized input's real values over its scale, which the V scales take in.
inline vecf load_n(const uint8_t* p, int64_t n, int32_t zp) {
#if SF_VNNI
  const __mmask16 m = static_cast<__mmask16>((1u << n) - 1);
  const __m128i b = n == L ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)) : _mm_maskz_loadu_epi8(m, p);
  const __m512i q = _mm512_maskz_sub_epi32(m, _mm512_cvtepu8_epi32(b), _mm512_set1_epi32(zp));
  return static_cast<vecf>(_mm512_cvtepi32_ps(q));
#elif defined(__AVX2__)
  if (n == L) {
    const __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    return static_cast<vecf>(_mm256_cvtepi32_ps(_mm256_sub_epi32(q, _mm256_set1_epi32(zp))));
  }
#endif
  vecf v = {};
  for (int64_t l = 0; l < n; ++l) v[l] = static_cast<float>(static_cast<int32_t>(p[l]) - zp);
  return v;
}

inline vecf load_n(const float* p, int64_t n, int32_t /*zp*/) { return load_n(p, n); }

// L channels of pixel (yy, xx) of x (channels last), zero outside the image or past C.
template <typename TX>
inline vecf pixel(const Problem& s, const TX* x, int64_t n, int64_t yy, int64_t xx, int64_t c0,
                  int64_t cl) {
  if (yy < 0 || yy >= s.H || xx < 0 || xx >= s.W) return vecf{};
  return load_n(x + ((n * s.H + yy) * s.W + xx) * s.xs + c0, cl, s.xzp);  // NHWC: L values
}

// V of one tile and L channels: t = B^T d a column at a time as d is loaded (so d and t are
// not live together: 36 vectors, not 72, against 32 registers), then v = t B a row at a time,
// each row quantized and stored as it is made. load(i, j) gives d[i][j]; taken by reference:
// GCC does not inline this, and a closure passed by value was built with 8-byte stores and
// read back as one 32-byte load, a store-forwarding stall per tile and channel group (perf:
// ~14% of the AMX job loop's samples; 2-4% of the op's time, A/B on a Xeon).
template <int M, typename Load>
inline void tile_transform(const Load& load, const float* inv, int64_t inv_ld, vtype* dst,
                           int64_t dst_ld, int64_t cn) {
  constexpr int A = M + 2;
  vecf t[A][A];
  SF_UNROLL
  for (int j = 0; j < A; ++j) {
    vecf d[A];
    SF_UNROLL
    for (int i = 0; i < A; ++i) d[i] = load(i, j);
    apply_bt<M>(d, 1, &t[0][j], A);
  }
  SF_UNROLL
  for (int i = 0; i < A; ++i) {
    vecf v[A];
    apply_bt<M>(&t[i][0], 1, v, 1);
    SF_UNROLL
    for (int j = 0; j < A; ++j) quantize(v[j], inv + (i * A + j) * inv_ld, dst + (i * A + j) * dst_ld, cn);
  }
}

// Phase 1 for tiles [p0, p1): V (a*a, rows, Cv) quantized (rows >= p1 - p0); L channels of a
// pixel are one vector, so every transform step is an L-lane vector op on registers. Tiles
// wholly inside the image with L real channels take plain loads; the rest mask. TX: float, or
// uint8 (a quantized input: V is made from q - zero point, and inv holds x_scale / v_scale).
template <int M, typename TX>
void input_tiles(const Problem& s, const TX* x, const float* inv, vtype* V, int64_t p0,
                 int64_t p1, int64_t rows) {
  constexpr int A = M + 2;
  const int64_t inv_ld = s.Cs + L, dst_ld = rows * s.Cv;  // inv rows padded to Cs + L
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t n = p / (s.th * s.tw), ty = (p / s.tw) % s.th, tx = p % s.tw;
    const int64_t y0 = ty * M - s.ph, x0 = tx * M - s.pw;
    const bool interior = y0 >= 0 && y0 + A <= s.H && x0 >= 0 && x0 + A <= s.W;
    const TX* corner = interior ? x + ((n * s.H + y0) * s.W + x0) * s.xs : x;  // (y0, x0)
    for (int64_t c0 = 0; c0 < s.Cs; c0 += L) {
      const int64_t cl = std::max<int64_t>(0, std::min<int64_t>(L, s.C - c0));  // real channels
      const int64_t cn = std::min<int64_t>(L, s.Cs - c0);                        // stored channels
      vtype* dst = V + (p - p0) * s.Cv + c0;
      if (interior && cl == L) {
        const TX* base = corner + c0;
        tile_transform<M>([&](int i, int j) { return load_n(base + (i * s.W + j) * s.xs, L, s.xzp); },
                          inv + c0, inv_ld, dst, dst_ld, cn);
      } else {
        tile_transform<M>([&](int i, int j) { return pixel(s, x, n, y0 + i, x0 + j, c0, cl); },
                          inv + c0, inv_ld, dst, dst_ld, cn);
      }
    }
  }
}

// Phase 2 micro-kernels: acc rows [p, p + PT) x out channels [k0, k0 + 16 * NK) of one
// position. V: row p of that position; U: (Cb, Kp, 4) of that position, at column k0; init:
// what the accumulators start from at column k0 (the VNNI kernel's -kShift * u_sum, so the
// products need no correction afterwards; the others start from zero).
// U rows are prefetched into L2 kAhead channel groups ahead: one group's 16 * NK out channels
// are 64 * NK bytes and the next group's are Kp * 4 bytes on, so a 4 KB page holds only a few of
// them and the hardware prefetchers, which stop at page boundaries, fall behind. With U cold (as
// in a network, where other layers run in between) this made C = 512, 7x7 F(4,3) 1.2-1.9x and
// F(2,3) 1.13-1.17x faster with the VNNI kernel, 1.97x and 1.14x with the AVX2 one (A/B with
// fbgemm's conv run between calls); 64 and 128 groups ahead did alike, 8 ahead into L1 less
// well, and it cost nothing measurable at C = 64.
constexpr int64_t kAhead = 32;
#if defined(__AVX2__)
template <int NK>  // the NK 64-byte lines of U's channel group cb + kAhead (16 out channels each)
inline void prefetch_u(const int8_t* U, int64_t cb, int64_t Kp) {
  for (int j = 0; j < NK; ++j)
    _mm_prefetch(reinterpret_cast<const char*>(U + ((cb + kAhead) * Kp + 16 * j) * 4), _MM_HINT_T1);
}
#endif
#if SF_VNNI
template <int PT, int NK>
void micro(const vtype* V, int64_t Cs, const int8_t* U, int64_t Kp, const int32_t* init,
           int32_t* acc, int64_t ld) {
  __m512i c[PT][NK];
  SF_UNROLL
  for (int t = 0; t < PT; ++t)
    SF_UNROLL
    for (int j = 0; j < NK; ++j) c[t][j] = _mm512_loadu_si512(init + 16 * j);
  const int64_t Cb = Cs / 4;
  for (int64_t cb = 0; cb < Cb; ++cb) {
    __m512i u[NK];
    prefetch_u<NK>(U, cb, Kp);
    SF_UNROLL
    for (int j = 0; j < NK; ++j) u[j] = _mm512_loadu_si512(U + (cb * Kp + 16 * j) * 4);
    SF_UNROLL
    for (int t = 0; t < PT; ++t) {
      int32_t quad;
      std::memcpy(&quad, V + t * Cs + cb * 4, 4);
      const __m512i v = _mm512_set1_epi32(quad);
      SF_UNROLL
      for (int j = 0; j < NK; ++j) c[t][j] = _mm512_dpbusd_epi32(c[t][j], v, u[j]);
    }
  }
  SF_UNROLL
  for (int t = 0; t < PT; ++t)
    SF_UNROLL
    for (int j = 0; j < NK; ++j) _mm512_storeu_si512(acc + t * ld + 16 * j, c[t][j]);
}
constexpr int kPT = 6, kNK = 4;  // 24 zmm accumulators + 4 U rows + 1 broadcast
#elif defined(__AVX2__)
template <int PT, int NK>
void micro(const vtype* V, int64_t Cs, const int8_t* U, int64_t Kp, const int32_t* /*init*/,
           int32_t* acc, int64_t ld) {
  // per 4 out channels: 16 int8 (4 k x 4 c) widened to int16; madd with (v0 v1 v2 v3) x 4 gives
  // lanes [k:c01, k:c23] for the 4 k, summed pairwise when stored. Loops left rolled: unrolled
  // (SF_UNROLL), GCC ran out of the 16 ymm and carried an accumulator through the stack.
  __m256i c[PT][4 * NK];
  for (int t = 0; t < PT; ++t)
    for (int j = 0; j < 4 * NK; ++j) c[t][j] = _mm256_setzero_si256();
  const int64_t Cb = Cs / 4;
  for (int64_t cb = 0; cb < Cb; ++cb) {
    __m256i u[4 * NK];
    prefetch_u<NK>(U, cb, Kp);
    for (int j = 0; j < 4 * NK; ++j)
      u[j] = _mm256_cvtepi8_epi16(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(U + (cb * Kp + 4 * j) * 4)));
    for (int t = 0; t < PT; ++t) {
      int64_t quad;
      std::memcpy(&quad, V + t * Cs + cb * 4, 8);
      const __m256i v = _mm256_set1_epi64x(quad);
      for (int j = 0; j < 4 * NK; ++j) c[t][j] = _mm256_add_epi32(c[t][j], _mm256_madd_epi16(v, u[j]));
    }
  }
  for (int t = 0; t < PT; ++t)
    for (int j = 0; j < 4 * NK; ++j) {
      alignas(32) int32_t l[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(l), c[t][j]);
      for (int q = 0; q < 4; ++q) acc[t * ld + 4 * j + q] = l[2 * q] + l[2 * q + 1];
    }
}
constexpr int kPT = 2, kNK = 1;  // 8 ymm accumulators + 4 U rows + 1 broadcast
#else
template <int PT, int NK>
void micro(const vtype* V, int64_t Cs, const int8_t* U, int64_t Kp, const int32_t* /*init*/,
           int32_t* acc, int64_t ld) {
  int32_t c[PT][16 * NK] = {};
  for (int64_t ch = 0; ch < Cs; ++ch) {
    const int8_t* u = U + (ch / 4) * Kp * 4 + ch % 4;
    for (int t = 0; t < PT; ++t) {
      const int32_t v = V[t * Cs + ch];
      for (int k = 0; k < 16 * NK; ++k) c[t][k] += v * static_cast<int32_t>(u[k * 4]);
    }
  }
  for (int t = 0; t < PT; ++t)
    for (int k = 0; k < 16 * NK; ++k) acc[t * ld + k] = c[t][k];
}
constexpr int kPT = 4, kNK = 1;
#endif

template <int PT>
void micro_k(const vtype* V, int64_t Cs, const int8_t* U, int64_t Kp, const int32_t* init,
             int32_t* acc, int64_t ld, int64_t nk) {
  switch (nk) {  // out-channel blocks of 16 left in this block (at most kNK)
    case 1: return micro<PT, 1>(V, Cs, U, Kp, init, acc, ld);
#if SF_VNNI
    case 2: return micro<PT, 2>(V, Cs, U, Kp, init, acc, ld);
    case 3: return micro<PT, 3>(V, Cs, U, Kp, init, acc, ld);
    case 4: return micro<PT, 4>(V, Cs, U, Kp, init, acc, ld);
#endif
    default: TORCH_CHECK(false, "internal: bad out-channel block");
  }
}

template <int PT>
void rows(const vtype* V, int64_t Cs, const int8_t* U, int64_t Kp, const int32_t* init,
          int32_t* acc, int64_t ld, int64_t pt, int64_t nk) {
  if constexpr (PT > 1) {
    if (pt < PT) return rows<PT - 1>(V, Cs, U, Kp, init, acc, ld, pt, nk);
  }
  micro_k<PT>(V, Cs, U, Kp, init, acc, ld, nk);
}

// Phase 2 for one block of nt tiles (nrows rows per position in the buffers) and out channels
// [k0, k1): acc (nrows, a*a, k1 - k0) = V (a*a, nrows, Cv) x U (a*a, Cv, Kp) on those columns
// (a tile's a*a products side by side, as the output transform reads them).
#if SF_AMX
// AMX: tiles 0-3 accumulate 32 V rows x 32 out channels (16 x 16 int32 each), 4-5 hold V rows
// (16 x 64 channels, u8), 6-7 U (16 groups of 4 channels x 16 out channels, s8: the packing of
// U is already the tile layout). nrows is a multiple of 16, Cv of 64, k1 - k0 of 16.
constexpr int64_t kRowStep = 16;

// palette 1, tiles 0-7 all 16 rows x 64 bytes. Static storage: GCC drops stores to a local
// config before ldtilecfg as dead (it does not see the instruction read them).
struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
const TileConfig kTileConfig = {1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

void amx_begin() {
  static const bool permitted = [] {
    constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;  // arch_prctl(ARCH_REQ_XCOMP_PERM)
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
  }();
  TORCH_CHECK(permitted, "the kernel could not enable AMX tiles (arch_prctl refused); use the "
              "avx512_vnni variant");
  _tile_loadconfig(&kTileConfig);
}

void gemm_block(const Problem& s, int A2, const vtype* V, int64_t nrows, int64_t /*nt*/,
                const int8_t* U, const int32_t* /*init: output_tiles corrects*/, int32_t* acc,
                int64_t k0, int64_t k1) {
  const int64_t kc = k1 - k0, steps = s.Cv / 64, bs = s.Kp * 4, ldc = A2 * kc;
  for (int xi = 0; xi < A2; ++xi) {
    const vtype* Vx = V + xi * nrows * s.Cv;
    const int8_t* Ux = U + xi * (s.Cv / 4) * s.Kp * 4;
    int32_t* accx = acc + xi * kc;
    for (int64_t k = k0; k < k1; k += 32) {
      const bool two_k = k + 32 <= k1;
      for (int64_t p = 0; p < nrows; p += 32) {
        const bool two_p = p + 32 <= nrows;
        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
        for (int64_t st = 0; st < steps; ++st) {
          const int8_t* u = Ux + (st * 16 * s.Kp + k) * 4;
          _tile_loadd(4, Vx + p * s.Cv + st * 64, s.Cv);
          _tile_loadd(6, u, bs);
          _tile_dpbusd(0, 4, 6);
          if (two_k) {
            _tile_loadd(7, u + 64, bs);
            _tile_dpbusd(1, 4, 7);
          }
          if (two_p) {
            _tile_loadd(5, Vx + (p + 16) * s.Cv + st * 64, s.Cv);
            _tile_dpbusd(2, 5, 6);
            if (two_k) _tile_dpbusd(3, 5, 7);
          }
        }
        int32_t* c = accx + p * ldc + (k - k0);
        _tile_stored(0, c, ldc * 4);
        if (two_k) _tile_stored(1, c + 16, ldc * 4);
        if (two_p) {
          _tile_stored(2, c + 16 * ldc, ldc * 4);
          if (two_k) _tile_stored(3, c + 16 * ldc + 16, ldc * 4);
        }
      }
    }
  }
}
#else
constexpr int64_t kRowStep = kPT;

void gemm_block(const Problem& s, int A2, const vtype* V, int64_t nrows, int64_t nt,
                const int8_t* U, const int32_t* init, int32_t* acc, int64_t k0, int64_t k1) {
  const int64_t kc = k1 - k0, ldc = A2 * kc;
  for (int xi = 0; xi < A2; ++xi) {
    const vtype* Vx = V + xi * nrows * s.Cv;
    int32_t* accx = acc + xi * kc;
    for (int64_t k = k0; k < k1; k += 16 * kNK) {
      const int64_t nk = std::min<int64_t>(kNK, (k1 - k) / 16);
      const int8_t* Ux = U + xi * s.Cs * s.Kp + k * 4;
      for (int64_t p = 0; p < nt; p += kPT) {
        const int64_t pt = std::min<int64_t>(kPT, nt - p);
        rows<kPT>(Vx + p * s.Cv, s.Cs, Ux, s.Kp, init + xi * s.Kp + k, accx + p * ldc + (k - k0),
                  ldc, pt, nk);
      }
    }
  }
}
#endif

// rows per position in a block's buffers for nt tiles (AMX loads V 16 rows at a time)
int64_t block_rows(int64_t nt) { return (nt + kRowStep - 1) / kRowStep * kRowStep; }

// Where phase 3 writes: float32, or uint8 quantized per tensor (q8 set) as PT2E's
// quantize_per_tensor does: clamp(round_half_even(y * (1 / scale)) + zero point, 0, 255).
struct Output {
  float* f32;
  uint8_t* q8;
  float inv_scale, zero_point;
};

// Stores the first n of L values of y at index `at` of the output.
inline void store_n(const Output& out, int64_t at, vecf y, int64_t n) {
  if (out.q8) {
    vecf r = y * out.inv_scale;
#if SF_VNNI
    r = static_cast<vecf>(_mm512_roundscale_ps(static_cast<__m512>(r), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(__AVX2__)
    r = static_cast<vecf>(_mm256_round_ps(static_cast<__m256>(r), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
    for (int l = 0; l < L; ++l) r[l] = std::nearbyint(r[l]);
#endif
    r += out.zero_point;
    r = r < 0.0f ? vecf{} : r;
    r = r > 255.0f ? vecf{} + 255.0f : r;
    const veci q = __builtin_convertvector(r, veci);  // 0..255
#if SF_VNNI
    _mm_mask_storeu_epi8(out.q8 + at, static_cast<__mmask16>((1u << n) - 1),
                         _mm512_cvtepi32_epi8((__m512i)q));  // same 64 bytes
#else
    for (int64_t l = 0; l < n; ++l) out.q8[at + l] = static_cast<uint8_t>(q[l]);
#endif
    return;
  }
  float* o = out.f32 + at;
  if (n == L) {
    std::memcpy(o, &y, sizeof y);
  } else {
#if SF_VNNI
    _mm512_mask_storeu_ps(o, static_cast<__mmask16>((1u << n) - 1), static_cast<__m512>(y));
#else
    for (int64_t l = 0; l < n; ++l) o[l] = y[l];
#endif
  }
}

// Phase 3 for tiles [p0, p1) and out channels [kb, k1): dequantize, Y = A^T M A, bias,
// residual (channels last, as the output), relu
// (L out channels per vector step), stored channels last. acc is the block's (rows, a*a, k1 - kb);
// only the AMX GEMM leaves the +kShift correction (kShift * u_sum) to this step.
template <int M>
void output_tiles(const Problem& s, const int32_t* acc, const int32_t* u_sum, const float* oscale,
                  const float* bias, const float* residual, bool relu, const Output& out,
                  int64_t p0, int64_t p1, int64_t kb, int64_t k1) {
  constexpr int A = M + 2;
  const int64_t kc = k1 - kb;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t n = p / (s.th * s.tw), ty = (p / s.tw) % s.th, tx = p % s.tw;
    for (int64_t k0 = kb; k0 < std::min(s.K, k1); k0 += L) {
      const int64_t kn = std::min<int64_t>(L, s.K - k0);
      // t = A^T m a column of m at a time, as it is dequantized, so m and t are not live
      // together (30 vectors, not 60, against 32 registers; with all of m made first, GCC
      // spilled it to the stack)
      vecf t[M][A];
      SF_UNROLL
      for (int j = 0; j < A; ++j) {
        vecf m[A];
        SF_UNROLL
        for (int i = 0; i < A; ++i) {
          const int xi = i * A + j;
          // k1 is a multiple of 16, so k0 + 16 <= k1: always readable
          veci a;
          std::memcpy(&a, acc + ((p - p0) * A * A + xi) * kc + (k0 - kb), sizeof a);
          if constexpr (SF_AMX) {
            veci us;
            std::memcpy(&us, u_sum + xi * s.Kp + k0, sizeof us);
            a -= kShift * us;
          }
          m[i] = __builtin_convertvector(a, vecf) * loadv(oscale + xi * s.Kp + k0);
        }
        apply_at<M>(m, 1, &t[0][j], A);
      }
      vecf b = {};
      if (bias) {
        float bl[L];
        for (int l = 0; l < L; ++l) bl[l] = bias[std::min<int64_t>(k0 + l, s.K - 1)];
        b = loadv(bl);
      }
      SF_UNROLL
      for (int i = 0; i < M; ++i) {  // y = t A: A^T applied to each row of t
        vecf y[M];
        apply_at<M>(&t[i][0], 1, y, 1);
        const int64_t yy = ty * M + i;
        if (yy >= s.Ho) break;
        SF_UNROLL
        for (int j = 0; j < M; ++j) {
          const int64_t xx = tx * M + j;
          if (xx >= s.Wo) break;
          vecf v = y[j] + b;
          const int64_t at = ((n * s.Ho + yy) * s.Wo + xx) * s.K + k0;  // NHWC: L floats
          if (residual) v += load_n(residual + at, kn);
          if (relu) v = v < 0.0f ? vecf{} : v;  // NaN stays NaN, as torch.relu
          store_n(out, at, v, kn);
        }
      }
    }
  }
}

#if SF_VNNI
// dst rows 0..15 (stride ds) = columns of the 16 x 16 block at src (stride ss): rows past nr
// read as zero, columns past nc are not read, dst rows past nc not written.
inline void transpose16(const float* src, int64_t ss, int64_t nr, int64_t nc, float* dst, int64_t ds) {
  const __mmask16 cols = static_cast<__mmask16>((1u << nc) - 1);
  __m512 r[16], t[16];
  SF_UNROLL
  for (int i = 0; i < 16; ++i)
    r[i] = i < nr ? _mm512_maskz_loadu_ps(cols, src + i * ss) : _mm512_setzero_ps();
  SF_UNROLL
  for (int i = 0; i < 8; ++i) {  // pairs of rows interleaved per 128-bit lane
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  SF_UNROLL
  for (int i = 0; i < 4; ++i) {  // r[4i + j], lane l: rows 4i..4i+3 at column 4l + j
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]),
                  c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  SF_UNROLL
  for (int j = 0; j < 4; ++j) {  // 4 x 4 transpose of 128-bit lanes: column 4l + j, all rows
    const __m512 v0 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x44),
                 v1 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xEE),
                 v2 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x44),
                 v3 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xEE);
    const __m512 out[4] = {_mm512_shuffle_f32x4(v0, v2, 0x88), _mm512_shuffle_f32x4(v0, v2, 0xDD),
                           _mm512_shuffle_f32x4(v1, v3, 0x88), _mm512_shuffle_f32x4(v1, v3, 0xDD)};
    SF_UNROLL
    for (int l = 0; l < 4; ++l)
      if (4 * l + j < nc) _mm512_storeu_ps(dst + (4 * l + j) * ds, out[l]);
  }
}

// NCHW -> channels last (what x.contiguous(ChannelsLast) gives), 16 x 16 register transposes,
// in parallel over (image, 256 pixels); per job the channel groups are the outer loop, so the
// reads are 16 sequential streams (pixel-group outer was 3x slower). 0.14 ms for 8 x 64 x 56 x 56
// on 2 threads of an AMD EPYC, where torch's copy takes 0.54 ms.
at::Tensor to_channels_last(const at::Tensor& x) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), C16 = (C + 15) / 16 * 16;
  // pixels padded to 16 channels, so every transpose stores whole vectors
  at::Tensor buf = at::empty({N, x.size(2), x.size(3), C16}, x.options());
  const float* src = x.data_ptr<float>();
  float* dst = buf.data_ptr<float>();
  constexpr int64_t kGroups = 16;  // of 16 pixels per job
  const int64_t groups = (HW + 15) / 16, chunks = (groups + kGroups - 1) / kGroups;
  at::parallel_for(0, N * chunks, 1, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t n = j / chunks, ga = (j % chunks) * kGroups, gb = std::min(groups, ga + kGroups);
      for (int64_t c0 = 0; c0 < C; c0 += 16)
        for (int64_t g = ga; g < gb; ++g)
          transpose16(src + (n * C + c0) * HW + g * 16, HW, std::min<int64_t>(16, C - c0),
                      std::min<int64_t>(16, HW - g * 16), dst + (n * HW + g * 16) * C16 + c0, C16);
    }
  });
  return buf.permute({0, 3, 1, 2}).narrow(1, 0, C);  // pixels C16 floats apart (Problem::xs)
}
#endif

// x_scale / v_scale (a*a rows of Cs + L; x_scale is 1 for a float32 input), and u_sum,
// out_scale and the GEMM's accumulator start -kShift * u_sum (a*a rows of Kp), zero-padded so
// the L-lane loops never read past a row.
// Plain loops: as ATen ops (reciprocal, zeros, narrow, copy, mul) they cost ~60 us a call,
// which a whole ResNet-18 pays at each of its 13 Winograd layers.
struct RowTables {
  std::vector<float> inv, oscale;
  std::vector<int32_t> u_sum, init;
};

RowTables row_tables(const Problem& s, int A2, const at::Tensor& vs, const at::Tensor& us,
                     const at::Tensor& os, float x_scale) {
  RowTables r{std::vector<float>(A2 * (s.Cs + L)), std::vector<float>(A2 * s.Kp),
              std::vector<int32_t>(A2 * s.Kp), std::vector<int32_t>(A2 * s.Kp)};
  const float* v = vs.data_ptr<float>();
  const float* o = os.data_ptr<float>();
  const int32_t* u = us.data_ptr<int32_t>();
  for (int xi = 0; xi < A2; ++xi) {
    for (int64_t c = 0; c < s.C; ++c) r.inv[xi * (s.Cs + L) + c] = 1.0f / v[xi * s.C + c] * x_scale;
    for (int64_t k = 0; k < s.K; ++k) {
      r.oscale[xi * s.Kp + k] = o[xi * s.K + k];
      r.u_sum[xi * s.Kp + k] = u[xi * s.K + k];
      r.init[xi * s.Kp + k] = -kShift * u[xi * s.K + k];
    }
  }
  return r;
}

// Jobs: (block of tiles, chunk of out channels); each thread transforms its block's input
// tiles once (kept while its next job is the same block), multiplies, and writes the block's
// outputs, so V and the int32 products stay in its L2 instead of going to memory. Blocks are
// as large as the V and product budgets allow (each block reads all of U once, which is what
// wide layers with few tiles are bound by); out channels are chunked to fit the product
// budget and so that every thread has jobs when there are few blocks (batch 1, small images).
constexpr int64_t kVBytes = 768 * 1024, kAccBytes = 512 * 1024;

struct Jobs {
  int64_t tiles, kc;  // tiles per block, out channels per chunk
};

// How evenly at::parallel_for's static split (T contiguous ranges of ceil(jobs / T) jobs)
// spreads blocks of `tiles` tiles x chunks of kc out channels: all work / (T x the busiest
// thread's work), work = tiles x channels of each job.
double balance(int64_t P, int64_t tiles, int64_t Kp, int64_t kc, int64_t T) {
  const int64_t chunks = (Kp + kc - 1) / kc, jobs = (P + tiles - 1) / tiles * chunks;
  const int64_t per = (jobs + T - 1) / T;
  int64_t total = 0, busiest = 0;
  for (int64_t j0 = 0; j0 < jobs; j0 += per) {
    int64_t work = 0;
    for (int64_t j = j0; j < std::min(jobs, j0 + per); ++j) {
      const int64_t b = j / chunks, c = j % chunks;
      work += (std::min(P, (b + 1) * tiles) - b * tiles) * (std::min(Kp, (c + 1) * kc) - c * kc);
    }
    total += work;
    busiest = std::max(busiest, work);
  }
  return static_cast<double>(total) / static_cast<double>(T * busiest);
}

Jobs plan_jobs(const Problem& s, int A2) {
  const int64_t g = 16 * kNK;  // the micro-kernel's out-channel width
  const int64_t v_row = A2 * s.Cv * static_cast<int64_t>(sizeof(vtype));  // V bytes per tile
  const int64_t acc_row = A2 * std::min(s.Kp, g) * 4;  // product bytes per tile, narrowest chunk
  const int64_t most = std::max<int64_t>(kRowStep, std::min({s.P, kVBytes / v_row, kAccBytes / acc_row}));
  int64_t blocks = (s.P + most - 1) / most;
  const int64_t threads = at::get_num_threads(), want = 2 * threads;
  // Too few blocks for the threads: split the tiles or the out channels. Threads that share a
  // block each transform all of its tiles; every block reads all of U. So split the tiles
  // while a block's tiles outweigh U's width (x4: a tile's transform costs more per channel
  // than reading a channel's U row), e.g. 49 tiles at C = K = 128, 28x28, F(4,3), batch 1
  // (1.3-1.4x with AMX or VNNI on a Xeon), but not 64 tiles at C = K = 512, 7x7, batch 8,
  // where U is 4-9 MB.
  if (blocks < want && s.P / blocks * 4 >= s.Kp)
    blocks = std::max(blocks, std::min(want, (s.P + kRowStep - 1) / kRowStep));
  // equal blocks (a ragged last block would leave its thread idle), in whole micro-kernel rows
  const int64_t tiles = block_rows((s.P + blocks - 1) / blocks);
  int64_t kc = std::max<int64_t>(g, kAccBytes / (A2 * tiles * 4) / g * g);
  if (blocks < want) {  // then split the channels so every thread has jobs
    const int64_t parts = (want + blocks - 1) / blocks;
    kc = std::min(kc, std::max<int64_t>(g, ((s.Kp + parts - 1) / parts + g - 1) / g * g));
  }
  kc = std::min(kc, s.Kp);
  // blocks down to half the size when they spread more evenly over the threads: e.g. 27 jobs
  // on 2 threads keep one idle for a job's time (C = 64, 56x56, batch 8, F(4,3): 27 jobs -> 38);
  // further where the split is badly uneven and U is small (more blocks, more reads of U): 196
  // tiles as 64 + 64 + 64 + 4 -> 16-tile blocks at C = 64, 56x56, F(4,3), batch 1 (1.5x with
  // AMX on a Xeon)
  int64_t best = tiles;
  double most_even = balance(s.P, tiles, s.Kp, kc, threads);
  const bool small_u = A2 * s.Cv * s.Kp <= (1 << 20);
  const int64_t fewest = most_even < 0.9 && small_u ? kRowStep : std::max(kRowStep, tiles / 2);
  for (int64_t t = tiles - kRowStep; t >= fewest; t -= kRowStep) {
    const double b = balance(s.P, t, s.Kp, kc, threads);
    if (b > most_even + 0.01) {
      best = t;
      most_even = b;
    }
  }
  return {best, kc};
}

template <int M, typename TX>
void run(const Problem& s, const at::Tensor& x, float x_scale, const at::Tensor& up,
         const at::Tensor& us, const at::Tensor& vs, const at::Tensor& os, const at::Tensor& b,
         bool relu, const at::Tensor& r, const Output& o) {
  constexpr int A2 = (M + 2) * (M + 2);
  const RowTables rt = row_tables(s, A2, vs, us, os, x_scale);  // fp32 1 / scale, as the reference
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  const float* rp = r.defined() ? r.data_ptr<float>() : nullptr;
  const auto [tiles, kc] = plan_jobs(s, A2);
  // AMX reads U in whole tiles of 64 channels: pad its channel groups with zeros when needed
  const at::Tensor uv = s.Cv == s.Cs ? up : at::constant_pad_nd(up, {0, 0, 0, 0, 0, (s.Cv - s.Cs) / 4});
  const int8_t* u = uv.data_ptr<int8_t>();
  const TX* xp = x.data_ptr<TX>();
  const int64_t blocks = (s.P + tiles - 1) / tiles, chunks = (s.Kp + kc - 1) / kc;
  at::parallel_for(0, blocks * chunks, 1, [&](int64_t j0, int64_t j1) {
#if SF_AMX
    amx_begin();
#endif
    // uninitialised (a std::vector would zero ~0.3 MB per thread per call): every V and product
    // entry that is read is written first, but AMX's padding rows and channels, whose products
    // are never stored out (and meet U's zero padding)
    const std::unique_ptr<vtype[]> V(new vtype[A2 * tiles * s.Cv]);
    const std::unique_ptr<int32_t[]> acc(new int32_t[A2 * tiles * kc]);
    int64_t have = -1;  // the tile block whose V is in the buffer
    for (int64_t job = j0; job < j1; ++job) {
      const int64_t blk = job / chunks, k0 = (job % chunks) * kc;
      const int64_t k1 = std::min(s.Kp, k0 + kc);
      const int64_t p0 = blk * tiles, p1 = std::min(s.P, p0 + tiles);
      const int64_t rows = block_rows(p1 - p0);
      if (blk != have) {
        input_tiles<M, TX>(s, xp, rt.inv.data(), V.get(), p0, p1, rows);
        have = blk;
      }
      gemm_block(s, A2, V.get(), rows, p1 - p0, u, rt.init.data(), acc.get(), k0, k1);
      output_tiles<M>(s, acc.get(), rt.u_sum.data(), rt.oscale.data(), bp, rp, relu, o, p0, p1,
                      k0, k1);
    }
#if SF_AMX
    _tile_release();
#endif
  });
}

at::Tensor winograd_int8_conv2d(const at::Tensor& x_in, const at::Tensor& u_packed,
                                const at::Tensor& u_sum, const at::Tensor& v_scale,
                                const at::Tensor& out_scale, const std::optional<at::Tensor>& bias,
                                int64_t tile, at::IntArrayRef padding, bool relu,
                                const std::optional<at::Tensor>& residual, double x_scale,
                                int64_t x_zero_point, std::optional<double> y_scale,
                                int64_t y_zero_point) {
  TORCH_CHECK(tile == 2 || tile == 4, "tile must be 2 (F(2,3)) or 4 (F(4,3)), got ", tile);
  const bool q8 = x_in.scalar_type() == at::kByte;
  TORCH_CHECK(x_in.dim() == 4 && (q8 || x_in.scalar_type() == at::kFloat),
              "x must be float32 or uint8 (N, C, H, W), got ", x_in.scalar_type());
  TORCH_CHECK(q8 || (x_scale == 1.0 && x_zero_point == 0),
              "x_scale and x_zero_point describe a uint8 x; x is float32");
  TORCH_CHECK(!q8 || (x_scale > 0 && x_zero_point >= 0 && x_zero_point <= 255),
              "a uint8 x needs x_scale > 0 and x_zero_point in 0..255");
  TORCH_CHECK(!y_scale || (*y_scale > 0 && y_zero_point >= 0 && y_zero_point <= 255),
              "y_scale must be > 0 and y_zero_point in 0..255");
  TORCH_CHECK(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0, "padding must be [ph, pw] >= 0");
  const int64_t A2 = (tile + 2) * (tile + 2);
#if SF_VNNI
  const bool nchw = !q8 && x_in.is_contiguous() && !x_in.is_contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor x = nchw ? to_channels_last(x_in) : x_in.contiguous(at::MemoryFormat::ChannelsLast);
#else
  constexpr bool nchw = false;
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
#endif
  Problem s{};
  s.N = x.size(0); s.C = x.size(1); s.H = x.size(2); s.W = x.size(3);
  s.xs = nchw ? (s.C + 15) / 16 * 16 : s.C;
  s.xzp = static_cast<int32_t>(x_zero_point);
  s.K = out_scale.size(1); s.ph = padding[0]; s.pw = padding[1];
  s.Ho = s.H + 2 * s.ph - 2; s.Wo = s.W + 2 * s.pw - 2;
  TORCH_CHECK(s.Ho >= 1 && s.Wo >= 1, "input smaller than the 3x3 kernel after padding");
  s.th = (s.Ho + tile - 1) / tile; s.tw = (s.Wo + tile - 1) / tile; s.P = s.N * s.th * s.tw;
  TORCH_CHECK(u_packed.scalar_type() == at::kChar && u_packed.dim() == 4 && u_packed.size(0) == A2 &&
                  u_packed.size(1) == (s.C + 3) / 4 && u_packed.size(3) == 4 &&
                  u_packed.size(2) % 16 == 0 && u_packed.size(2) >= s.K,
              "u_packed must be int8 (a*a, ceil(C/4), Kp, 4) from pack_weights, got ",
              u_packed.scalar_type(), " ", u_packed.sizes());
  s.Cs = u_packed.size(1) * 4; s.Kp = u_packed.size(2);
  s.Cv = SF_AMX ? (s.Cs + 63) / 64 * 64 : s.Cs;
  TORCH_CHECK(u_sum.scalar_type() == at::kInt && u_sum.sizes() == at::IntArrayRef({A2, s.K}),
              "u_sum must be int32 (a*a, K)");
  TORCH_CHECK(v_scale.scalar_type() == at::kFloat && v_scale.sizes() == at::IntArrayRef({A2, s.C}),
              "v_scale must be float32 (a*a, C)");
  TORCH_CHECK(out_scale.scalar_type() == at::kFloat && out_scale.dim() == 2 && out_scale.size(0) == A2,
              "out_scale must be float32 (a*a, K)");
  at::Tensor b;
  if (bias.has_value()) {
    b = bias->contiguous();
    TORCH_CHECK(b.scalar_type() == at::kFloat && b.numel() == s.K, "bias must be float32 (K,)");
  }
  at::Tensor r;  // added before relu, read as the output is written: channels last
  if (residual.has_value()) {
    TORCH_CHECK(residual->scalar_type() == at::kFloat &&
                    residual->sizes() == at::IntArrayRef({s.N, s.K, s.Ho, s.Wo}),
                "residual must be float32 shaped like the output (", s.N, ", ", s.K, ", ", s.Ho,
                ", ", s.Wo, "), got ", residual->scalar_type(), " ", residual->sizes());
    r = residual->contiguous(at::MemoryFormat::ChannelsLast);
  }
  const at::Tensor up = u_packed.contiguous(), us = u_sum.contiguous(), vs = v_scale.contiguous(),
                   os = out_scale.contiguous();
  // float32 out, or uint8 with y_scale (PT2E's quantize_per_tensor folded in)
  at::Tensor out = at::empty({s.N, s.K, s.Ho, s.Wo}, x.options().dtype(y_scale ? at::kByte : at::kFloat)
                                                         .memory_format(at::MemoryFormat::ChannelsLast));
  const Output o = y_scale ? Output{nullptr, out.data_ptr<uint8_t>(), static_cast<float>(1.0 / *y_scale),
                                    static_cast<float>(y_zero_point)}
                           : Output{out.data_ptr<float>(), nullptr, 0.0f, 0.0f};
  const float xs = static_cast<float>(x_scale);
  if (q8) {
    (tile == 2 ? run<2, uint8_t> : run<4, uint8_t>)(s, x, xs, up, us, vs, os, b, relu, r, o);
  } else {
    (tile == 2 ? run<2, float> : run<4, float>)(s, x, xs, up, us, vs, os, b, relu, r, o);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sparseforge, m) {
  m.def("_winograd_int8_conv2d_" SF_STR(SF_ISA)
        "(Tensor x, Tensor u_packed, Tensor u_sum, Tensor v_scale, Tensor out_scale, "
        "Tensor? bias, int tile, int[] padding, bool relu, Tensor? residual=None, "
        "float x_scale=1.0, int x_zero_point=0, float? y_scale=None, int y_zero_point=0) -> Tensor",
        {at::Tag::flexible_layout});  // any memory format in: see winograd_ops.py
}

TORCH_LIBRARY_IMPL(sparseforge, CPU, m) {
  m.impl("_winograd_int8_conv2d_" SF_STR(SF_ISA), &winograd_int8_conv2d);
}
