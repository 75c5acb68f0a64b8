"""Wire format: lossless fp32, bounded int8 error, and validation that names the problem."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseforge.edge.profile import roundtrip
from sparseforge.edge.wire import WireError, decode, encode, parse_header


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=64))
def test_fp32_is_lossless_and_int8_is_within_half_a_step(values):
    x = torch.tensor(values).reshape(1, -1)
    assert torch.equal(roundtrip(x, "fp32"), x)
    header = json.loads(encode(x, "int8")[0])
    err = (roundtrip(x, "int8") - x).abs().max()
    assert err <= header["scale"] / 2 * (1 + 1e-4) + 1e-6


def test_decode_checks_shape_length_and_int8_params():
    header, body = encode(torch.ones(2, 3), "fp16")
    assert torch.equal(decode(parse_header(header), body, (3,)), torch.ones(2, 3))
    with pytest.raises(WireError, match="does not match this split's input"):
        decode(parse_header(header), body, (4,))
    with pytest.raises(WireError, match="body has 11 bytes"):
        decode(parse_header(header), body[:-1], (3,))
    bad = json.dumps({"dtype": "int8", "shape": [2], "scale": -1.0, "zero_point": 0})
    with pytest.raises(WireError, match="finite positive scale"):
        parse_header(bad)
    with pytest.raises(WireError, match="positive integers"):
        parse_header(json.dumps({"dtype": "fp32", "shape": [2, -1]}))
    with pytest.raises(WireError, match="missing"):
        parse_header(None)
