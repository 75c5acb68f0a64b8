// Direct sparse convolution y = act(conv2d(x, W) + b + residual), CPU, float32, NCHW, groups 1,
// dilation 1 (Park et al. 2017, "Faster CNNs with direct sparse convolutions"; Escoin).
//
// W arrives as CSR over its GEMM view (O, C*KH*KW): column j = (ci * KH + kh) * KW + kw. Each
// call pads the input once into a buffer (the padding written as zeros), split for a width
// stride s > 1 into s column phases so every shifted input row is contiguous (input column
// ow * s + kw lives in phase kw % s at position ow + kw / s), and turns the columns into
// offsets into that buffer. An output plane (image, channel) is cut into 8-wide pieces (one
// output row, up to 8 columns);
// a work item holds up to 8 pieces in registers (8 x 8 floats) and runs through the channel's
// nonzeros: per nonzero one broadcast weight and one fused multiply-add of the shifted input
// vector per piece, so the input window, not the output, streams, and each output value is
// written once, with the epilogue (bias, residual, relu: the sparse linears' convention) applied
// as it leaves the register; GELU after (linear_common.h's finish). OpenMP splits the
// (image, channel, piece group) work items; small CNN inputs (16-64 channels, <= 34 x 34
// padded) stay in L2 across the output channels.
//
// Built per ISA variant (see sparseforge/kernels/extension.py): the 8-float vectors are GCC
// vector extensions lowered to one AVX register (avx2, with FMA) or two SSE ones (generic).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "linear_common.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

namespace {

struct Geometry {
  int64_t N, C, O, KH, KW, sh, sw, OH, OW;
  int64_t Hp, Wq;        // padded height; padded width per column phase
  int64_t plane_stride;  // floats per input channel of the phased, padded input (Hp * sw * Wq)
  int64_t row_stride;    // floats between output rows in the input: sh * sw * Wq
};

using sparseforge::load8;
using sparseforge::vf8;

// One 8-wide piece of an output plane: output row r, columns [c0, c0 + len), len <= 8.
struct Piece {
  int64_t src;  // offset of its first input value from the input's (image, nonzero) base
  int64_t dst;  // offset in the output plane
  int64_t len;
};

// NV pieces of output channel oc of one image held in registers across all of oc's nonzeros:
// per nonzero one broadcast and NV fused multiply-adds of shifted input vectors. Lanes past a
// piece's len read the padding slack and are dropped at the store.
template <int NV>
inline void tile(const Piece* pc, const float* __restrict xin, const float* __restrict val,
                 const int64_t* __restrict off, int64_t lo, int64_t hi, float init,
                 const float* res, bool relu, float* __restrict o) {
  vf8 acc[NV] = {};
  int64_t so[NV];
  for (int u = 0; u < NV; ++u) so[u] = pc[u].src;
  for (int64_t q = lo; q < hi; ++q) {
    const float v = val[q];
    const float* s = xin + off[q];
    for (int u = 0; u < NV; ++u) acc[u] += v * load8(s + so[u]);
  }
  for (int u = 0; u < NV; ++u) {
    float* dst = o + pc[u].dst;
    const float* r = res ? res + pc[u].dst : nullptr;
    for (int64_t i = 0; i < pc[u].len; ++i) {
      float y = acc[u][i] + init + (r ? r[i] : 0.0f);
      dst[i] = relu && y < 0.0f ? 0.0f : y;
    }
  }
}

// The same for a full tile of 8 / CPR whole output rows of CPR pieces each (OW <= 8 * CPR):
// the input vectors sit at compile-time steps from one row pointer, so no per-piece offsets
// compete with the accumulators for registers.
template <int CPR>
inline void tile_rows(const Piece* pc, const float* __restrict xin, const float* __restrict val,
                      const int64_t* __restrict off, int64_t lo, int64_t hi, int64_t row_stride,
                      float init, const float* res, bool relu, float* __restrict o) {
  constexpr int R = 8 / CPR;
  vf8 acc[8] = {};
  const float* base = xin + pc[0].src;
  for (int64_t q = lo; q < hi; ++q) {
    const float v = val[q];
    const float* s = base + off[q];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < CPR; ++c) acc[r * CPR + c] += v * load8(s + r * row_stride + 8 * c);
  }
  for (int u = 0; u < 8; ++u) {
    float* dst = o + pc[u].dst;
    const float* rr = res ? res + pc[u].dst : nullptr;
    for (int64_t i = 0; i < pc[u].len; ++i) {
      float y = acc[u][i] + init + (rr ? rr[i] : 0.0f);
      dst[i] = relu && y < 0.0f ? 0.0f : y;
    }
  }
}

