import json
from pathlib import Path

import pytest

MACHINE = {
    "cpu_model": "Test CPU 9000",
    "logical_cores": 8,
    "torch_threads": 4,
    "cpu_capability": "AVX2",
    "torch_version": "2.13.0",
    "python_version": "3.12.0",
    "cuda_device": None,
}


def summary(name: str, *, dense: bool = True, accelerated: bool = False) -> dict:
    latency = {"1": 0.5, "64": 8.0}
    return {
        "name": name,
        "model": "cnn",
        "dataset": "fashion_mnist",
        "machine": MACHINE,
        "accelerated": accelerated,
        "dense": {
            "test_accuracy": 0.921,
            "params": 1000,
            "nonzeros": 1000,
            "dense_flops": 1.0e7,
            "effective_flops": 1.0e7,
            "file_bytes": 4000,
            "latency_ms": latency,
        }
        if dense
        else None,
        "compressed": {
            "test_accuracy": 0.915,
            "params": 1000,
            "nonzeros": 100,
            "dense_flops": 1.0e7,
            "effective_flops": 1.1e6,
            "file_bytes": 900,
            "latency_ms": latency,
        },
        "layers": [
            {
                "name": "features.conv1",
                "type": "Conv2d",
                "params": 288,
                "nonzeros": 30,
                "sparsity": 0.896,
                "dense_flops": 1_000_000,
                "effective_flops": 104_000,
            },
            {
                "name": "classifier",
                "type": "Linear",
                "params": 712,
                "nonzeros": 70,
                "dense_flops": 9_000_000,
                "effective_flops": 996_000,
            },
        ],
    }


METRICS = [
    {
        "epoch": 1,
        "step": 422,
        "lr": 0.1,
        "train_loss": 0.5,
        "train_accuracy": 0.8,
        "val_loss": 0.4,
        "val_accuracy": 0.85,
        "sparsity": 0.0,
        "seconds": 12.3,
        "phase": "dense",
    },
    {
        "epoch": 2,
        "step": 844,
        "lr": 0.05,
        "train_loss": 0.4,
        "train_accuracy": 0.85,
        "val_loss": 0.35,
        "val_accuracy": 0.87,
        "sparsity": 0.5,
        "phase": "prune",
    },
    {"epoch": 3, "train_loss": 0.38, "val_accuracy": 0.88, "sparsity": 0.9, "phase": "prune"},
]


def write_run(root: Path, name: str, *, metrics: bool = True, **kwargs) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps(summary(name, **kwargs)))
    if metrics:
        lines = [json.dumps(m) for m in METRICS]
        (run_dir / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n\n" + lines[2] + "\n")
    return run_dir


@pytest.fixture
def make_run(tmp_path):
    """Factory: write a fake run folder (summary.json, metrics.jsonl) and return its path."""
    return lambda name="fmnist-gmp90", **kwargs: write_run(tmp_path / "runs", name, **kwargs)


@pytest.fixture
def make_summary():
    """Factory: a summary.json dict as the trainer writes it."""
    return summary


@pytest.fixture
def metrics():
    return [dict(m) for m in METRICS]


def _assert_png(path: Path) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 2000


@pytest.fixture
def assert_png():
    """Checker: the file is a PNG (magic bytes) with real content."""
    return _assert_png
