"""Every sparseforge op, on one `torch.library` fragment: schema, fake (meta) implementation for
torch.compile / torch.export, the CPU implementation (the C++ kernel, built on first call) and a
pure-PyTorch `*_reference` twin that defines what the op computes."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from sparseforge.formats import BCR, CSR, NM
from sparseforge.formats.bsr import from_tiles

from . import extension

lib = torch.library.Library("sparseforge", "FRAGMENT")

# --- Epilogue of the sparse linears ---------------------------------------------------------
# Every sparse linear op takes `activation` and `residual` after its own arguments and returns
# y = act(x @ W^T + b + residual): the residual (shaped like the output) is added before the
# activation, and both are applied by the C++ kernel as outputs leave its accumulators (the
# lowering pass, graph/lower.py, folds a following add / relu / gelu into the op this way).
# act: 'none', 'relu', 'gelu' (exact, erf: F.gelu's default) or 'gelu_tanh' (F.gelu(...,
# approximate='tanh')).
ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh")
_EPILOGUE_SCHEMA = 'str activation="none", Tensor? residual=None'


def epilogue_reference(y: Tensor, activation: str = "none", residual: Tensor | None = None) -> Tensor:
    """act(y + residual), in PyTorch: what the kernels' epilogue computes."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if residual is not None:
        y = y + residual
    if activation == "relu":
        return torch.relu(y)
    if activation in ("gelu", "gelu_tanh"):
        return F.gelu(y, approximate="tanh" if activation == "gelu_tanh" else "none")
    return y


