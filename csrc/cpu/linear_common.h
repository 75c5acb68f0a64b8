// What every sparse linear kernel here shares: the ISA-variant naming, the float32 (..., K)
// input flattened to rows, the checked bias and residual, the epilogue, and the output
// reshaped back to (..., N).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string_view>
#include <vector>

#ifndef SF_ISA
#error "build with -DSF_ISA=<variant name>"
#endif
#define SF_STR2(x) #x
#define SF_STR(x) SF_STR2(x)

namespace sparseforge {

// x (..., K) float32 -> contiguous (B, K).
inline at::Tensor input_rows(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 1 && x.scalar_type() == at::kFloat, "x must be float32 (..., K)");
  return x.reshape({-1, x.size(-1)}).contiguous();
}

// The optional bias as a contiguous float32 (N,) tensor, or an undefined tensor.
inline at::Tensor checked_bias(const std::optional<at::Tensor>& bias, int64_t out_features) {
  if (!bias.has_value()) return at::Tensor();
  at::Tensor b = bias->contiguous();
  TORCH_CHECK(b.scalar_type() == at::kFloat && b.numel() == out_features, "bias must be (N,)");
  return b;
}

// The optional residual, shaped like the output (..., N) of x (..., K), as a contiguous float32
// (B, N) tensor, or an undefined tensor.
inline at::Tensor checked_residual(const std::optional<at::Tensor>& residual, const at::Tensor& x,
                                   int64_t out_features) {
  if (!residual.has_value()) return at::Tensor();
  const at::Tensor& r = *residual;
  std::vector<int64_t> want(x.sizes().begin(), x.sizes().end());
  want.back() = out_features;
  TORCH_CHECK(r.scalar_type() == at::kFloat && r.sizes().vec() == want,
              "residual must be float32 shaped like the output ", at::IntArrayRef(want), ", got ",
              r.scalar_type(), " ", r.sizes());
  return r.reshape({-1, out_features}).contiguous();
}

inline const float* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<float>() : nullptr;
}

// out (B, N) -> (..., N) with the leading dims of x.
inline at::Tensor output_like(const at::Tensor& out, const at::Tensor& x, int64_t out_features) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out_features;
  return out.reshape(shape);
}

// The activation of the epilogue: relu, GELU exact (erf) or GELU tanh, as torch defines them.
enum class Activation { kNone, kRelu, kGelu, kGeluTanh };

inline Activation parse_activation(std::string_view name) {
  if (name == "none") return Activation::kNone;
  if (name == "relu") return Activation::kRelu;
  if (name == "gelu") return Activation::kGelu;
  if (name == "gelu_tanh") return Activation::kGeluTanh;
  TORCH_CHECK(false, "activation must be 'none', 'relu', 'gelu' (erf) or 'gelu_tanh', got '",
              std::string(name), "'");
}

// y[b, n] = act(acc + bias[n] + residual[b, n]). Bias, residual and relu are applied as each
// output value leaves the accumulators (registers or the thread's cache-resident tile), never as
// a pass over memory. GELU is not: a scalar erf / tanh per value there measured 1.7x (erf) and
// 3x (tanh) slower than the kernel then ATen's vectorized GELU (BSR 768x3072 at 90%, batch 32),
// so `finish` applies it to the whole output in place, in the same op, after the kernel.
struct Epilogue {
  const float* bias = nullptr;      // (N,) or nullptr
  const float* residual = nullptr;  // (B, N) row-major or nullptr
  Activation act = Activation::kNone;
  int64_t N = 0;

  // One output value (kernels that write outputs one at a time).
  inline float operator()(float acc, int64_t b, int64_t n) const {
    float v = acc;
    if (bias) v += bias[n];
    if (residual) v += residual[b * N + n];
    return act == Activation::kRelu && v < 0.0f ? 0.0f : v;
  }

  // A run of outputs o[0:len] = columns [n0, n0 + len) of batch row b from acc[0:len]: one
  // branch-free (vectorizable) loop per step.
  inline void row(float* __restrict o, const float* __restrict acc, int64_t b, int64_t n0,
                  int64_t len) const {
    if (bias) {
      for (int64_t r = 0; r < len; ++r) o[r] = acc[r] + bias[n0 + r];
    } else {
      for (int64_t r = 0; r < len; ++r) o[r] = acc[r];
    }
    if (residual) {
      const float* __restrict res = residual + b * N + n0;
      for (int64_t r = 0; r < len; ++r) o[r] += res[r];
    }
    if (act == Activation::kRelu)
      for (int64_t r = 0; r < len; ++r) o[r] = o[r] > 0.0f ? o[r] : 0.0f;
  }
};

// Eight floats as one value; GCC lowers it to one AVX register or two SSE ones per variant.
typedef float vf8 __attribute__((vector_size(32)));

inline vf8 load8(const float* p) {
  vf8 v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

inline void store8(float* p, vf8 v) { __builtin_memcpy(p, &v, sizeof v); }

// The part of the epilogue applied after the kernel: GELU (exact or tanh), in place.
inline void finish(at::Tensor& out, Activation act) {
  if (act == Activation::kGelu) at::gelu_(out, "none");
  if (act == Activation::kGeluTanh) at::gelu_(out, "tanh");
}

}  // namespace sparseforge