constexpr int64_t kPiecesPerTile = 8;  // 8 accumulators of 8 floats: half the AVX2 registers

template <typename index_t>
void run(const Geometry& g, const index_t* crow, const int64_t* off, const float* val,
         const float* xph, const float* bias, const float* res, bool relu, float* out) {
  const int64_t plane = g.OH * g.OW;
  std::vector<Piece> pieces;  // the plane's pieces, row by row
  for (int64_t r = 0; r < g.OH; ++r)
    for (int64_t c0 = 0; c0 < g.OW; c0 += 8)
      pieces.push_back({r * g.row_stride + c0, r * g.OW + c0, std::min<int64_t>(8, g.OW - c0)});
  const int64_t np = static_cast<int64_t>(pieces.size());
  const int64_t cpr = (g.OW + 7) / 8;  // pieces per output row; tiles of 8 start at a row when
                                       // cpr divides 8
  const int64_t tiles = (np + kPiecesPerTile - 1) / kPiecesPerTile;
  const int64_t items = g.N * g.O * tiles;
  const int nthreads = at::get_num_threads();
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 4)
  for (int64_t it = 0; it < items; ++it) {
    const int64_t t = it % tiles, no = it / tiles, oc = no % g.O, n = no / g.O;
    const float* xin = xph + n * g.C * g.plane_stride;
    const float init = bias ? bias[oc] : 0.0f;
    const float* r = res ? res + no * plane : nullptr;
    float* o = out + no * plane;
    const int64_t lo = crow[oc], hi = crow[oc + 1];
    int64_t p = t * kPiecesPerTile;
    const int64_t pend = std::min(np, p + kPiecesPerTile);
    const Piece* pc = pieces.data();
    if (pend - p == 8) {
      if (cpr == 1) {
        tile_rows<1>(pc + p, xin, val, off, lo, hi, g.row_stride, init, r, relu, o);
      } else if (cpr == 2) {
        tile_rows<2>(pc + p, xin, val, off, lo, hi, g.row_stride, init, r, relu, o);
      } else if (cpr == 4) {
        tile_rows<4>(pc + p, xin, val, off, lo, hi, g.row_stride, init, r, relu, o);
      } else {
        tile<8>(pc + p, xin, val, off, lo, hi, init, r, relu, o);
      }
      continue;
    }
    // a short last tile in one pass over the channel's nonzeros (a 7 x 7 plane is 7 pieces)
    switch (pend - p) {
      case 7: tile<7>(pc + p, xin, val, off, lo, hi, init, r, relu, o); break;
      case 6: tile<6>(pc + p, xin, val, off, lo, hi, init, r, relu, o); break;
      case 5: tile<5>(pc + p, xin, val, off, lo, hi, init, r, relu, o); break;
      case 4: tile<4>(pc + p, xin, val, off, lo, hi, init, r, relu, o); break;
      case 3: tile<3>(pc + p, xin, val, off, lo, hi, init, r, relu, o); break;
      case 2: tile<2>(pc + p, xin, val, off, lo, hi, init, r, relu, o); break;
      default: tile<1>(pc + p, xin, val, off, lo, hi, init, r, relu, o);
    }
  }
}

