"""Sparse test weights: random values under a real scheme's mask."""

import pytest
import torch

from sparseforge.sparsity.schemes import SCHEMES


def masked_weight(shape, scheme, sparsity, seed=0, **params):
    """(weight * mask, mask) with the mask from `scheme` on random magnitudes; the random
    values are never exactly 0, so the nonzeros are the mask."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    w = torch.where(w == 0, torch.ones_like(w), w)
    mask = SCHEMES.get(scheme)(torch.rand(shape, generator=g), sparsity, **params)
    return w * mask, mask


@pytest.fixture(scope="session")
def make_weight():
    return masked_weight
