"""Benchmark rows to CSV: one writer for every script under benchmarks/."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write `rows` (the first row's keys are the columns) to `path`, creating its folder."""
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
