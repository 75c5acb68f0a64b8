"""Tiny HuggingFace BERT and LLaMA models from small configs (random weights, no downloads)."""

import pytest
import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM


def _tiny_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16, hidden_act="gelu")
    return BertModel(cfg).eval()


def _tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def tiny_bert():
    """tiny_bert(seed=0): a 2-layer BERT (hidden 16, FFN 32, vocab 40), eval mode."""
    return _tiny_bert


@pytest.fixture
def tiny_llama():
    """tiny_llama(seed=0): a 2-layer LLaMA (hidden 16, SwiGLU 24, vocab 40), eval mode."""
    return _tiny_llama
