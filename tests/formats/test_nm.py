import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseforge.formats import NM


@pytest.mark.parametrize("n,m", [(1, 2), (2, 4), (1, 4), (3, 8), (4, 8)])
@pytest.mark.parametrize("shape", [(16, 32), (6, 8, 3, 3), (4, 24, 1, 1), (40,)])
def test_round_trip_of_nm_scheme_weights(make_weight, n, m, shape):
    w, _ = make_weight(shape, "nm", 1 - n / m, n=n, m=m)
    f = NM.from_dense(w, n=n, m=m)
    assert torch.equal(f.to_dense(), w)
    rows = shape[0] if len(shape) > 1 else 1
    assert f.values.shape == f.indices.shape == (rows, w.numel() // rows * n // m)
    assert f.indices.dtype == torch.uint8


@settings(max_examples=40, deadline=None)
@given(shape=st.sampled_from([(8, 12), (4, 8, 3, 3), (3, 16, 1, 2)]), s=st.floats(0.5, 0.99),
       seed=st.integers(0, 2**16))
def test_groups_with_fewer_than_n_entries_are_padded_in_order(make_weight, shape, s, seed):
    w, _ = make_weight(shape, "nm", 0.5, seed, n=2, m=4)
    w = w * (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) >= s)  # extra zeros
    f = NM.from_dense(w, n=2, m=4)
    assert torch.equal(f.to_dense(), w)
    idx = f.indices.reshape(shape[0], -1, 2).long()
    assert torch.all(idx[..., 0] < idx[..., 1]) and torch.all(idx < 4)


def test_layout_runs_groups_along_input_channels():
    w = torch.zeros(2, 8, 3, 3)
    w[1, 5, 0, 1] = 7.0  # row 1, kernel position (0, 1), channel 5: group 1*2 + 1 = 3, position 1
    f = NM.from_dense(w, n=1, m=4)
    assert f.values.shape == (2, 18)
    assert f.values[1, 3] == 7.0 and f.indices[1, 3] == 1
    assert torch.count_nonzero(f.values) == 1


@pytest.mark.parametrize(
    "shape,group,named",
    [((4, 16), (2, slice(12, 16)), "row 2, group 3 (input columns 12..15)"),
     ((3, 8, 2, 2), (1, slice(4, 8), 1, 0),
      "row 1, group 5 (input channels 4..7 at kernel position (1, 0))")],
)
def test_rejects_weights_that_are_not_nm_naming_the_first_group(make_weight, shape, group, named):
    w, mask = make_weight(shape, "nm", 0.5, n=2, m=4)
    free = int((~mask[group]).nonzero()[0, 0])
    w[group][free] = 5.0  # a third entry in that group; every other group keeps 2
    with pytest.raises(ValueError, match=re.escape(
        f"not 2:4 sparse: {named} holds 3 entries, more than 2; prune it with the `nm` scheme"
    )):
        NM.from_dense(w, n=2, m=4)


def test_rejects_input_channels_not_divisible_by_m():
    with pytest.raises(ValueError, match="6 input channels, not divisible by the N:M group size 4"):
        NM.from_dense(torch.zeros(3, 6), n=2, m=4)


def test_rejects_a_dense_weight():
    with pytest.raises(ValueError, match="row 0, group 0 .* holds 4 entries"):
        NM.from_dense(torch.ones(2, 8), n=2, m=4)
