"""Tensors on the wire: raw little-endian bytes plus a small JSON header (dtype, shape, int8
scale / zero point). Decoding validates everything against what the receiver expects and
never unpickles: a bad header is a `WireError` whose message names the problem."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..quant.grid import dequantize, qparams, quantize

PRECISIONS = ("fp32", "fp16", "int8")
_NUMPY = {"fp32": np.dtype("<f4"), "fp16": np.dtype("<f2"), "int8": np.dtype("u1")}
HEADER = "X-Sparseforge-Tensor"  # the HTTP header that carries the JSON
MAX_HEADER_CHARS = 4096
MAX_DIMS = 8


class WireError(ValueError):
    """A tensor message that does not decode or does not match what the receiver expects."""


def encode(x: Tensor, precision: str, **extra: Any) -> tuple[str, bytes]:
    """(JSON header, body) of `x` sent at `precision`; int8 is asymmetric per-tensor affine
    (uint8 codes) with the scale and zero point of quant.grid. `extra` goes into the header."""
    if precision not in PRECISIONS:
        raise ValueError(f"transfer precision must be one of {PRECISIONS}, got {precision!r}")
    x = x.detach().cpu().float().contiguous()
    header: dict[str, Any] = {"dtype": precision, "shape": list(x.shape), **extra}
    if precision == "int8":
        scale, zp = qparams(x.min(), x.max(), 8, symmetric=False)
        codes = quantize(x, scale, zp, 8, symmetric=False).to(torch.uint8)
        header.update(scale=float(scale), zero_point=int(zp))
        body = codes.numpy().tobytes()
    else:
        body = x.numpy().astype(_NUMPY[precision]).tobytes()
    return json.dumps(header, separators=(",", ":")), body


def parse_header(text: str | None) -> dict[str, Any]:
    """The header dict; WireError when missing, too long, not a JSON object or badly typed."""
    if not text:
        raise WireError(f"missing {HEADER} header (JSON with dtype and shape)")
    if len(text) > MAX_HEADER_CHARS:
        raise WireError(f"{HEADER} header is {len(text)} characters, limit {MAX_HEADER_CHARS}")
    try:
        header = json.loads(text)
    except json.JSONDecodeError as err:
        raise WireError(f"{HEADER} header is not valid JSON: {err}") from err
    if not isinstance(header, dict):
        raise WireError(f"{HEADER} header must be a JSON object, got {type(header).__name__}")
    if header.get("dtype") not in PRECISIONS:
        raise WireError(f"dtype must be one of {list(PRECISIONS)}, got {header.get('dtype')!r}")
    shape = header.get("shape")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise WireError(f"shape must be a list of 1..{MAX_DIMS} positive integers, got {shape!r}")
    if header["dtype"] == "int8":
        scale, zp = header.get("scale"), header.get("zero_point")
        if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise WireError(f"int8 needs a finite positive scale, got {scale!r}")
        if not isinstance(zp, int) or not 0 <= zp <= 255:
            raise WireError(f"int8 needs an integer zero_point in 0..255, got {zp!r}")
    return header


def decode(header: dict[str, Any], body: bytes, sample_shape: Sequence[int] | None = None) -> Tensor:
    """The float32 tensor of a parsed header and its body; checks the body length and, when
    given, that the shape is (batch, *sample_shape)."""
    shape = header["shape"]
    if sample_shape is not None and list(shape[1:]) != list(sample_shape):
        raise WireError(
            f"tensor shape {shape} does not match this split's input (batch, "
            f"{', '.join(map(str, sample_shape))}); is the client using the same split and model?"
        )
    dtype = _NUMPY[header["dtype"]]
    expected = math.prod(shape) * dtype.itemsize
    if len(body) != expected:
        raise WireError(
            f"body has {len(body)} bytes but {header['dtype']} {shape} needs {expected}")
    array = np.frombuffer(body, dtype=dtype).reshape(shape)
    if header["dtype"] == "int8":
        codes = torch.from_numpy(array.astype(np.int32))
        return dequantize(codes, torch.tensor(float(header["scale"])),
                          torch.tensor(int(header["zero_point"]), dtype=torch.int32))
    return torch.from_numpy(array.astype(np.float32))


def nbytes(numel: int, precision: str) -> int:
    """Body bytes of `numel` values at `precision` (the header's few dozen bytes excluded)."""
    return numel * _NUMPY[precision].itemsize
