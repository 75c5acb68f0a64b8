"""ProSparse on all-MiniLM-L6-v2 (CPU): GELU -> ReLU substitution, embedding distillation to the
original with sine-staged L1 on the FFN activations (WordNet glosses and examples), FATReLU
threshold search on a validation split, then on held-out synsets: FFN activation sparsity per
layer, mean cosine of sentence embeddings to the original, gloss -> words retrieval top-1/10.

    # the reported run: ~36 min on one (shared) CPU core
    OMP_NUM_THREADS=1 python benchmarks/prosparse_minilm.py --out runs/pm --steps 1000 --threads 1
    python benchmarks/prosparse_minilm.py --out /tmp/pm --quick        # minutes, smaller eval

Resumes from OUT/checkpoint.pt when run again with the same settings. Writes OUT/results.json
and OUT/activation_sparsity.png.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from sparseforge.activation import (
    SineStages,
    ZeroCounter,
    find_activation_sites,
    plot_activation_sparsity,
    search_threshold,
    substitute_activations,
)
from sparseforge.activation.hf import (
    embed,
    load_minilm,
    mean_cosine,
    retrieval_accuracy,
    tokenizer_encoder,
)
from sparseforge.activation.relu import fatrelu_modules
from sparseforge.activation.train_embedder import DistillConfig, distill_prosparse
from sparseforge.checkpoint import write_json_atomic
from sparseforge.data.wordnet import load_wordnet, sentences, split_synsets
from sparseforge.profile import machine_info


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--quick", action="store_true", help="60 steps, small evaluation sets")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.05, 0.2, 0.6, 2.0])
    p.add_argument(
        "--stage-fractions",
        type=float,
        nargs="+",
        default=None,
        help="stage starts as fractions of --steps (default: evenly over the first 80%%)",
    )
    p.add_argument(
        "--warmup-fraction",
        type=float,
        default=0.8,
        help="warm-up length as a fraction of each stage's length",
    )
    p.add_argument(
        "--max-cos-loss",
        type=float,
        default=0.04,
        help="threshold search tolerance: 1 - mean cosine to the original on val",
    )
    p.add_argument("--theta-high", type=float, default=0.5, help="bisection upper bound for θ")
    p.add_argument("--eval-sentences", type=int, default=1500)
    p.add_argument("--val-sentences", type=int, default=500)
    p.add_argument("--retrieval-synsets", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def schedule_for(args: argparse.Namespace) -> SineStages:
    k = len(args.lambdas)
    fractions = args.stage_fractions or [0.8 * i / k for i in range(k)]
    if len(fractions) != k:
        raise SystemExit(f"--stage-fractions needs {k} values, one per lambda")
    starts = [round(f * args.steps) for f in fractions]
    ends = starts[1:] + [round(0.8 * args.steps) if args.stage_fractions is None else args.steps]
    warmups = [
        max(0, round(args.warmup_fraction * (e - s))) for s, e in zip(starts, ends, strict=True)
    ]
    return SineStages(lambdas=args.lambdas, starts=starts, warmups=warmups)


def evaluate(model, encode, texts, ref_emb, retr, modules, count="zero") -> dict:
    """Sparsity of `modules` and cosine to the reference embeddings on `texts` (one pass), and
    retrieval on (glosses, words)."""
    with ZeroCounter(modules, count) as counter:
        emb = embed(
            model,
            encode,
            texts,
            before_forward=lambda b: setattr(counter, "token_mask", b["attention_mask"]),
        )
    glosses, words = retr
    out = {"sparsity": counter.result.as_dict(), "_result": counter.result}
    out["cosine_to_original"] = mean_cosine(emb, ref_emb)
    out["retrieval"] = retrieval_accuracy(
        embed(model, encode, glosses), embed(model, encode, words)
    )
    return out


def main() -> None:
    args = parse_args()
    if args.quick:
        args.steps, args.eval_sentences, args.val_sentences, args.retrieval_synsets = (
            60,
            300,
            200,
            300,
        )
        args.checkpoint_every = 20
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    train, val, test = split_synsets(load_wordnet(), 0.03, 0.03, seed=args.seed)
    train_text = sentences(train)
    val_text = sentences(val)[: args.val_sentences]
    test_text = sentences(test)[: args.eval_sentences]
    retr_synsets = [s for s in test if s.definition][: args.retrieval_synsets]
    retr = ([s.definition for s in retr_synsets], [", ".join(s.words) for s in retr_synsets])
    print(
        f"WordNet: {len(train)} train / {len(val)} val / {len(test)} test synsets; "
        f"{len(train_text)} training sentences"
    )

    teacher, tokenizer = load_minilm()
    encode = tokenizer_encoder(tokenizer, max_length=64)
    ref_test = embed(teacher, encode, test_text)
    ref_val = embed(teacher, encode, val_text)

    results: dict = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine_info(),
    }
    series = {}
    gelu = {s.name: s.module for s in find_activation_sites(teacher)}
    ev = evaluate(teacher, encode, test_text, ref_test, retr, gelu, "nonpositive")
    series["GELU original (<= 0)"] = ev.pop("_result")
    results["original_gelu"] = ev
    print(
        f"original GELU: fraction <= 0 {ev['sparsity']['overall']:.4f}, retrieval {ev['retrieval']}"
    )

    student = copy.deepcopy(teacher)
    results["substituted_sites"] = substitute_activations(student)
    ev = evaluate(student, encode, test_text, ref_test, retr, fatrelu_modules(student))
    series["ReLU only"] = ev.pop("_result")
    results["relu_only"] = ev

    config = DistillConfig(
        steps=args.steps,
        schedule=schedule_for(args),
        batch_size=args.batch_size,
        lr=args.lr,
        checkpoint_every=args.checkpoint_every,
        log_every=10 if args.quick else 50,
        seed=args.seed,
    )
    results["train_config"] = config.model_dump()
    t0 = time.time()
    history = distill_prosparse(
        student,
        teacher,
        encode,
        train_text,
        config,
        args.out,
        log=lambda m: print(f"[{time.time() - t0:7.0f}s] {m}", flush=True),
    )
    results["train_seconds_this_session"] = time.time() - t0
    results["history"] = history

    ev = evaluate(student, encode, test_text, ref_test, retr, fatrelu_modules(student))
    series["ProSparse, θ = 0"] = ev.pop("_result")
    results["trained_theta0"] = ev
    print(
        f"trained, θ=0: sparsity {ev['sparsity']['overall']:.4f}, "
        f"cosine {ev['cosine_to_original']:.4f}, "
        f"retrieval {ev['retrieval']}"
    )

    sites = fatrelu_modules(student)
    search = search_threshold(
        sites,
        lambda: 1 - mean_cosine(embed(student, encode, val_text), ref_val),
        args.max_cos_loss,
        high=args.theta_high,
        iterations=7,
    )
    results["threshold_search"] = {
        "threshold": search.threshold,
        "val_cos_loss": search.loss,
        "evaluated": search.evaluated,
        "tolerance": args.max_cos_loss,
    }
    print(
        f"threshold θ = {search.threshold:.4g} (val 1 - cos {search.loss:.4f}); "
        f"tried {search.evaluated}"
    )

    ev = evaluate(student, encode, test_text, ref_test, retr, fatrelu_modules(student))
    series[f"ProSparse + FATReLU θ = {search.threshold:.3g}"] = ev.pop("_result")
    results["final"] = ev
    results["wall_seconds_this_session"] = time.time() - t_start
    orig, fin = results["original_gelu"]["retrieval"], ev["retrieval"]
    results["done_when"] = {
        "sparsity>=0.90": ev["sparsity"]["overall"] >= 0.90,
        "cosine>=0.95": ev["cosine_to_original"] >= 0.95,
        "top10_within_2_points": orig["top10"] - fin["top10"] <= 0.02,
    }
    write_json_atomic(results, args.out / "results.json")
    plot_activation_sparsity(series, args.out / "activation_sparsity.png")
    print(
        f"final: sparsity {ev['sparsity']['overall']:.4f}, cosine {ev['cosine_to_original']:.4f}, "
        f"retrieval {fin} vs original {orig}; done-when {results['done_when']}"
    )
    print(f"wrote {args.out / 'results.json'} and {args.out / 'activation_sparsity.png'}")


if __name__ == "__main__":
    main()
