"""Turn a run folder into report.md + a self-contained report.html, and several runs into a
comparison report. Numbers come from summary.json / metrics.jsonl exactly as measured."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import fmt
from .document import Document, Heading, Image, Paragraph, Table, write
from .plots import plot_accuracy_vs_sparsity, plot_layer_sparsity, plot_training_curves
from .run import SUMMARY, load_metrics, load_summary, sparsity

Section = Mapping[str, Any] | None

NOT_ACCELERATED = (
    "The compressed model still runs masked-dense kernels: its zero weights are computed like "
    "any other, so the measured latency shows no speed-up from sparsity. Acceleration comes from "
    "the runtime/deploy stage; the numbers here are measured as-is."
)


def _ratio(c: float | None, d: float | None) -> float | None:
    return None if c is None or d is None or d == 0 else c / d


def _diff(c: float | None, d: float | None) -> float | None:
    return None if c is None or d is None else c - d


def _latency(section: Section, batch: str) -> float | None:
    value = ((section or {}).get("latency_ms") or {}).get(batch)
    return None if value is None else float(value)


def _batch_keys(*sections: Section) -> list[str]:
    """Batch sizes measured in any section, numerically sorted; 1 and 64 always listed."""
    keys = {"1", "64"}
    for section in sections:
        keys |= {str(k) for k in ((section or {}).get("latency_ms") or {})}
    return sorted(keys, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))


def _metric_rows() -> list[tuple[str, Callable[[Section], float | None], Callable, str]]:
    """(label, value getter, formatter, how to compare: ratio | diff)."""

    def field(key: str) -> Callable[[Section], float | None]:
        return lambda s: None if not s or s.get(key) is None else float(s[key])

    return [
        ("Test accuracy", field("test_accuracy"), fmt.percent, "diff"),
        ("Parameters", field("params"), fmt.count, "ratio"),
        ("Nonzeros", field("nonzeros"), fmt.count, "ratio"),
        ("Sparsity", sparsity, fmt.percent, "diff"),
        ("Dense FLOPs", field("dense_flops"), fmt.flops, "ratio"),
        ("Effective FLOPs", field("effective_flops"), fmt.flops, "ratio"),
        ("File size", field("file_bytes"), fmt.nbytes, "ratio"),
    ]


def summary_table(dense: Section, compressed: Mapping[str, Any]) -> Table:
    """Metric rows with Dense / Compressed / comparison columns; only Compressed without dense.
    Accuracy and sparsity compare as a difference in points, latency as a speed-up."""
    rows: list[tuple[str, ...]] = []
    for label, get, show, how in _metric_rows():
        c = get(compressed)
        if dense is None:
            rows.append((label, show(c)))
            continue
        d = get(dense)
        cmp = fmt.points(_diff(c, d)) if how == "diff" else fmt.ratio(_ratio(c, d))
        rows.append((label, show(d), show(c), cmp))
    for batch in _batch_keys(dense, compressed):
        label = f"CPU latency, batch {batch} (ms)"
        c = _latency(compressed, batch)
        if dense is None:
            rows.append((label, fmt.ms(c)))
            continue
        d = _latency(dense, batch)
        speedup = _ratio(d, c)
        rows.append(
            (
                label,
                fmt.ms(d),
                fmt.ms(c),
                fmt.DASH if speedup is None else f"{fmt.ratio(speedup)} speed-up",
            )
        )
    header = (
        ("Metric", "Compressed")
        if dense is None
        else ("Metric", "Dense", "Compressed", "Compressed / Dense")
    )
    return Table(header, tuple(rows))


def machine_line(machine: Mapping[str, Any] | None) -> str:
    """'CPU model, N torch threads (of M logical cores), ISA, torch X, CUDA device'."""
    if not machine:
        return "not recorded"
    parts = [str(machine.get("cpu_model") or "unknown CPU")]
    threads = machine.get("torch_threads")
    if threads is not None:
        cores = machine.get("logical_cores")
        parts.append(f"{threads} torch threads" + (f" of {cores} logical cores" if cores else ""))
    if machine.get("cpu_capability"):
        parts.append(f"ISA {machine['cpu_capability']}")
    if machine.get("torch_version"):
        parts.append(f"torch {machine['torch_version']}")
    if machine.get("cuda_device"):
        parts.append(f"CUDA {machine['cuda_device']}")
    return ", ".join(parts)


def layer_table(layers: Sequence[Mapping[str, Any]]) -> Table:
    """One row per layer: sizes, sparsity, dense and effective FLOPs."""
    header = ("Layer", "Type", "Params", "Nonzeros", "Sparsity", "Dense FLOPs", "Effective FLOPs")
    rows = tuple(
        (
            str(layer.get("name", "?")),
            str(layer.get("type", "")),
            fmt.count(layer.get("params")),
            fmt.count(layer.get("nonzeros")),
            fmt.percent(sparsity(layer)),
            fmt.flops(layer.get("dense_flops")),
            fmt.flops(layer.get("effective_flops")),
        )
        for layer in layers
    )
    return Table(header, rows, left=2)


def _subtitle(summary: Mapping[str, Any]) -> str:
    model, dataset = summary.get("model"), summary.get("dataset")
    return f"Model {model or '?'} on {dataset or '?'}."


def structure_blocks(plan: Mapping[str, Any]) -> list:
    """Structured pruning: how much went, which tensors shrank, what stayed dense and why."""
    f0, f1 = plan["flops"]["before"], plan["flops"]["after"]
    p0, p1 = plan["params"]["before"], plan["params"]["after"]
    blocks: list = [Heading("Channels removed"), Paragraph(
        f"FLOPs {f0 / 1e6:.1f} M -> {f1 / 1e6:.1f} M ({1 - f1 / max(f0, 1):.1%} fewer); "
        f"parameters {p0 / 1e6:.3f} M -> {p1 / 1e6:.3f} M. The pruned model is a smaller "
        "dense model: its speed needs no sparse kernel.")]
    rows = tuple((f"{e['tensor']} (dim {e['dim']})", str(e["size"]), str(len(e["indices"])))
                 for e in plan["kept"] if e["tensor"].endswith("weight"))
    if rows:
        blocks.append(Table(("Tensor", "Before", "After"), rows))
    dropped = plan.get("dropped_branches") or []
    if dropped:
        blocks.append(Paragraph("Whole residual branches removed (each leaves its input plus a "
                                "trained per-channel constant):", lead="Dropped branches."))
        blocks.append(Table(("Module", "Add", "Layers removed"),
                            tuple((d["module"] or "(model)", d["add"], ", ".join(d["children"]))
                                  for d in dropped), left=3))
    kept = plan.get("kept_dense") or []
    if kept:
        blocks.append(Paragraph("Left dense because the dependency graph could not prove their "
                                "removal exact:", lead="Kept dense."))
        blocks.append(Table(("Tensors", "Units", "Reason"),
                            tuple((k["tensors"], str(k["channels"]), k["reason"]) for k in kept), left=1))
    for op in plan.get("unsupported_ops") or []:
        blocks.append(Paragraph(f"{op}: the channels through it stay dense.", lead="Unsupported op.", note=True))
    return blocks


def activation_blocks(measured: Mapping[str, Any], path: Path) -> list:
    """Heading, per-layer table and plot of the FFN activation sparsity (exact zeros)."""
    from ..activation.measure import ActivationSparsity, LayerSparsity, plot_activation_sparsity

    layers = [LayerSparsity(la["name"], la["zeros"], la["total"]) for la in measured["layers"]]
    plot = plot_activation_sparsity({"test set": ActivationSparsity(layers)}, path)
    rows = tuple((la["name"], fmt.percent(la["sparsity"])) for la in measured["layers"])
    return [
        Heading("Activation sparsity"),
        Paragraph(f"Exact zeros at the FATReLU outputs over test examples: "
                  f"{fmt.percent(measured['overall'])} overall."),
        Table(("activation", "zeros"), (*rows, ("overall", fmt.percent(measured["overall"])))),
        Image(plot, "Activation sparsity per layer"),
    ]


def write_report(run_dir: Path) -> Path:
    """Render run_dir/report.md (images linked from run_dir/plots/) and a self-contained
    run_dir/report.html; returns the HTML path."""
    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    metrics = load_metrics(run_dir)
    dense, compressed = summary.get("dense"), summary["compressed"]
    layers = summary.get("layers") or []

    doc = Document(f"Compression report: {summary['name']}", [Paragraph(_subtitle(summary))])
    doc.blocks += [Heading("Summary"), summary_table(dense, compressed)]
    has_zeros = compressed.get("nonzeros", 0) < compressed.get("params", 0)
    if dense is None:
        note = (
            "No dense reference was recorded for this run." if has_zeros
            else "A dense run: it is the reference compressed runs are compared against."
        )
        doc.blocks.append(Paragraph(note, note=True))
    if has_zeros and not summary.get("accelerated", False):
        doc.blocks.append(Paragraph(NOT_ACCELERATED, lead="Not accelerated.", note=True))
    doc.blocks.append(Paragraph(machine_line(summary.get("machine")), lead="Machine:"))
    if (run_dir / "structure.json").is_file():
        doc.blocks += structure_blocks(json.loads((run_dir / "structure.json").read_text()))
    if layers:
        plot = plot_layer_sparsity(layers, run_dir / "plots" / "layer_sparsity.png")
        doc.blocks += [Heading("Layers"), layer_table(layers), Image(plot, "Sparsity per layer")]
    if summary.get("activation_sparsity"):
        doc.blocks += activation_blocks(summary["activation_sparsity"], run_dir / "plots" / "activation_sparsity.png")
    if metrics:
        plot = plot_training_curves(metrics, run_dir / "plots" / "training_curves.png")
        doc.blocks += [Heading("Training"), Image(plot, "Training curves")]
    return write(doc, run_dir / "report.md", run_dir / "report.html")


def _dense_key(summary: Mapping[str, Any]) -> tuple:
    d = summary["dense"]
    return (
        summary.get("model"),
        summary.get("dataset"),
        d.get("test_accuracy"),
        d.get("params"),
        d.get("nonzeros"),
    )


def accuracy_points(summaries: Sequence[Mapping[str, Any]]) -> list[tuple[str, float, float]]:
    """(label, sparsity, accuracy) per run with a known accuracy, plus each distinct dense
    reference once (runs sharing model, dataset and dense numbers share the point). A dense
    reference that is itself one of the runs (same sparsity and accuracy) is not drawn twice."""
    runs = [
        (str(s["name"]), sparsity(s["compressed"]) or 0.0, float(s["compressed"]["test_accuracy"]))
        for s in summaries
        if s["compressed"].get("test_accuracy") is not None
    ]
    drawn = {(sp, acc) for _, sp, acc in runs}
    references: list[tuple[str, float, float]] = []
    seen: set[tuple] = set()
    for s in summaries:
        dense = s.get("dense")
        if dense and dense.get("test_accuracy") is not None and _dense_key(s) not in seen:
            seen.add(_dense_key(s))
            point = (sparsity(dense) or 0.0, float(dense["test_accuracy"]))
            if point not in drawn:
                label = f"dense {s.get('model') or '?'}/{s.get('dataset') or '?'}"
                references.append((label, *point))
    return references + runs


def comparison_table(summaries: Sequence[Mapping[str, Any]]) -> Table:
    """One row per run: the compressed model's accuracy, sparsity, nonzeros, size and latency."""
    batches = _batch_keys(*(s["compressed"] for s in summaries))
    header = (
        ("Run", "Model", "Dataset", "Test accuracy", "Sparsity", "Nonzeros", "File size")
        + tuple(f"Latency b{b} (ms)" for b in batches)
        + ("Accelerated",)
    )
    rows = []
    for s in summaries:
        c = s["compressed"]
        rows.append(
            (
                str(s["name"]),
                str(s.get("model") or fmt.DASH),
                str(s.get("dataset") or fmt.DASH),
                fmt.percent(c.get("test_accuracy")),
                fmt.percent(sparsity(c)),
                fmt.count(c.get("nonzeros")),
                fmt.nbytes(c.get("file_bytes")),
            )
            + tuple(fmt.ms(_latency(c, b)) for b in batches)
            + ("yes" if s.get("accelerated") else "no",)
        )
    return Table(header, tuple(rows), left=3)


