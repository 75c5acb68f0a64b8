"""Deploy: pick the fastest measured kernel per layer for a target (cpu / cuda), save the
choice and timings with the model, load it back; bench dense vs deployed end to end."""

from .candidates import CANDIDATES, DENSE, Candidate, register_candidate
from .deploy import deploy
from .deployed import DeployedModel, apply_plan
from .run import bench_run, deploy_run
from .table import format_plan

__all__ = [
    "CANDIDATES", "DENSE", "Candidate", "DeployedModel", "apply_plan", "bench_run", "deploy",
    "deploy_run", "format_plan", "register_candidate",
]
