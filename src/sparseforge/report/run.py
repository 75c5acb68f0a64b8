"""Read what a training run wrote (summary.json, metrics.jsonl) and derive the few numbers the
report needs from it; the trainer owns these files, this module only reads them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"


def load_summary(run_dir: Path) -> dict[str, Any]:
    """The run's summary.json as a dict; it must hold a `compressed` section."""
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: train the run first (`sparseforge train RECIPE`) or evaluate "
            f"a trained run (`sparseforge eval {Path(run_dir)}`) to write it."
        )
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); re-run `sparseforge eval`.") from err
    if not isinstance(summary, dict) or not isinstance(summary.get("compressed"), dict):
        raise ValueError(f"{path} has no 'compressed' section; re-run `sparseforge eval`.")
    summary.setdefault("name", Path(run_dir).name)
    return summary


def load_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Per-epoch records from metrics.jsonl, blank lines skipped; [] when the file is absent."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    records = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno} is not valid JSON ({err}).") from err
        if not isinstance(record, dict) or "epoch" not in record:
            raise ValueError(f"{path}:{lineno} must be a JSON object with an 'epoch' field.")
        records.append(record)
    return records


def sparsity(section: Mapping[str, Any] | None) -> float | None:
    """Fraction of zero parameters: the `sparsity` field, else 1 - nonzeros / params."""
    if not section:
        return None
    if section.get("sparsity") is not None:
        return float(section["sparsity"])
    params, nonzeros = section.get("params"), section.get("nonzeros")
    if not params or nonzeros is None:
        return None
    return 1.0 - nonzeros / params
