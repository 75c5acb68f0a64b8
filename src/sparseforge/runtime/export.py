"""Export a model to ONNX (run by onnxruntime) or to a torch.export program (`.pt2`), with the
batch dimension left dynamic; `check_onnx` measures how far onnxruntime's output is from
PyTorch's; `export_run` does both for a run folder (`sparseforge deploy DIR --format F`).
onnx, onnxscript and onnxruntime are imported only when used (`sparseforge[export]`)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from ..sparsity.masks import bake_masks, masked_modules
from .run import _test_batch

EXPORT_DIR = "export"
INPUT, OUTPUT = "input", "output"
ONNX_INSTALL = "pip install 'sparseforge[export]'"
# ONNX protobuf files stop at 2 GiB; larger models keep their weights in a `.data` file beside.
ONNX_INLINE_LIMIT = 2**31 - 2**26


def _plain_eval_copy(model: nn.Module) -> nn.Module:
    """The model in eval mode with masks baked into plain weights; a copy when it had masks or
    was training, so the caller's model is left as it was."""
    if any(True for _ in masked_modules(model)):
        return bake_masks(copy.deepcopy(model)).eval()
    return copy.deepcopy(model).eval() if model.training else model


def _traceable(example: Tensor) -> Tensor:
    """torch.export specializes a dimension of size 0 or 1, so a batch of one is traced as two
    (the first sample repeated) to keep the batch dimension dynamic."""
    if example.ndim == 0 or example.shape[0] == 0:
        raise ValueError(f"example must be a batch (B, ...) with B >= 1, got shape "
                         f"{tuple(example.shape)}")
    return example[:1].expand(2, *example.shape[1:]).clone() if example.shape[0] < 2 else example


def _export_onnx(model: nn.Module, example: Tensor, path: Path) -> None:
    try:
        import onnx  # noqa: F401  (the exporter needs onnx and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ImportError(f"ONNX export needs onnx and onnxscript ({err}); {ONNX_INSTALL}") from err
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > ONNX_INLINE_LIMIT
    torch.onnx.export(
        model, (example,), path, dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
        dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=big, verbose=False,
    )


def _export_pt2(model: nn.Module, example: Tensor, path: Path) -> None:
    program = torch.export.export(
        model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, path)


EXPORTERS: dict[str, Callable[[nn.Module, Tensor, Path], None]] = {
    "onnx": _export_onnx,
    "pt2": _export_pt2,
}


def export_model(model: nn.Module, example: Tensor, path: str | Path, fmt: str) -> Path:
    """Write `model` (eval mode, masks baked) traced on `example` (B, ...) to `path` as "onnx"
    or "pt2", batch dimension dynamic; returns the path. Reload a .pt2 with
    `torch.export.load(path).module()`; run an .onnx with onnxruntime (see `check_onnx`)."""
    if fmt not in EXPORTERS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of: {', '.join(EXPORTERS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    EXPORTERS[fmt](_plain_eval_copy(model), _traceable(example), path)
    return path


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session on the ONNX file at `path`; `threads` intra-op threads (None:
    onnxruntime's default), one inter-op thread when set, as torch runs."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ImportError(f"running an ONNX file needs onnxruntime; {ONNX_INSTALL}") from err
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_onnx(path: str | Path, model: nn.Module, example: Tensor) -> float:
    """Max abs difference between onnxruntime (CPUExecutionProvider) running the ONNX file at
    `path` on `example` and the PyTorch model (eval mode, masks baked) on the same input."""
    session = onnx_session(path)
    (got,) = session.run([OUTPUT], {INPUT: example.detach().cpu().numpy()})
    with torch.no_grad():
        want = _plain_eval_copy(model)(example)
    return float((torch.from_numpy(got) - want.detach().cpu()).abs().max())


def export_run(run_dir: str | Path, fmt: str, *, batch: int = 1) -> tuple[Path, float | None]:
    """Export a finished run's model to `<run_dir>/export/model.<fmt>`, traced on `batch` of
    its test images. Returns the path and, for ONNX, the max abs difference of onnxruntime's
    output to PyTorch's on those images (None for pt2)."""
    from ..evaluate import load_run

    _, splits, model = load_run(run_dir)
    example = _test_batch(splits, batch)  # (B, C, H, W)
    path = export_model(model, example, Path(run_dir) / EXPORT_DIR / f"model.{fmt}", fmt)
    return path, check_onnx(path, model, example) if fmt == "onnx" else None