// x (N, C, H, W) contiguous into the buffer (N, C, Hp, sw, Wq): padded, column phases. Every
// float of it is written (the padding as zeros), so the buffer need not be zeroed first: that
// second pass was 3% of a 90%-sparse ResNet-18 forward at batch 1 in torch.profiler; without
// it the stride-2 layers ran 1.06-1.17x faster side by side, the stride-1 ones the same.
void pad_and_phase(const at::Tensor& x, const Geometry& g, int64_t ph, int64_t pw, float* buf) {
  const int64_t H = x.size(2), W = x.size(3), planes = g.N * g.C, row = g.sw * g.Wq;
  const float* src = x.data_ptr<float>();
  const int nthreads = at::get_num_threads();
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t pl = 0; pl < planes; ++pl) {
    float* plane = buf + pl * g.plane_stride;
    std::fill(plane, plane + ph * row, 0.0f);  // top padding rows
    std::fill(plane + (ph + H) * row, plane + g.Hp * row, 0.0f);  // bottom padding rows
    for (int64_t i = 0; i < H; ++i) {
      const float* __restrict srow = src + (pl * H + i) * W;
      float* __restrict drow = plane + (i + ph) * row;
      for (int64_t f = 0; f < g.sw; ++f) {  // phase f: padded columns f, f + sw, ...
        float* __restrict d = drow + f * g.Wq;
        for (int64_t k = 0; k < g.Wq; ++k) {
          const int64_t j = f + k * g.sw - pw;  // input column
          d[k] = j >= 0 && j < W ? srow[j] : 0.0f;
        }
      }
    }
  }
}

int64_t pair_at(at::IntArrayRef v, int i, const char* name) {
  TORCH_CHECK(v.size() == 2, name, " must be two integers (h, w), got ", v);
  return v[i];
}

// Input offsets of the nonzeros (GEMM-view columns -> phased, padded input), checking ranges.
// One offset per column first (C * KH * KW of them), then a lookup per nonzero, split across
// threads: the divisions per nonzero, one thread, took longer than the convolution itself in
// ResNet-18's deep layers (512 -> 512 at 7 x 7, 90%: 236K nonzeros for 25K outputs).
template <typename index_t>
std::vector<int64_t> offsets(const index_t* col, int64_t nnz, const Geometry& g) {
  const int64_t K = g.C * g.KH * g.KW;
  std::vector<int64_t> of_col(K);
  for (int64_t j = 0; j < K; ++j) {
    const int64_t ci = j / (g.KH * g.KW), kh = (j / g.KW) % g.KH, kw = j % g.KW;
    of_col[j] = ci * g.plane_stride + kh * g.sw * g.Wq + (kw % g.sw) * g.Wq + kw / g.sw;
  }
  std::vector<int64_t> off(nnz);
  std::atomic<int64_t> bad{-1};
  at::parallel_for(0, nnz, 1 << 14, [&](int64_t lo, int64_t hi) {
    for (int64_t q = lo; q < hi; ++q) {
      const int64_t j = col[q];
      if (j < 0 || j >= K) {
        bad = q;
        return;
      }
      off[q] = of_col[j];
    }
  });
  const int64_t q = bad.load();
  TORCH_CHECK(q < 0, "col_indices[", q, "] = ", q < 0 ? 0 : static_cast<int64_t>(col[q]),
              " is outside the weight's in_channels * kh * kw = ", K,
              " columns: does x have the conv's in_channels?");
  return off;
}

