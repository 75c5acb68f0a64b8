"""End to end on CPU: all-MiniLM-L6-v2 encoder latency, the original (GELU, dense) vs the ProSparse
student (FATReLU, run densely) vs the student deployed with the activation-sparse kernels
(`deploy_activation_sparse`: each layer's FFN down projection skips the zero activations), on
held-out WordNet sentences, batch 1 and 8, all three timed in one interleaved loop (median).
The deployed model's output is checked against the student's first.

    python benchmarks/prosparse_latency.py --run /work/runs/prosparse_minilm   # after prosparse_minilm.py
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
from pathlib import Path

import torch

from sparseforge.activation import ZeroCounter, fatrelu_modules, substitute_activations
from sparseforge.activation.deploy import deploy_activation_sparse
from sparseforge.activation.hf import load_minilm, tokenizer_encoder
from sparseforge.checkpoint import load_weights_only
from sparseforge.data.wordnet import load_wordnet, sentences, split_synsets
from sparseforge.profile import machine_info
from sparseforge.profile.latency import interleaved

ROUNDS, REPEATS = 5, 10


def student_from_run(run: Path, original: torch.nn.Module) -> tuple[torch.nn.Module, float]:
    """The ProSparse student of a `prosparse_minilm.py` run, with its searched FATReLU threshold."""
    results = json.loads((run / "results.json").read_text())
    threshold = float(results["threshold_search"]["threshold"])
    student = copy.deepcopy(original)
    substitute_activations(student, threshold=threshold)
    student.load_state_dict(load_weights_only(run / "checkpoint.pt")["student"])
    return student.eval(), threshold


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="output folder of prosparse_minilm.py")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    info = machine_info()
    print(f"CPU: {info['cpu_model']} ({info['cpu_capability']}), torch {info['torch_version']}, "
          f"threads {info['torch_threads']}")
    original, tokenizer = load_minilm()
    student, threshold = student_from_run(args.run, original)
    deployed = copy.deepcopy(student)
    report = deploy_activation_sparse(deployed)
    print(f"FATReLU threshold {threshold:g}; deployed: {', '.join(report.replaced)}")
    _, _, test = split_synsets(load_wordnet())
    texts = sentences(test)[:64]
    encode = tokenizer_encoder(tokenizer)
    print(f"{'batch':>5} {'tokens':>6} {'FFN sparsity':>12} {'original ms':>11} {'student ms':>10} "
          f"{'deployed ms':>11} {'vs original':>11} {'vs student':>10}")
    with torch.inference_mode():
        for batch in args.batches:
            inputs = encode(texts[:batch])
            counter = ZeroCounter(fatrelu_modules(student))
            counter.token_mask = inputs["attention_mask"]
            expected = student(**inputs).last_hidden_state
            counter.remove()
            got = deployed(**inputs).last_hidden_state
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
            models = {"original": original, "student": student, "deployed": deployed}
            t = interleaved({name: functools.partial(m, **inputs) for name, m in models.items()},
                            rounds=ROUNDS, repeats=REPEATS)
            o, s, d = (t[k].median_s * 1e3 for k in ("original", "student", "deployed"))
            print(f"{batch:>5} {int(inputs['attention_mask'].sum()):>6} {counter.result.overall:>12.1%} "
                  f"{o:>11.2f} {s:>10.2f} {d:>11.2f} {o / d:>10.2f}x {s / d:>9.2f}x", flush=True)


if __name__ == "__main__":
    main()