def compare_runs(run_dirs: Sequence[Path], out_dir: Path) -> Path:
    """Write out_dir/report.md and a self-contained out_dir/report.html comparing the runs,
    with an accuracy-vs-sparsity plot; returns the HTML path."""
    if not run_dirs:
        raise ValueError("compare_runs needs at least one run folder")
    out_dir = Path(out_dir)
    if (out_dir / SUMMARY).exists():
        raise ValueError(
            f"{out_dir} is a run folder; its own report would be overwritten. Pick another "
            "output folder for the comparison (e.g. the folder that holds the runs)."
        )
    summaries = [load_summary(Path(d)) for d in run_dirs]
    out_dir.mkdir(parents=True, exist_ok=True)

    doc = Document("Run comparison", [Paragraph(f"{len(summaries)} runs.")])
    doc.blocks += [Heading("Runs"), comparison_table(summaries)]
    if any(not s.get("accelerated", False) for s in summaries):
        doc.blocks.append(
            Paragraph(
                "Runs marked 'no' under Accelerated run masked-dense kernels: their zero weights "
                "are still computed densely, so their latency shows no speed-up from sparsity. "
                "Acceleration comes from the runtime/deploy stage.",
                lead="Not accelerated.",
                note=True,
            )
        )
    points = accuracy_points(summaries)
    if points:
        plot = plot_accuracy_vs_sparsity(points, out_dir / "plots" / "accuracy_vs_sparsity.png")
        doc.blocks += [Heading("Accuracy vs sparsity"), Image(plot, "Accuracy vs sparsity")]
    machines = {machine_line(s.get("machine")) for s in summaries}
    for line in sorted(machines):
        doc.blocks.append(Paragraph(line, lead="Machine:"))
    return write(doc, out_dir / "report.md", out_dir / "report.html")
