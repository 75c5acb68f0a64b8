"""DNNFusion's operator classes: how the elements of an op's input map to the elements of its
output. One-to-One (elementwise), One-to-Many (broadcast, expand, fills), Many-to-Many (conv,
matmul, norms, reductions, gathers), Reorganize (same elements, new shape: view, slice, cat),
Shuffle (same elements, new order: permute, transpose). The class decides what may fuse with
what (`pair_rule`). Ops not in the table are Opaque and never fused: listed, never guessed."""

from __future__ import annotations

from enum import Enum

from torch.fx import Node


class MapType(str, Enum):
    ONE_TO_ONE = "One-to-One"
    ONE_TO_MANY = "One-to-Many"
    MANY_TO_MANY = "Many-to-Many"
    REORGANIZE = "Reorganize"
    SHUFFLE = "Shuffle"
    OPAQUE = "Opaque"


_TABLE: dict[MapType, tuple[str, ...]] = {
    MapType.ONE_TO_ONE: (
        "abs", "add", "add_", "addcdiv", "addcmul", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_",
        "neg", "exp", "expm1", "log", "log1p", "sqrt", "rsqrt", "pow", "square", "reciprocal", "sign",
        "sin", "cos", "erf", "relu", "relu_", "relu6", "gelu", "silu", "silu_", "sigmoid", "tanh",
        "hardtanh", "hardtanh_", "hardswish", "hardswish_", "hardsigmoid", "leaky_relu", "elu", "mish",
        "softplus", "threshold", "clamp", "clamp_", "clamp_min", "clamp_max", "where", "lerp",
        "minimum", "maximum", "eq", "ne", "ge", "gt", "le", "lt", "__and__", "__or__", "logical_and",
        "logical_or", "logical_not", "bitwise_and", "bitwise_or", "masked_fill", "masked_fill_",
        "dropout", "native_dropout", "to", "_to_copy", "clone", "copy", "copy_", "type_as",
        "zeros_like", "ones_like", "full_like", "empty_like", "fill", "fill_", "round", "floor", "ceil",
        "trunc", "frac", "isnan", "nan_to_num", "logit",
        # PT2E's (de)quantize (quantized_decomposed): each element scaled, rounded and clamped
        # by its tensor's or its channel's constant scale and zero point
        "quantize_per_tensor", "dequantize_per_tensor", "quantize_per_channel",
        "dequantize_per_channel",
        "getitem",  # one output of a multi-output op: stays with its producer (see fusion_plan)
    ),
    MapType.ONE_TO_MANY: (
        "expand", "expand_as", "expand_copy", "broadcast_to", "repeat", "repeat_interleave",
        "upsample_nearest2d", "upsample_bilinear2d", "upsample_nearest1d", "_upsample_nearest_exact2d",
        "arange", "zeros", "ones", "full", "empty", "new_ones", "new_zeros", "new_full", "new_empty",
        "scalar_tensor", "tril", "triu",
    ),
    MapType.MANY_TO_MANY: (
        "conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose2d",
        "mkldnn_convolution", "linear", "addmm", "mm", "bmm", "baddbmm", "matmul", "einsum",
        "scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention",
        "batch_norm", "native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
        "_native_batch_norm_legit_functional", "layer_norm", "native_layer_norm", "group_norm",
        "native_group_norm", "rms_norm", "instance_norm", "mean", "sum", "prod", "amax", "amin", "max",
        "min", "var", "var_mean", "std", "norm", "linalg_vector_norm", "argmax", "argmin", "any", "all",
        "softmax", "_softmax", "log_softmax", "_log_softmax", "logsumexp", "cumsum", "cumprod", "diff",
        "max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "adaptive_avg_pool2d",
        "_adaptive_avg_pool2d", "adaptive_max_pool2d", "gather", "index", "index_select", "embedding",
        "topk", "sort", "cross_entropy", "nll_loss", "nll_loss_forward",
    ),
    MapType.REORGANIZE: (
        "view", "_unsafe_view", "reshape", "flatten", "unflatten", "squeeze", "squeeze_", "unsqueeze",
        "unsqueeze_", "slice", "select", "narrow", "split", "split_with_sizes", "chunk", "unbind",
        "cat", "concat", "stack", "alias", "detach", "pad", "constant_pad_nd", "view_as",
        "as_strided", "unfold",
    ),
    MapType.SHUFFLE: (
        "permute", "transpose", "transpose_", "t", "contiguous", "pixel_shuffle", "pixel_unshuffle",
        "channel_shuffle", "flip", "roll", "movedim", "swapaxes",
    ),
}
OP_TYPES: dict[str, MapType] = {name: kind for kind, names in _TABLE.items() for name in names}
# ops that compute nothing: checks and metadata, left out of plans
NO_COMPUTE = frozenset({"_assert_tensor_metadata", "_assert_async", "_assert_scalar", "sym_size",
                        "sym_numel", "sym_stride", "sym_constrain_range_for_size"})
CUSTOM_NAMESPACES = frozenset({"sparseforge"})  # our kernels: Many-to-Many seeds


def op_name(target: object) -> str:
    """'add' for aten.add.Tensor, 'getitem' for operator.getitem, 'sparseforge::csr_linear' for
    a custom op; the key into OP_TYPES."""
    schema = getattr(target, "_schema", None)
    if schema is not None:
        ns, _, name = schema.name.partition("::")
        return f"{ns}::{name}" if ns in CUSTOM_NAMESPACES else name
    return getattr(target, "__name__", str(target))


def is_custom(target: object) -> bool:
    return op_name(target).partition("::")[0] in CUSTOM_NAMESPACES


def classify(node: Node) -> MapType | None:
    """The map type of a call_function node; None for nodes that compute nothing (asserts,
    placeholders, outputs)."""
    if node.op != "call_function":
        return None
    name = op_name(node.target)
    if name in NO_COMPUTE:
        return None
    if is_custom(node.target):
        return MapType.MANY_TO_MANY
    if name in INFERENCE_NORMS and not _training(node, name):
        return MapType.ONE_TO_ONE  # running statistics: a constant per-channel scale and shift
    return OP_TYPES.get(name, MapType.OPAQUE)


# batch norm ops -> position of their `training` argument
INFERENCE_NORMS = {"batch_norm": 5, "_native_batch_norm_legit_no_training": None, "native_batch_norm": 5}


def _training(node: Node, name: str) -> bool:
    pos = INFERENCE_NORMS[name]
    if pos is None:
        return False
    value = node.args[pos] if len(node.args) > pos else node.kwargs.get("training", True)
    return bool(value)


FUSE, NEVER, PROFILE = "fuse", "never", "profile"


def pair_rule(first: MapType, second: MapType) -> tuple[str, MapType | None]:
    """DNNFusion's pair table for `first` feeding `second`: whether they fuse (always, never,
    or by profiling on the target) and the fused block's type."""
    if MapType.OPAQUE in (first, second):
        return NEVER, None
    if first is MapType.ONE_TO_ONE:
        return FUSE, second
    if second is MapType.ONE_TO_ONE:
        return FUSE, first
    index_remaps = {MapType.REORGANIZE, MapType.SHUFFLE}
    if first in index_remaps and second in index_remaps:
        return FUSE, MapType.SHUFFLE if MapType.SHUFFLE in (first, second) else MapType.REORGANIZE
    if second is MapType.MANY_TO_MANY and first in (MapType.ONE_TO_MANY, MapType.MANY_TO_MANY):
        return NEVER, None
    stronger = MapType.MANY_TO_MANY if MapType.MANY_TO_MANY in (first, second) else second
    return PROFILE, stronger
