"""A trace on disk: three Parquet tables (events, ops, blocks) in one folder, written atomically
(each file via a temporary name), readable with pandas, polars or DuckDB as well as here."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .recorder import Trace

EVENT_COLUMNS = ("seq", "time_ns", "kind", "block")
OP_COLUMNS = {"op": "op", "op_module": "module", "op_phase": "phase", "op_step": "step"}
BLOCK_COLUMNS = {"nbytes": "nbytes", "category": "category", "module": "module", "preexisting": "preexisting"}


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "saving memory traces needs pyarrow: pip install 'sparseforge[profile]' (or pyarrow)"
        ) from e
    return pa, pq


def _write(table, path: Path) -> None:
    _, pq = _pyarrow()
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def save_trace(trace: Trace, folder: str | Path) -> Path:
    """Write `events.parquet`, `ops.parquet` (row = seq), `blocks.parquet` (row = block id) and
    `trace.json` (device, step starts) into `folder`."""
    pa, _ = _pyarrow()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write(pa.table({c: getattr(trace, c) for c in EVENT_COLUMNS}), folder / "events.parquet")
    _write(pa.table({name: getattr(trace, attr) for attr, name in OP_COLUMNS.items()}), folder / "ops.parquet")
    _write(pa.table({name: getattr(trace, attr) for attr, name in BLOCK_COLUMNS.items()}), folder / "blocks.parquet")
    meta = {"device": trace.device, "step_starts": trace.step_starts}
    tmp = folder / "trace.json.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, folder / "trace.json")
    return folder


def load_trace(folder: str | Path) -> Trace:
    """Read a folder written by `save_trace`."""
    _, pq = _pyarrow()
    folder = Path(folder)
    missing = [f for f in ("events.parquet", "ops.parquet", "blocks.parquet", "trace.json") if not (folder / f).exists()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a memory trace folder: missing {', '.join(missing)}")
    trace = Trace()
    events = pq.read_table(folder / "events.parquet").to_pydict()
    for c in EVENT_COLUMNS:
        setattr(trace, c, events[c])
    ops = pq.read_table(folder / "ops.parquet").to_pydict()
    for attr, name in OP_COLUMNS.items():
        setattr(trace, attr, ops[name])
    blocks = pq.read_table(folder / "blocks.parquet").to_pydict()
    for attr, name in BLOCK_COLUMNS.items():
        setattr(trace, attr, blocks[name])
    meta = json.loads((folder / "trace.json").read_text())
    trace.device, trace.step_starts = meta["device"], meta["step_starts"]
    return trace
