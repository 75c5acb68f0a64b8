"""SparseConv2d (im2col + sparse linear) against F.conv2d on the masked weight."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseforge import prune
from sparseforge.kernels import SparseConv2d


@pytest.mark.parametrize("fmt,scheme,block", [
    ("csr", "unstructured", (16, 16)),
    ("bsr", {"name": "block", "block": [4, 9]}, (4, 9)),
    ("bcr", {"name": "bcr", "block": [8, 9]}, (8, 9)),
])
@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 0, 1), (1, 2, 2)])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_conv2d_on_the_masked_weight(fmt, scheme, block, stride, padding, dilation, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3, stride=stride, padding=padding, dilation=dilation, bias=bias)
    prune(conv, scheme, 0.8)
    sparse = SparseConv2d.from_conv(conv, block, fmt)
    for batch in (1, 3):
        x = torch.randn(batch, 6, 11, 9)
        with torch.no_grad():
            expected = F.conv2d(x, conv.weight, conv.bias, stride, padding, dilation)
        torch.testing.assert_close(sparse(x), expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


def test_refuses_grouped_and_string_padding():
    with pytest.raises(ValueError, match="groups=2"):
        SparseConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="padding='same'"):
        SparseConv2d.from_conv(nn.Conv2d(4, 4, 3, padding="same"))
