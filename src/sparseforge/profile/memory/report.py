"""`sparseforge profile memory`: record a recipe's training steps at one or more batch sizes,
analyse the largest, and write the trace (Parquet), `memory.json`, figures and a report
(`memory.md`, `memory.html`) into one folder."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ...checkpoint import write_json_atomic
from ...recipe import Recipe, load_recipe
from ...report import fmt
from ...report.document import Document, Heading, Image, Paragraph, Table, write
from ..machine import machine_info
from .analysis import (
    BlockStats,
    Events,
    Peak,
    Period,
    Stability,
    block_stats,
    detect_period,
    pattern_stability,
    peak,
)
from .decisions import (
    PCIE4_X16_GBPS,
    Candidate,
    PeakFit,
    early_free_candidates,
    fit_peak,
    recompute_candidates,
    swap_candidates,
)
from .session import Recording, record_training
from .state_size import StateSize, training_state_size
from .store import save_trace

TOP = 10  # candidates listed per kind


@dataclass
class Analysis:
    """Everything `profile memory` concludes from one recording."""

    recording: Recording
    events: Events
    peak: Peak
    stats: BlockStats
    period: Period | None
    stability: Stability | None
    swap: list[Candidate]
    recompute: list[Candidate]
    early_free: list[Candidate]
    state: StateSize


def analyse(recording: Recording, bandwidth_gbps: float = PCIE4_X16_GBPS) -> Analysis:
    trace = recording.trace
    ev = Events.of(trace)
    at_peak = peak(trace, ev)
    stats = block_stats(trace, ev)
    period = detect_period(trace)
    stability = pattern_stability(trace, period, ev) if period else None
    return Analysis(
        recording, ev, at_peak, stats, period, stability,
        swap_candidates(trace, stats, at_peak, bandwidth_gbps),
        recompute_candidates(trace, stats, at_peak),
        early_free_candidates(trace, stats, at_peak),
        training_state_size(recording.model, recording.optimizer),
    )


def _candidates_json(cands: list[Candidate]) -> dict[str, Any]:
    return {
        "count": len(cands),
        "bytes": sum(c.nbytes for c in cands),
        "bytes_at_peak": sum(c.nbytes for c in cands if c.live_at_peak),
        "top": [asdict(c) for c in cands[:TOP]],
    }


def summary(a: Analysis, *, bandwidth_gbps: float, fit: PeakFit | None, label: str) -> dict[str, Any]:
    trace, rec = a.recording.trace, a.recording
    steps = len(trace.step_starts)
    return {
        "label": label,
        "device": trace.device,
        "steps": steps,
        "ops_per_step": trace.n_ops / steps if steps else None,
        "peak_bytes": a.peak.nbytes,
        "peak_by_category": a.peak.by_category,
        "peak_at": {"op": a.peak.op, "module": a.peak.module, "phase": a.peak.phase, "seq": a.peak.seq},
        "period": asdict(a.period) if a.period else None,
        "stability": {**asdict(a.stability), "share": a.stability.share} if a.stability else None,
        "step_s": rec.step_s,
        "recorded_step_s": rec.recorded_step_s,
        "recorder_slowdown": rec.slowdown,
        "bandwidth_gbps": bandwidth_gbps,
        "swap": _candidates_json(a.swap),
        "recompute": _candidates_json(a.recompute),
        "early_free": _candidates_json(a.early_free),
        "state": a.state.as_dict(),
        "fit": asdict(fit) if fit else None,
    }


def _candidate_table(cands: list[Candidate]) -> Table:
    return Table(
        ("block", "module", "category", "made by", "size", "at peak", "why"),
        tuple(
            (str(c.block), c.module or "-", c.category, c.op, fmt.nbytes(c.nbytes),
             "yes" if c.live_at_peak else "no", c.reason)
            for c in cands[:TOP]
        ),
        left=4,
    )


def _document(s: dict[str, Any], a: Analysis, figures: dict[str, Path]) -> Document:
    doc = Document(f"Training memory: {s['label']}")
    pk = s["peak_by_category"]
    doc.blocks += [
        Paragraph(
            f"{s['steps']} steps recorded on {s['device']}, {s['ops_per_step']:.0f} ops each. Peak "
            f"{fmt.nbytes(s['peak_bytes'])} during `{s['peak_at']['op']}` in "
            f"`{s['peak_at']['module'] or '-'}` ({s['peak_at']['phase']}). Recording slowed a step "
            f"{s['recorder_slowdown']:.2f}x ({s['step_s'] * 1e3:.0f} -> {s['recorded_step_s'] * 1e3:.0f} ms).",
            lead="Summary",
        ),
        Heading("Peak composition"),
        Table(("category", "bytes", "share"), tuple(
            (c, fmt.nbytes(v), fmt.percent(v / s["peak_bytes"])) for c, v in pk.items()
        )),
        Image(figures["timeline"], "live memory by category"),
        Heading("Iteration pattern"),
    ]
    if s["period"]:
        st = s["stability"]
        doc.blocks.append(Paragraph(
            f"The op sequence repeats every {s['period']['length']} ops ("
            f"{fmt.percent(s['period']['match'])} of consecutive iterations identical). {st['repeating']} of {st['total']} block patterns "
            f"({fmt.percent(st['share'])}) repeat exactly in the next iteration"
            + ("." if s["period"]["match"] >= 0.999 else "; the pattern is partly unstable (data-dependent ops).")
        ))
    else:
        doc.blocks.append(Paragraph("No repeating iteration found: record more steps (--steps).", note=True))
    doc.blocks += [Image(figures["lifetimes"], "block lifetimes"), Image(figures["ati"], "access intervals")]
    for cands, title in ((a.swap, f"Swap candidates (link {s['bandwidth_gbps']:g} GB/s)"),
                         (a.recompute, "Recompute candidates"), (a.early_free, "Frees that could come earlier")):
        at_peak = sum(c.nbytes for c in cands if c.live_at_peak)
        doc.blocks += [
            Heading(title),
            Paragraph(f"{len(cands)} blocks, {fmt.nbytes(at_peak)} of them live at the peak."),
            _candidate_table(cands),
        ]
    state = s["state"]
    doc.blocks += [
        Heading("Sparse state, stored compactly"),
        Paragraph(
            f"Weights, gradients and optimizer state take {fmt.nbytes(state['dense_bytes'])} as trained "
            f"(masked dense; masks add {fmt.nbytes(state['mask_bytes'])}); stored as bit map + kept values at "
            f"the masks' density {fmt.percent(state['density'])} they would take "
            f"{fmt.nbytes(state['compact_bytes'])}."
        ),
    ]
    if s["fit"]:
        f = s["fit"]
        doc.blocks += [
            Heading("Peak vs batch size"),
            Paragraph(f"peak = {fmt.nbytes(f['intercept'])} + {fmt.nbytes(f['slope'])} x batch "
                      f"(fitted on batches {', '.join(map(str, f['batch_sizes']))})."),
            Image(figures["prediction"], "peak vs batch"),
        ]
    return doc


def profile_memory(
    recipe: Recipe | str | Path | dict,
    out_dir: str | Path,
    *,
    steps: int = 3,
    batch_sizes: list[int] | None = None,
    bandwidth_gbps: float = PCIE4_X16_GBPS,
    activation_checkpointing: bool = False,
    budget_bytes: float | None = None,
    splits=None,
) -> dict[str, Any]:
    """Record `steps` steps at each batch size (the recipe's own by default), analyse the largest,
    fit peak vs batch when two or more sizes were given, write everything to `out_dir`; returns
    the summary (also in `out_dir/memory.json`)."""
    recipe = load_recipe(recipe)
    out = Path(out_dir)
    sizes = sorted(set(batch_sizes or [recipe.train.batch_size]))
    peaks = []
    for b in sizes:
        recording = record_training(
            recipe, steps=steps, batch_size=b, activation_checkpointing=activation_checkpointing, splits=splits,
        )
        a = analyse(recording, bandwidth_gbps)
        peaks.append(a.peak.nbytes)
    fit = fit_peak(sizes, peaks) if len(sizes) > 1 else None
    s = summary(a, bandwidth_gbps=bandwidth_gbps, fit=fit, label=f"{recipe.output.name}, batch {sizes[-1]}")
    s["machine"] = machine_info()
    s["activation_checkpointing"] = activation_checkpointing
    if fit and budget_bytes:
        s["budget_bytes"], s["largest_batch"] = budget_bytes, fit.largest_batch(budget_bytes)
    save_trace(a.recording.trace, out / "trace")
    from . import plots  # matplotlib, imported on use

    trace = a.recording.trace
    figures = {
        "timeline": plots.plot_timeline(trace, out / "memory_timeline.png", a.events),
        "lifetimes": plots.plot_lifetimes(trace, a.stats, out / "memory_lifetimes.png", a.events),
        "ati": plots.plot_ati_histogram(a.stats, out / "memory_ati.png"),
    }
    if fit:
        figures["prediction"] = plots.plot_prediction(fit, out / "memory_prediction.png")
    write_json_atomic(s, out / "memory.json")
    write(_document(s, a, figures), out / "memory.md", out / "memory.html")
    return s
