"""End to end on CPU: a 90%-sparse CNN, dense vs deployed (direct sparse conv and the other
registered kernels, picked per layer by measurement), beside the strongest peers.

Models: ResNet-20 for Fashion-MNIST (trained dense weights from --resnet-weights if present,
else random) magnitude-pruned per layer to 90% and 95% (every Conv2d but the first), and the
demo GMP-90 CNN (runs/demo/gmp90, if present). Per model and batch size (1, 32), side by side
in one interleaved loop (median of rounds x repeats):
  dense          the masked model, eager, zeros multiplied (BatchNorm separate): the baseline
  dense_bnfold   the same with BatchNorm folded into the convs (graph.fuse)      peer
  compiled       torch.compile (inductor) of dense_bnfold                      peer
  onnxruntime    dense_bnfold exported to ONNX, ORT CPU session, same threads   peer
  deployed       runtime.deploy(model, x, fold_bn=True) with example batch B: per layer the
                 fastest measured of dense, `direct` and the other registered candidates
plus max |out - dense out| of each. `--quick` is a smoke run (few repeats).

    python benchmarks/sparse_cnn_e2e.py [--resnet-weights PATH]
    python benchmarks/sparse_cnn_e2e.py --quick
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from torch import nn

from sparseforge.graph.fusion import fuse
from sparseforge.models.resnet import resnet20
from sparseforge.profile import machine_info
from sparseforge.profile.latency import interleaved
from sparseforge.profile.rows import write_csv
from sparseforge.runtime.deploy import deploy
from sparseforge.sparsity import prune
from sparseforge.sparsity.masks import bake_masks

RESNET_WEIGHTS = Path("runs/resnet20_dense/model/final.pt")  # fmnist_resnet20_dense.yaml
DEMO_RUN = Path("runs/demo/gmp90")
INPUT_SHAPE = (1, 28, 28)  # Fashion-MNIST
BATCHES = (1, 32)


def magnitude_prune(model: nn.Module, sparsity: float) -> nn.Module:
    """Mask every Conv2d but the first to `sparsity` by weight magnitude, per layer."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    prune(model, "unstructured", sparsity, layers={"include": convs[1:]})
    return model


def resnet(sparsity: float, weights: Path) -> tuple[nn.Module, str]:
    """ResNet-20 (Fashion-MNIST shape) pruned to `sparsity`, and where its weights came from."""
    model = resnet20(num_classes=10, in_channels=1)
    source = "random init"
    if weights.is_file():
        model.load_state_dict(torch.load(weights, weights_only=True))
        source = str(weights)
    return magnitude_prune(model.eval(), sparsity), source


def demo_cnn() -> nn.Module | None:
    """The demo GMP-90 CNN, masked, or None when the run folder (or its data) is not here."""
    if not (DEMO_RUN / "recipe.yaml").is_file():
        return None
    from sparseforge.evaluate import load_run

    try:
        return load_run(DEMO_RUN)[2].eval()
    except (FileNotFoundError, OSError, ValueError) as err:
        print(f"demo CNN skipped: {err}")
        return None


def ort_callable(model: nn.Module, x: torch.Tensor, tmp: Path):
    """`model` exported to ONNX (dynamic batch) in an onnxruntime CPU session with torch's
    thread count; a call on `x` (converted once), or None with the reason."""
    try:
        import onnxruntime  # noqa: F401

        from sparseforge.runtime.export import export_model, onnx_session
    except ImportError as err:
        return None, f"onnxruntime peer skipped: {err}"
    path = tmp / "model.onnx"
    if not path.exists():
        export_model(model, x[:1], path, "onnx")
    sess = onnx_session(path, torch.get_num_threads())
    feed = {sess.get_inputs()[0].name: x.numpy()}
    return (lambda: sess.run(None, feed)), ""


def run_model(name: str, model: nn.Module, rounds: int, repeats: int, deploy_repeats: int,
              candidates: list[str] | None) -> list[dict]:
    """Deploy, check outputs, time everything side by side and print one block for `model`."""
    import tempfile

    dense = bake_masks(copy.deepcopy(model)).eval()
    folded = fuse(dense).module.eval()
    compiled = torch.compile(folded)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch in BATCHES:
            x = torch.randn(batch, *INPUT_SHAPE, generator=torch.Generator().manual_seed(batch))
            dep = deploy(model, x, repeats=deploy_repeats, rounds=2, candidates=candidates,
                         fold_bn=True)
            kinds = sorted({r["choice"] for r in dep.plan})
            fns = {"dense": lambda x=x: dense(x), "dense_bnfold": lambda x=x: folded(x),
                   "compiled": lambda x=x: compiled(x)}
            ort_fn, why = ort_callable(folded, x, Path(tmp))
            if ort_fn is not None:
                fns["onnxruntime"] = ort_fn
            fns["deployed"] = lambda x=x, m=dep.module: m(x)
            with torch.inference_mode():
                ref = dense(x)
                err = {n: float((torch.as_tensor(f()[0] if n == "onnxruntime" else f()) - ref)
                                .abs().max()) for n, f in fns.items()}
            t = interleaved(fns, rounds=rounds, repeats=repeats)
            ms = {n: t[n].median_ms for n in fns}
            peer = min((n for n in fns if n not in ("dense", "deployed")), key=ms.__getitem__)
            print(f"  batch {batch}: deployed kernels {kinds}; direct on "
                  f"{sum(r['choice'] == 'direct' for r in dep.plan)}/{len(dep.plan)} layers"
                  + (f"; {why}" if why else ""))
            print("    " + "  ".join(f"{n} {ms[n]:.3f} ms (err {err[n]:.1e})" for n in fns))
            print(f"    deployed vs dense x{ms['dense'] / ms['deployed']:.2f}, vs best peer "
                  f"({peer}) x{ms[peer] / ms['deployed']:.2f}")
            rows.append({"model": name, "batch": batch, **{f"{n}_ms": ms[n] for n in fns},
                         "best_peer": peer, "speedup_vs_dense": ms["dense"] / ms["deployed"],
                         "speedup_vs_peer": ms[peer] / ms["deployed"], "kernels": " ".join(kinds)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few repeats")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95])
    parser.add_argument("--candidates", nargs="+", default=None,
                        help="deploy candidates to try (default: all registered, e.g. direct csr)")
    parser.add_argument("--resnet-weights", type=Path, default=RESNET_WEIGHTS,
                        help="trained ResNet-20 state dict (random weights if missing)")
    parser.add_argument("--csv", type=Path, default=Path("runs/sparse_cnn_e2e.csv"))
    args = parser.parse_args()
    rounds, repeats, deploy_repeats = (2, 3, 3) if args.quick else (7, 20, 20)
    info = machine_info()
    print(f"CPU: {info['cpu_model']} ({info['cpu_capability']})  threads: "
          f"{torch.get_num_threads()}  torch {torch.__version__}")
    rows = []
    for s in args.sparsities:
        model, source = resnet(s, args.resnet_weights)
        print(f"ResNet-20 pruned to {s:.0%} per layer (first conv dense), weights: {source}")
        rows += run_model(f"resnet20@{s}", model, rounds, repeats, deploy_repeats, args.candidates)
    demo = demo_cnn()
    if demo is not None:
        print(f"demo CNN ({DEMO_RUN}, GMP 90%)")
        rows += run_model("demo_gmp90", demo, rounds, repeats, deploy_repeats, args.candidates)
    print(f"CSV: {write_csv(rows, args.csv)}")


if __name__ == "__main__":
    main()
