"""Deploy: pick the fastest measured kernel per layer for a target (cpu / cuda), save the
choice and timings with the model, load it back; bench dense vs deployed end to end; export to
ONNX or torch.export (.pt2)."""

from .candidates import CANDIDATES, DENSE, Candidate, register_candidate
from .deploy import deploy
from .deployed import DeployedModel, apply_plan
from .export import check_onnx, export_model, export_run
from .run import bench_run, deploy_run
from .table import format_plan

__all__ = [
    "CANDIDATES", "DENSE", "Candidate", "DeployedModel", "apply_plan", "bench_run", "check_onnx",
    "deploy", "deploy_run", "export_model", "export_run", "format_plan", "register_candidate",
]
