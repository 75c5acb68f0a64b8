import torch
import torch.nn.functional as F

from sparseforge.data import augment_batch


def batch(n: int = 16, c: int = 2, h: int = 7, w: int = 9) -> torch.Tensor:
    return torch.rand((n, c, h, w), generator=torch.Generator().manual_seed(0)) + 0.5


def test_same_seed_same_output_and_shape() -> None:
    x = batch()
    a = augment_batch(x, torch.Generator().manual_seed(5))
    b = augment_batch(x, torch.Generator().manual_seed(5))
    c = augment_batch(x, torch.Generator().manual_seed(6))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_no_pad_no_flip_is_identity() -> None:
    x = batch()
    assert torch.equal(augment_batch(x, torch.Generator().manual_seed(0), pad=0, flip=False), x)


def test_flip_mirrors_some_examples_and_keeps_the_rest() -> None:
    x = batch(n=32)
    out = augment_batch(x, torch.Generator().manual_seed(1), pad=0, flip=True)
    flipped = [torch.equal(o, torch.flip(i, dims=[-1])) for o, i in zip(out, x, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    assert any(flipped) and any(kept)
    assert all(f or k for f, k in zip(flipped, kept, strict=True))


def test_crop_is_a_zero_filled_shift_within_pad() -> None:
    pad = 2
    x = batch(n=24)
    out = augment_batch(x, torch.Generator().manual_seed(2), pad=pad, flip=True)
    padded = F.pad(x, (pad, pad, pad, pad))
    h, w = x.shape[-2:]
    shifts = set()
    for i in range(len(x)):
        matches = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for candidate in (padded[i, :, dy : dy + h, dx : dx + w],)
            if torch.equal(out[i], candidate) or torch.equal(out[i], torch.flip(candidate, [-1]))
        ]
        assert matches, f"example {i} is not a shifted (and maybe flipped) crop"
        shifts.add(matches[0])
    assert len(shifts) > 3  # offsets really vary


def test_empty_batch() -> None:
    x = torch.zeros(0, 1, 5, 5)
    assert augment_batch(x, torch.Generator().manual_seed(0)).shape == x.shape
