// What every sparse linear kernel here shares: the ISA-variant naming, the float32 (..., K)
// input flattened to rows, the checked bias, and the output reshaped back to (..., N).
#pragma once

#include <ATen/ATen.h>

#include <optional>
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

inline const float* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<float>() : nullptr;
}

// out (B, N) -> (..., N) with the leading dims of x.
inline at::Tensor output_like(const at::Tensor& out, const at::Tensor& x, int64_t out_features) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out_features;
  return out.reshape(shape);
}

}  // namespace sparseforge
