import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseforge.formats import CSR
from sparseforge.sparsity.schemes import as_matrix

shapes = st.sampled_from([(7, 13), (16, 32), (8, 4, 3, 3), (5, 6, 1, 1), (33, 17), (1, 1), (9,)])


@settings(max_examples=40, deadline=None)
@given(shape=shapes, s=st.floats(0.0, 0.99), seed=st.integers(0, 2**16))
def test_round_trip_is_exact_and_matches_torch_csr(make_weight, shape, s, seed):
    w, _ = make_weight(shape, "unstructured", s, seed)
    f = CSR.from_dense(w)
    assert torch.equal(f.to_dense(), w)
    ref = as_matrix(w).to_sparse_csr()
    assert torch.equal(f.crow_indices.long(), ref.crow_indices())
    assert torch.equal(f.col_indices.long(), ref.col_indices())
    assert torch.equal(f.values, ref.values())
    assert f.crow_indices.dtype == f.col_indices.dtype == torch.int32
    assert torch.equal(f.to_torch().to_dense(), as_matrix(w))


def test_mask_keeps_exact_zero_weights_in_place():
    w = torch.tensor([[0.0, 2.0, 0.0], [3.0, 0.0, 4.0]])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    f = CSR.from_dense(w, mask=mask)
    assert f.values.tolist() == [0.0, 2.0, 3.0, 4.0]
    assert f.col_indices.tolist() == [0, 1, 0, 2] and f.crow_indices.tolist() == [0, 2, 4]
    assert torch.equal(f.to_dense(), w)


def test_nonzeros_outside_the_mask_are_refused():
    w = torch.ones(2, 3)
    with pytest.raises(ValueError, match="3 nonzeros where the mask is False; store the masked"):
        CSR.from_dense(w, mask=torch.tensor([[True, True, True], [False] * 3]))


def test_nbytes_counts_indices_values_and_metadata():
    w = torch.zeros(10, 20)
    w[0, :5] = 1.0
    f = CSR.from_dense(w)
    # crow 11 x int32, col and values 5 x 4 bytes each, shape 2 x int64, format tag 1 byte
    assert f.nbytes == 11 * 4 + 5 * 4 + 5 * 4 + 2 * 8 + 1
