"""What a benchmark ran on, so latency numbers can be read in context (no hostname)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_model_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The "model name" line of /proc/cpuinfo, else platform.processor(), else "unknown"."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict[str, object]:
    """CPU model, core and thread counts, ISA level torch dispatches to, versions, and the
    CUDA device name (None without one)."""
    return {
        "cpu_model": cpu_model_name(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "os": f"{platform.system()} {platform.machine()}",
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