def _check_epilogue(out_shape: tuple, activation: str, residual: Tensor | None) -> None:
    torch._check(activation in ACTIVATIONS,
                 lambda: f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if residual is not None:
        torch._check(tuple(residual.shape) == tuple(out_shape),
                     lambda: f"residual {tuple(residual.shape)} must be shaped like the output "
                             f"{tuple(out_shape)}")


lib.define(
    "bsr_linear(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values_t, "
    f"Tensor? bias, int out_features, {_EPILOGUE_SCHEMA}) -> Tensor"
)


def bsr_linear_reference(
    x: Tensor, crow_indices: Tensor, col_indices: Tensor, values_t: Tensor,
    bias: Tensor | None, out_features: int, activation: str = "none", residual: Tensor | None = None,
) -> Tensor:
    """y = act(x @ W^T + b + residual) (see `epilogue_reference`) with W (out_features, K = x.shape[-1]) in BSR: block row i holds tiles
    `values_t[crow[i]:crow[i+1]]` at block columns `col_indices[...]`, each tile stored
    transposed (bw, bh) as the kernel reads it. Densifies W, then F.linear."""
    _, bw, bh = values_t.shape
    nbr, nbc = crow_indices.numel() - 1, -(-x.shape[-1] // bw)
    counts = (crow_indices[1:] - crow_indices[:-1]).long()  # (nbr,)
    brow = torch.repeat_interleave(torch.arange(nbr, device=x.device), counts)  # (nblocks,)
    tiles = values_t.new_zeros(nbr, nbc, bh, bw)
    tiles[brow, col_indices.long()] = values_t.transpose(1, 2)
    weight = from_tiles(tiles, out_features, x.shape[-1])  # (N, K)
    return epilogue_reference(F.linear(x, weight, bias), activation, residual)


@torch.library.register_fake("sparseforge::bsr_linear", lib=lib)
def _bsr_linear_fake(
    x: Tensor, crow_indices: Tensor, col_indices: Tensor, values_t: Tensor,
    bias: Tensor | None, out_features: int, activation: str = "none", residual: Tensor | None = None,
) -> Tensor:
    torch._check(values_t.dim() == 3, lambda: "values_t must be (nblocks, bw, bh)")
    _check_epilogue((*x.shape[:-1], out_features), activation, residual)
    return x.new_empty((*x.shape[:-1], out_features))  # (..., N)


def _bsr_linear_cpu(
    x: Tensor, crow_indices: Tensor, col_indices: Tensor, values_t: Tensor,
    bias: Tensor | None, out_features: int, activation: str = "none", residual: Tensor | None = None,
) -> Tensor:
    op = extension.kernel("bsr_linear")
    return op(x, crow_indices, col_indices, values_t, bias, out_features, activation, residual)


lib.impl("bsr_linear", _bsr_linear_cpu, "CPU")


def bsr_linear(
    x: Tensor, crow_indices: Tensor, col_indices: Tensor, values_t: Tensor,
    bias: Tensor | None, out_features: int, activation: str = "none", residual: Tensor | None = None,
) -> Tensor:
    """`torch.ops.sparseforge.bsr_linear`: the fast CPU path of `bsr_linear_reference`."""
    return eager_op("bsr_linear", x)(
        x, crow_indices, col_indices, values_t, bias, out_features, activation, residual
    )


# --- BCR (GRIM) -----------------------------------------------------------------------------
# Arguments are the BCR fields (sparseforge.formats.BCR) with one change: each stored block's
# (kr, kc) tile is stored transposed, (kc, kr), so the kernel's inner loop is an axpy over the
# kept output rows. block_ids (nstored,) int32/int64: block_row * ceil(K / c) + block_col, grouped
# by tile shape; group_shapes (G, 2) = (kr, kc); group_ptr (G + 1,); row_indices (sum kr,) and
# col_indices (sum kc,): kept positions inside each block (uint8, or wider for blocks over 256);
# values_t (sum kr * kc,) float32; block_rows, block_cols = (r, c).

lib.define(
    "bcr_linear(Tensor x, Tensor block_ids, Tensor group_shapes, Tensor group_ptr, "
    "Tensor row_indices, Tensor col_indices, Tensor values_t, Tensor? bias, int out_features, "
    f"int block_rows, int block_cols, {_EPILOGUE_SCHEMA}) -> Tensor"
)


def bcr_tiles_t(values: Tensor, group_shapes: Tensor, group_ptr: Tensor, *,
                inverse: bool = False) -> Tensor:
    """BCR values with every (kr, kc) tile transposed to (kc, kr) (or back, `inverse`)."""
    out, at = [], 0
    for g, (kr, kc) in enumerate(group_shapes.tolist()):
        nb = int(group_ptr[g + 1]) - int(group_ptr[g])
        shape = (nb, kc, kr) if inverse else (nb, kr, kc)
        out.append(values[at:at + nb * kr * kc].reshape(shape).transpose(1, 2).reshape(-1))
        at += nb * kr * kc
    return torch.cat(out) if out else values.clone()


def bcr_linear_reference(
    x: Tensor, block_ids: Tensor, group_shapes: Tensor, group_ptr: Tensor, row_indices: Tensor,
    col_indices: Tensor, values_t: Tensor, bias: Tensor | None, out_features: int,
    block_rows: int, block_cols: int, activation: str = "none", residual: Tensor | None = None,
) -> Tensor:
    """y = act(x @ W^T + b + residual) with W (out_features, K = x.shape[-1]) in BCR, tiles transposed as the
    kernel reads them (see above). Densifies W through `BCR.to_dense`, then F.linear."""
    values = bcr_tiles_t(values_t, group_shapes, group_ptr, inverse=True)
    fmt = BCR((out_features, x.shape[-1]), (block_rows, block_cols), block_ids, group_shapes,
              group_ptr, row_indices, col_indices, values)
    return epilogue_reference(F.linear(x, fmt.to_dense(), bias), activation, residual)


@torch.library.register_fake("sparseforge::bcr_linear", lib=lib)
def _bcr_linear_fake(
    x: Tensor, block_ids: Tensor, group_shapes: Tensor, group_ptr: Tensor, row_indices: Tensor,
    col_indices: Tensor, values_t: Tensor, bias: Tensor | None, out_features: int,
    block_rows: int, block_cols: int, activation: str = "none", residual: Tensor | None = None,
) -> Tensor:
    torch._check(values_t.dim() == 1, lambda: "values_t must be (sum kr * kc,)")
    torch._check(group_shapes.dim() == 2, lambda: "group_shapes must be (G, 2)")
    _check_epilogue((*x.shape[:-1], out_features), activation, residual)
    return x.new_empty((*x.shape[:-1], out_features))  # (..., N)


def _bcr_linear_cpu(*args: object) -> Tensor:
    return extension.kernel("bcr_linear")(*args)


lib.impl("bcr_linear", _bcr_linear_cpu, "CPU")


def bcr_linear(
    x: Tensor, block_ids: Tensor, group_shapes: Tensor, group_ptr: Tensor, row_indices: Tensor,
    col_indices: Tensor, values_t: Tensor, bias: Tensor | None, out_features: int,
    block_rows: int, block_cols: int, activation: str = "none", residual: Tensor | None = None,
) -> Tensor:
    """`torch.ops.sparseforge.bcr_linear`: the fast CPU path of `bcr_linear_reference`."""
    return eager_op("bcr_linear", x)(
        x, block_ids, group_shapes, group_ptr, row_indices, col_indices, values_t, bias,
        out_features, block_rows, block_cols, activation, residual,
    )


# --- CSR (unstructured) ---------------------------------------------------------------------
# Arguments are the CSR fields (sparseforge.formats.CSR): crow_indices (N + 1,), col_indices
# (nnz,) int32 or int64, values (nnz,) float32.

lib.define(
    "csr_linear(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values, Tensor? bias, "
    f"int out_features, {_EPILOGUE_SCHEMA}) -> Tensor"
)


def csr_linear_reference(
    x: Tensor, crow_indices: Tensor, col_indices: Tensor, values: Tensor, bias: Tensor | None,
    out_features: int, activation: str = "none", residual: Tensor | None = None,
) -> Tensor:
    """y = act(x @ W^T + b + residual) with W (out_features, K = x.shape[-1]) in CSR: row n holds `values[
    crow[n]:crow[n+1]]` at columns `col_indices[...]`. Densifies W, then F.linear."""
    fmt = CSR((out_features, x.shape[-1]), crow_indices, col_indices, values)
    return epilogue_reference(F.linear(x, fmt.to_dense(), bias), activation, residual)


@torch.library.register_fake("sparseforge::csr_linear", lib=lib)
def _csr_linear_fake(
    x: Tensor, crow_indices: Tensor, col_indices: Tensor, values: Tensor, bias: Tensor | None,
    out_features: int, activation: str = "none", residual: Tensor | None = None,
) -> Tensor:
    torch._check(values.dim() == 1, lambda: "values must be (nnz,)")
    _check_epilogue((*x.shape[:-1], out_features), activation, residual)
    return x.new_empty((*x.shape[:-1], out_features))  # (..., N)


def _csr_linear_cpu(*args: object) -> Tensor:
    return extension.kernel("csr_linear")(*args)


lib.impl("csr_linear", _csr_linear_cpu, "CPU")


def csr_linear(
    x: Tensor, crow_indices: Tensor, col_indices: Tensor, values: Tensor, bias: Tensor | None,
    out_features: int, activation: str = "none", residual: Tensor | None = None,
) -> Tensor:
    """`torch.ops.sparseforge.csr_linear`: the fast CPU path of `csr_linear_reference`."""
    return eager_op("csr_linear", x)(
        x, crow_indices, col_indices, values, bias, out_features, activation, residual
    )


def bound_kernel(name: str) -> torch._ops.OpOverload:
    """The compiled C++ op behind `sparseforge::<name>` on this CPU (`sparseforge::_<name>_<isa>`,
    best ISA, built now), with `name`'s fake impl, so a graph can call the kernel itself instead
    of going through `name`'s Python CPU impl (graph/lower.py binds the calls it lowers to it).
    Same schema and results; `name` is one of the sparse linears, `sparse_conv2d`,
    `sparse_input_linear` or `winograd_int8_conv2d`."""
    fakes = _BOUND_FAKES
    if name not in fakes:
        raise ValueError(f"no bound kernel for {name!r}; choose from {sorted(fakes)}")
    op = extension.kernel(name, file=KERNEL_FILES.get(name), variants=_variants(name))
    if op._qualified_op_name not in _BOUND:
        torch.library.register_fake(op._qualified_op_name, fakes[name], lib=lib)
        _BOUND.add(op._qualified_op_name)
    return op.default


def eager_op(name: str, x: Tensor) -> Callable[..., Tensor]:
    """The op an eager call of `sparseforge::<name>` on `x` runs: on the CPU outside
    torch.compile / export (whose graphs keep the public op), the C++ kernel itself
    (`bound_kernel`), which skips the trip through the dispatcher into the op's Python CPU impl
    (about 10 us a call on a Xeon); else the public op, which falls back where the kernel
    cannot."""
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return getattr(torch.ops.sparseforge, name)
    op = _EAGER.get(name)
    if op is None and kernel_builds(name):
        op = _EAGER[name] = bound_kernel(name)
    return op if op is not None else getattr(torch.ops.sparseforge, name)


_EAGER: dict[str, torch._ops.OpOverload] = {}  # eager_op's kernels, once built
_BOUND: set[str] = set()  # C++ ops given a fake impl in this process
# sparse kernel -> its fake impl, for `bound_kernel` (nm_linear below and sparse_conv2d in
# conv_ops.py add themselves)
_BOUND_FAKES: dict = {"bsr_linear": _bsr_linear_fake, "bcr_linear": _bcr_linear_fake,
                      "csr_linear": _csr_linear_fake}
KERNEL_FILES: dict[str, str] = {}  # kernel -> its csrc/cpu file where the names differ
KERNEL_VARIANTS: dict[str, tuple[str, ...]] = {}  # kernel -> its ISA variants, if not the default


def _variants(name: str) -> tuple[str, ...]:
    return KERNEL_VARIANTS.get(name, extension.DEFAULT_VARIANTS)


def kernel_builds(name: str) -> bool:
    """Whether the C++ kernel behind `sparseforge::<name>` builds on this CPU (warns once if not)."""
    return extension.kernel_available(name, file=KERNEL_FILES.get(name), variants=_variants(name))


def cpu_kernel_runs(x: Tensor, name: str) -> bool:
    """Whether a module calls `sparseforge::<name>` on `x` rather than the op's reference: x is
    float32 on the CPU and the C++ kernel builds here (warns once if not). Under torch.compile
    the op stays an opaque call (its fake impl gives the shape) and the build check is left to
    eager calls, so it never breaks the graph."""
    return (x.device.type == "cpu" and x.dtype == torch.float32
            and (torch.compiler.is_compiling() or kernel_builds(name)))


# --- Activation sparsity (ProSparse-style ReLU / FATReLU FFNs) -------------------------------
# The zeros are in the activation, not the weight: a zero a[:, k] skips row k of W^T (K, N),
# so weights arrive transposed (W^T, row-major), transposed once at deploy. Both ops are built
# from csrc/cpu/act_sparse_ffn.cpp and run on CUDA through Triton (triton_act_sparse.py).

ACT_SPARSE_FILE = "act_sparse_ffn"  # csrc/cpu/act_sparse_ffn.cpp defines both ops
KERNEL_FILES["sparse_input_linear"] = ACT_SPARSE_FILE
KERNEL_FILES["relu_gated_ffn"] = ACT_SPARSE_FILE
# input_threshold: the prologue FATReLU(a, threshold), applied as the kernel scans a for zeros
lib.define(f"sparse_input_linear(Tensor a, Tensor weight_t, Tensor? bias, {_EPILOGUE_SCHEMA}, "
           "float? input_threshold=None) -> Tensor")
lib.define(
    "relu_gated_ffn(Tensor x, Tensor w_gate, Tensor w_up, Tensor w_down_t, float threshold) "
    "-> Tensor"
)


def fatrelu(v: Tensor, threshold: float) -> Tensor:
    """FATReLU: v where v >= threshold, else 0 (threshold 0 is ReLU; NaN gives 0)."""
    return torch.where(v >= threshold, v, torch.zeros_like(v))


def sparse_input_linear_reference(a: Tensor, weight_t: Tensor, bias: Tensor | None,
                                  activation: str = "none", residual: Tensor | None = None,
                                  input_threshold: float | None = None) -> Tensor:
    """y = act(a' @ W^T + b + residual) for a (..., K), a' = a or FATReLU(a, input_threshold),
    and weight_t = W^T (K, N) (see `epilogue_reference`): F.linear, zeros and all."""
    if input_threshold is not None:
        a = fatrelu(a, input_threshold)
    return epilogue_reference(F.linear(a, weight_t.t(), bias), activation, residual)  # (..., N)


def relu_gated_ffn_reference(
    x: Tensor, w_gate: Tensor, w_up: Tensor, w_down_t: Tensor, threshold: float
) -> Tensor:
    """y = (FATReLU(x Wg^T) * (x Wu^T)) Wd^T for x (..., H), w_gate and w_up (I, H), w_down_t =
    Wd^T (I, N): the dense gated FFN (LLaMA's MLP with SiLU replaced by FATReLU)."""
    h = fatrelu(F.linear(x, w_gate), threshold) * F.linear(x, w_up)  # (..., I)
    return F.linear(h, w_down_t.t())  # (..., N)


@torch.library.register_fake("sparseforge::sparse_input_linear", lib=lib)
def _sparse_input_linear_fake(a: Tensor, weight_t: Tensor, bias: Tensor | None,
                              activation: str = "none", residual: Tensor | None = None,
                              input_threshold: float | None = None) -> Tensor:
    torch._check(weight_t.dim() == 2, lambda: "weight_t must be W^T, (K, N)")
    torch._check(a.shape[-1] == weight_t.shape[0], lambda: "a (..., K) needs weight_t (K, N)")
    _check_epilogue((*a.shape[:-1], weight_t.shape[1]), activation, residual)
    return a.new_empty((*a.shape[:-1], weight_t.shape[1]))  # (..., N)


@torch.library.register_fake("sparseforge::relu_gated_ffn", lib=lib)
def _relu_gated_ffn_fake(
    x: Tensor, w_gate: Tensor, w_up: Tensor, w_down_t: Tensor, threshold: float
) -> Tensor:
    torch._check(w_gate.dim() == 2 and w_up.dim() == 2 and w_down_t.dim() == 2,
                 lambda: "w_gate, w_up (I, H) and w_down_t (I, N) must be matrices")
    torch._check(x.shape[-1] == w_gate.shape[1], lambda: "x (..., H) needs w_gate (I, H)")
    return x.new_empty((*x.shape[:-1], w_down_t.shape[1]))  # (..., N)


def _sparse_input_linear_cpu(a: Tensor, weight_t: Tensor, bias: Tensor | None,
                             activation: str = "none", residual: Tensor | None = None,
                             input_threshold: float | None = None) -> Tensor:
    return extension.kernel("sparse_input_linear", file=ACT_SPARSE_FILE)(
        a, weight_t, bias, activation, residual, input_threshold)


def _relu_gated_ffn_cpu(
    x: Tensor, w_gate: Tensor, w_up: Tensor, w_down_t: Tensor, threshold: float
) -> Tensor:
    return extension.kernel("relu_gated_ffn", file=ACT_SPARSE_FILE)(x, w_gate, w_up, w_down_t, threshold)


def _triton_kernels(op: str) -> ModuleType:
    from . import triton_act_sparse  # imported here: keeps `import sparseforge` free of triton

    if not triton_act_sparse.has_triton():
        raise RuntimeError(f"sparseforge::{op} on CUDA runs Triton kernels and triton is not "
                           f"installed; pip install triton, or call {op}_reference")
    return triton_act_sparse


def _sparse_input_linear_cuda(a: Tensor, weight_t: Tensor, bias: Tensor | None,
                              activation: str = "none", residual: Tensor | None = None,
                              input_threshold: float | None = None) -> Tensor:
    # the Triton kernel splits K across programs (atomic adds), so the epilogue runs after it
    if input_threshold is not None:
        a = fatrelu(a, input_threshold)
    y = _triton_kernels("sparse_input_linear").sparse_input_linear(a, weight_t, bias)
    return epilogue_reference(y, activation, residual)


def _relu_gated_ffn_cuda(
    x: Tensor, w_gate: Tensor, w_up: Tensor, w_down_t: Tensor, threshold: float
) -> Tensor:
    return _triton_kernels("relu_gated_ffn").relu_gated_ffn(x, w_gate, w_up, w_down_t, threshold)


lib.impl("sparse_input_linear", _sparse_input_linear_cpu, "CPU")
lib.impl("relu_gated_ffn", _relu_gated_ffn_cpu, "CPU")
lib.impl("sparse_input_linear", _sparse_input_linear_cuda, "CUDA")
lib.impl("relu_gated_ffn", _relu_gated_ffn_cuda, "CUDA")


def sparse_input_linear(a: Tensor, weight_t: Tensor, bias: Tensor | None, activation: str = "none",
                        residual: Tensor | None = None, input_threshold: float | None = None) -> Tensor:
    """`torch.ops.sparseforge.sparse_input_linear`: `sparse_input_linear_reference` skipping
    the zeros of `a` (C++ on CPU float32 with prologue and epilogue in the kernel, Triton on
    CUDA)."""
    return eager_op("sparse_input_linear", a)(a, weight_t, bias, activation, residual,
                                              input_threshold)


_BOUND_FAKES["sparse_input_linear"] = _sparse_input_linear_fake


def relu_gated_ffn(
    x: Tensor, w_gate: Tensor, w_up: Tensor, w_down_t: Tensor, threshold: float
) -> Tensor:
    """`torch.ops.sparseforge.relu_gated_ffn`: `relu_gated_ffn_reference` computing the up and
    down projections only for the neurons whose gate survives (C++ on CPU float32, Triton on
    CUDA)."""
    return torch.ops.sparseforge.relu_gated_ffn(x, w_gate, w_up, w_down_t, threshold)


# --- N:M (semi-structured) ------------------------------------------------------------------
# Arguments are the NM fields (sparseforge.formats.NM) of a linear weight (out_features, K):
# values (out_features, K / m * n) and indices (same shape, uint8 / int16 / int32): entry j of
# group g of row o is W[o, g * m + indices[o, g * n + j]]. CPU: csrc/cpu/nm_linear.cpp (float32);
# CUDA: Triton (triton_sparse_linear.py), as are bsr_linear and bcr_linear below.

lib.define(
    "nm_linear(Tensor x, Tensor values, Tensor indices, Tensor? bias, int out_features, int n, "
    f"int m, {_EPILOGUE_SCHEMA}) -> Tensor"
)


def nm_linear_reference(
    x: Tensor, values: Tensor, indices: Tensor, bias: Tensor | None, out_features: int,
    n: int, m: int, activation: str = "none", residual: Tensor | None = None,
) -> Tensor:
    """y = act(x @ W^T + b + residual) (see `epilogue_reference`) with W (out_features, K =
    x.shape[-1]) in N:M form. Densifies W through `NM.to_dense`, then F.linear."""
    weight = NM((out_features, x.shape[-1]), n, m, values, indices).to_dense()  # (N, K)
    return epilogue_reference(F.linear(x, weight.to(x.dtype), bias), activation, residual)


@torch.library.register_fake("sparseforge::nm_linear", lib=lib)
def _nm_linear_fake(
    x: Tensor, values: Tensor, indices: Tensor, bias: Tensor | None, out_features: int,
    n: int, m: int, activation: str = "none", residual: Tensor | None = None,
) -> Tensor:
    torch._check(0 < n < m, lambda: f"N:M needs 0 < n < m, got {n}:{m}")
    torch._check(values.dim() == 2 and indices.shape == values.shape,
                 lambda: "values and indices must both be (out_features, K / m * n)")
    torch._check(x.shape[-1] % m == 0, lambda: f"x's last dim must be a multiple of m={m}")
    _check_epilogue((*x.shape[:-1], out_features), activation, residual)
    return x.new_empty((*x.shape[:-1], out_features))  # (..., N)


def _nm_linear_cpu(*args: object) -> Tensor:
    return extension.kernel("nm_linear")(*args)


lib.impl("nm_linear", _nm_linear_cpu, "CPU")


def nm_linear(
    x: Tensor, values: Tensor, indices: Tensor, bias: Tensor | None, out_features: int,
    n: int, m: int, activation: str = "none", residual: Tensor | None = None,
) -> Tensor:
    """`torch.ops.sparseforge.nm_linear`: `nm_linear_reference` reading only the kept weights
    (C++ on CPU float32, Triton on CUDA)."""
    return eager_op("nm_linear", x)(
        x, values, indices, bias, out_features, n, m, activation, residual
    )


_BOUND_FAKES["nm_linear"] = _nm_linear_fake


# --- Dense linear at a few rows (GEMV) ------------------------------------------------------
# weight (out_features, K) float32, as nn.Linear holds it. CPU only: csrc/cpu/gemv_linear.cpp
# streams the weight once across every thread at up to 16 rows of x (over that it runs
# at::linear, epilogue after), where MKL's batch-1 GEMV measured at about one core's bandwidth.

lib.define(f"gemv_linear(Tensor x, Tensor weight, Tensor? bias, {_EPILOGUE_SCHEMA}) -> Tensor")


def gemv_linear_reference(
    x: Tensor, weight: Tensor, bias: Tensor | None, activation: str = "none",
    residual: Tensor | None = None,
) -> Tensor:
    """y = act(x @ W^T + b + residual) (see `epilogue_reference`): F.linear, then the epilogue."""
    return epilogue_reference(F.linear(x, weight, bias), activation, residual)


@torch.library.register_fake("sparseforge::gemv_linear", lib=lib)
def _gemv_linear_fake(
    x: Tensor, weight: Tensor, bias: Tensor | None, activation: str = "none",
    residual: Tensor | None = None,
) -> Tensor:
    torch._check(weight.dim() == 2, lambda: "weight must be (out_features, in_features)")
    torch._check(x.shape[-1] == weight.shape[1],
                 lambda: f"x (..., {x.shape[-1]}) does not match weight {tuple(weight.shape)}")
    _check_epilogue((*x.shape[:-1], weight.shape[0]), activation, residual)
    return x.new_empty((*x.shape[:-1], weight.shape[0]))  # (..., N)


def _gemv_linear_cpu(*args: object) -> Tensor:
    return extension.kernel("gemv_linear")(*args)


lib.impl("gemv_linear", _gemv_linear_cpu, "CPU")
_BOUND_FAKES["gemv_linear"] = _gemv_linear_fake


def gemv_linear(
    x: Tensor, weight: Tensor, bias: Tensor | None, activation: str = "none",
    residual: Tensor | None = None,
) -> Tensor:
    """`torch.ops.sparseforge.gemv_linear`: `gemv_linear_reference` with the weight streamed by
    every thread at once (C++, CPU float32)."""
    return eager_op("gemv_linear", x)(x, weight, bias, activation, residual)


# --- CUDA: the sparse linears through Triton ------------------------------------------------

def _sparse_linear_triton() -> ModuleType:
    from . import triton_sparse_linear  # imported here: keeps `import sparseforge` free of triton

    if not triton_sparse_linear.has_triton():
        raise RuntimeError("the sparse linears on CUDA run Triton kernels and triton is not "
                           "installed; pip install triton, or call the *_reference twin")
    return triton_sparse_linear


def _bsr_linear_cuda(*args: object) -> Tensor:
    return _sparse_linear_triton().bsr_linear(*args)


def _bcr_linear_cuda(*args: object) -> Tensor:
    return _sparse_linear_triton().bcr_linear(*args)


def _nm_linear_cuda(*args: object) -> Tensor:
    return _sparse_linear_triton().nm_linear(*args)


lib.impl("bsr_linear", _bsr_linear_cuda, "CUDA")
lib.impl("bcr_linear", _bcr_linear_cuda, "CUDA")
lib.impl("nm_linear", _nm_linear_cuda, "CUDA")
