"""The per-layer plan as a plain-text table for the terminal."""

from __future__ import annotations

from typing import Any


def _shape(shape: list[int] | None) -> str:
    return "-" if shape is None else "x".join(str(s) for s in shape)


def format_plan(plan: list[dict[str, Any]]) -> str:
    """One row per layer: type, input shape, sparsity, every measured median (ms), the choice,
    its speedup over dense, and the note (why dense was kept, when it was)."""
    header = ("layer", "type", "input", "sparsity", "measured (median ms)", "choice", "speedup",
              "note")
    rows = [header]
    for r in plan:
        measured = ", ".join(f"{n} {t['median_ms']:.4f}" for n, t in r["candidates"].items())
        rows.append((r["name"], r["type"], _shape(r["input_shape"]), f"{r['sparsity']:.2f}",
                     measured or "-", r["choice"], f"{r['speedup']:.2f}x", r["note"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    skipped = [f"  {r['name']}: {n}: {why}" for r in plan for n, why in r["skipped"].items()
               if not why.startswith("only for ")]  # wrong layer type: the note says so
    if skipped:
        lines += ["skipped candidates:", *skipped]
    return "\n".join(lines)
