"""Training memory per method, measured with `sparseforge profile memory`'s recorder on the same
model, data and batch: dense, masked 90% (GMP with its masks at the final 90% from the start),
GaP, MEST (both 90%), and dense with activation checkpointing. Prints peak and its composition,
the weights+gradients+optimizer state as trained (masked dense) and stored compactly from the
masks, and the recorder's slowdown of a step; writes CSV and a Markdown table.

    python benchmarks/training_memory.py --out runs/training_memory [--steps 3] [--batch 128]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from sparseforge.profile import machine_info
from sparseforge.profile.memory import analyse, fit_peak, peak, record_training
from sparseforge.profile.rows import write_csv

RECIPE_DIR = Path(__file__).resolve().parents[1] / "src" / "sparseforge" / "recipes"
MIB = 2**20
CATEGORIES = ("Activation", "Temp", "Parameter", "Gradient", "Optstate", "Buffer", "Input")


def methods() -> dict[str, tuple[dict, bool]]:
    """name -> (recipe as a dict, activation checkpointing)."""
    def recipe(name: str) -> dict:
        return yaml.safe_load((RECIPE_DIR / f"fmnist_{name}.yaml").read_text())

    gmp = recipe("gmp90")
    gmp["modifiers"][0]["initial_sparsity"] = gmp["modifiers"][0]["sparsity"]
    return {
        "dense": (recipe("dense"), False),
        "GMP 90% (final masks)": (gmp, False),
        "GaP 90%": (recipe("gap90"), False),
        "MEST 90%": (recipe("mest90"), False),
        "dense + activation checkpointing": (recipe("dense"), True),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/training_memory"))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    m = machine_info()
    print(f"# {m['cpu_model']} ({m['logical_cores']} logical cores, {m['torch_threads']} threads), "
          f"torch {m['torch_version']}; batch {args.batch}")
    rows = []
    for name, (recipe, ckpt) in methods().items():
        rec = record_training(recipe, steps=args.steps, batch_size=args.batch, activation_checkpointing=ckpt)
        a = analyse(rec)
        row = {
            "method": name, "peak_mib": a.peak.nbytes / MIB,
            **{f"{c.lower()}_mib": a.peak.by_category.get(c, 0) / MIB for c in CATEGORIES},
            "state_dense_mib": a.state.dense_bytes / MIB, "state_compact_mib": a.state.compact_bytes / MIB,
            "mask_mib": a.state.mask_bytes / MIB, "density": a.state.density,
            "step_ms": rec.step_s * 1e3, "recorded_step_ms": rec.recorded_step_s * 1e3,
            "slowdown": rec.slowdown,
            "period_ops": a.period.length if a.period else None,
            "repeating_share": a.stability.share if a.stability else None,
        }
        rows.append(row)
        print(f"{name:34s} peak {row['peak_mib']:7.1f} MiB  activation {row['activation_mib']:6.1f}  "
              f"state {row['state_dense_mib']:5.2f} -> compact {row['state_compact_mib']:5.2f} MiB "
              f"(density {row['density']:.2f})  recorder {row['slowdown']:.2f}x", flush=True)
    write_csv(rows, args.out / "training_memory.csv")
    dense = rows[0]["peak_mib"]
    lines = [
        "| method | peak MiB | vs dense | activation | temp | param+grad+optim | masks (buffers) "
        "| state as trained | state compact | density | recorder slowdown |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        pgo = r["parameter_mib"] + r["gradient_mib"] + r["optstate_mib"]
        lines.append(
            f"| {r['method']} | {r['peak_mib']:.1f} | {r['peak_mib'] / dense:.2f}x | {r['activation_mib']:.1f} "
            f"| {r['temp_mib']:.1f} | {pgo:.2f} | {r['buffer_mib']:.2f} | {r['state_dense_mib']:.2f} "
            f"| {r['state_compact_mib']:.2f} | {r['density']:.2f} | {r['slowdown']:.2f}x |"
        )
    lines += ["", prediction_check(methods()["dense"][0], args.steps)]
    (args.out / "training_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def prediction_check(recipe: dict, steps: int, sizes: tuple[int, ...] = (32, 64), target: int = 256) -> str:
    """Fit peak vs batch on `sizes`, predict `target` (4x the largest), measure it."""
    fit = fit_peak(list(sizes), [peak(record_training(recipe, steps=steps, batch_size=b).trace).nbytes for b in sizes])
    measured = peak(record_training(recipe, steps=steps, batch_size=target).trace).nbytes
    err = fit.predict(target) / measured - 1
    return (f"Prediction (dense): fitted on batches {', '.join(map(str, sizes))}, predicted peak at batch {target} "
            f"{fit.predict(target) / MIB:.1f} MiB, measured {measured / MIB:.1f} MiB ({err:+.2%}).")


if __name__ == "__main__":
    main()
