// Dense linear for a few rows, y = act(x @ W^T + b + residual), CPU, float32: up to
// GEMV_MAX_ROWS rows of x, the weight streamed once by every thread (gemv.h says why and how);
// GELU after the kernel (linear_common.h's finish). More rows go to at::linear (MKL), with the
// same epilogue applied after.
//
// Built per ISA variant (see sparseforge/kernels/extension.py): with -mavx2 -mfma and without;
// SF_ISA names the variant, so each registers its own op sparseforge::_gemv_linear_<isa>.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "gemv.h"
#include "linear_common.h"

namespace {

at::Tensor gemv_linear(const at::Tensor& x, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, std::string_view activation,
                       const std::optional<at::Tensor>& residual) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kFloat,
              "weight must be float32 (out_features, in_features)");
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == K, "x must be (..., ", K, ") to match the weight (",
              N, ", ", K, "), got ", x.sizes());
  const at::Tensor x2 = sparseforge::input_rows(x);
  const at::Tensor w = weight.contiguous();
  const at::Tensor b = sparseforge::checked_bias(bias, N);
  const at::Tensor res = sparseforge::checked_residual(residual, x, N);
  const sparseforge::Epilogue ep{sparseforge::data_or_null(b), sparseforge::data_or_null(res),
                                 sparseforge::parse_activation(activation), N};
  const int64_t B = x2.size(0);
  at::Tensor out;
  if (B > sparseforge::GEMV_MAX_ROWS) {  // blocked GEMM, then the epilogue as tensor ops
    out = b.defined() ? at::addmm(b, x2, w.t()) : at::mm(x2, w.t());
    if (res.defined()) out.add_(res);
    if (ep.act == sparseforge::Activation::kRelu) out.relu_();
  } else {
    out = at::empty({B, N}, x.options());
    sparseforge::gemv({w.data_ptr<float>(), x2.data_ptr<float>(), ep, out.data_ptr<float>(), B, K, N});
  }
  sparseforge::finish(out, ep.act);
  return sparseforge::output_like(out, x, N);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sparseforge, m) {
  m.def("_gemv_linear_" SF_STR(SF_ISA)
        "(Tensor x, Tensor weight, Tensor? bias, str activation=\"none\", "
        "Tensor? residual=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(sparseforge, CPU, m) {
  m.impl("_gemv_linear_" SF_STR(SF_ISA), &gemv_linear);
}