at::Tensor sparse_conv2d(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                         const at::Tensor& values, const std::optional<at::Tensor>& bias,
                         at::IntArrayRef kernel_size, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation,
                         std::string_view activation, const std::optional<at::Tensor>& residual) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat, "x must be float32 (N, C, H, W)");
  TORCH_CHECK(values.dim() == 1 && values.scalar_type() == at::kFloat,
              "values must be float32 (nnz,)");
  TORCH_CHECK(crow.dim() == 1 && col.dim() == 1 && crow.scalar_type() == col.scalar_type(),
              "crow_indices and col_indices must be 1-D with one integer dtype");
  TORCH_CHECK(crow.size(0) >= 1, "crow_indices must be (out_channels + 1,)");
  TORCH_CHECK(col.size(0) == values.size(0), "one col index per value");
  TORCH_CHECK(pair_at(dilation, 0, "dilation") == 1 && pair_at(dilation, 1, "dilation") == 1,
              "dilation must be 1 for the direct sparse conv, got ", dilation,
              ": keep this layer dense or use SparseConv2d (im2col)");
  Geometry g{};
  g.N = x.size(0), g.C = x.size(1), g.O = crow.size(0) - 1;
  g.KH = pair_at(kernel_size, 0, "kernel_size"), g.KW = pair_at(kernel_size, 1, "kernel_size");
  g.sh = pair_at(stride, 0, "stride"), g.sw = pair_at(stride, 1, "stride");
  const int64_t ph = pair_at(padding, 0, "padding"), pw = pair_at(padding, 1, "padding");
  TORCH_CHECK(g.KH >= 1 && g.KW >= 1, "kernel_size must be >= 1, got ", kernel_size);
  TORCH_CHECK(g.sh >= 1 && g.sw >= 1, "stride must be >= 1, got ", stride);
  TORCH_CHECK(ph >= 0 && pw >= 0, "padding must be >= 0, got ", padding);
  const int64_t Hp = x.size(2) + 2 * ph, Wp = x.size(3) + 2 * pw;
  TORCH_CHECK(Hp >= g.KH && Wp >= g.KW, "input ", x.sizes(), " padded by ", padding,
              " is smaller than the kernel ", kernel_size);
  g.OH = (Hp - g.KH) / g.sh + 1, g.OW = (Wp - g.KW) / g.sw + 1;
  g.Hp = Hp, g.Wq = (Wp + g.sw - 1) / g.sw;
  g.plane_stride = Hp * g.sw * g.Wq, g.row_stride = g.sh * g.sw * g.Wq;

  // Padded once (right edge further to Wq * sw) into a buffer, split into column
  // phases, with kSlack floats after the last image: the 8-wide loads of a row's last piece
  // may run past the row (those lanes are dropped) and, for the last row, past the input.
  constexpr int64_t kSlack = 16;
  const int64_t xfloats = g.N * g.C * g.plane_stride;
  at::Tensor buf = at::empty({xfloats + kSlack}, x.options());
  buf.narrow(0, xfloats, kSlack).zero_();
  pad_and_phase(x.contiguous(), g, ph, pw, buf.data_ptr<float>());

  const at::Tensor b = sparseforge::checked_bias(bias, g.O);
  at::Tensor res;
  if (residual.has_value()) {
    TORCH_CHECK(residual->scalar_type() == at::kFloat &&
                    residual->sizes() == at::IntArrayRef({g.N, g.O, g.OH, g.OW}),
                "residual must be float32 shaped like the output (", g.N, ", ", g.O, ", ", g.OH,
                ", ", g.OW, "), got ", residual->scalar_type(), " ", residual->sizes());
    res = residual->contiguous();
  }
  const sparseforge::Activation act = sparseforge::parse_activation(activation);
  at::Tensor out = at::empty({g.N, g.O, g.OH, g.OW}, x.options());
  const at::Tensor v = values.contiguous(), cr = crow.contiguous(), cl = col.contiguous();
  const bool relu = act == sparseforge::Activation::kRelu;
  if (out.numel() > 0) {
    if (cr.scalar_type() == at::kInt) {
      TORCH_CHECK(cr[-1].item<int32_t>() == v.size(0), "crow_indices[-1] must equal nnz");
      const auto off = offsets(cl.data_ptr<int32_t>(), v.size(0), g);
      run(g, cr.data_ptr<int32_t>(), off.data(), v.data_ptr<float>(), buf.data_ptr<float>(),
          sparseforge::data_or_null(b), sparseforge::data_or_null(res), relu,
          out.data_ptr<float>());
    } else {
      TORCH_CHECK(cr.scalar_type() == at::kLong, "indices must be int32 or int64");
      TORCH_CHECK(cr[-1].item<int64_t>() == v.size(0), "crow_indices[-1] must equal nnz");
      const auto off = offsets(cl.data_ptr<int64_t>(), v.size(0), g);
      run(g, cr.data_ptr<int64_t>(), off.data(), v.data_ptr<float>(), buf.data_ptr<float>(),
          sparseforge::data_or_null(b), sparseforge::data_or_null(res), relu,
          out.data_ptr<float>());
    }
  }
  sparseforge::finish(out, act);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sparseforge, m) {
  m.def("_sparse_conv2d_" SF_STR(SF_ISA)
        "(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values, Tensor? bias, "
        "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
        "str activation=\"none\", Tensor? residual=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(sparseforge, CPU, m) {
  m.impl("_sparse_conv2d_" SF_STR(SF_ISA), &sparse_conv2d);
}
