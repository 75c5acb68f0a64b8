"""Measure models: FLOPs (dense and effective), parameter counts, latency, and the machine."""

from .flops import FlopReport, LayerFlops, count_flops, count_parameters
from .latency import compare_latency, model_latency
from .machine import machine_info
from .timing import Timing, measure

__all__ = [
    "FlopReport",
    "LayerFlops",
    "Timing",
    "compare_latency",
    "count_flops",
    "count_parameters",
    "machine_info",
    "measure",
    "model_latency",
]
