"""The done-when: start the server, send a malformed tensor and a wrong token, get clear
errors, then serve a good request; and round trips equal the local forward."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseforge.edge.client import EdgeClient, Link, ServerError, post_tensor
from sparseforge.edge.profile import roundtrip
from sparseforge.edge.server import ServerThread, make_app
from sparseforge.edge.splits import split_model, tails_for
from sparseforge.edge.wire import encode
from sparseforge.models.cnn import CompactCNN

TOKEN = "s3cret-token"
SPLIT = "features.pool1"


@pytest.fixture(scope="module")
def served():
    torch.manual_seed(0)
    model = CompactCNN(width=8, hidden=16).eval()
    x = torch.randn(2, 1, 28, 28)
    app = make_app(tails_for(model, x, [SPLIT, "input"]), TOKEN, max_bytes=64 * 1024)
    with ServerThread(app) as server:
        yield model, x, server


def _post(server, header, body, token=TOKEN):
    return post_tensor("127.0.0.1", server.port, token, header, body, link=None, timeout_s=20)


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(served):
    model, x, server = served
    head, _ = split_model(model, SPLIT)
    header, body = encode(head(x), "fp32", split=SPLIT)
    with pytest.raises(ServerError, match="token") as err:
        _post(server, header, body, token="wrong")
    assert err.value.status == 401
    with pytest.raises(ServerError, match="body has 10 bytes") as err:
        _post(server, header, b"0123456789")
    assert err.value.status == 400
    with pytest.raises(ServerError, match="does not match this split's input"):
        _post(server, *encode(torch.zeros(2, 8, 7, 7), "fp32", split=SPLIT))
    with pytest.raises(ServerError, match="not valid JSON"):
        _post(server, "{nope", body)
    with pytest.raises(ServerError, match="dtype must be one of"):
        _post(server, json.dumps({"dtype": "pickle", "shape": [2], "split": SPLIT}), body)
    with pytest.raises(ServerError, match="not served here"):
        _post(server, *encode(head(x), "fp32", split="features.conv1"))
    with pytest.raises(ServerError, match="exceeds the server's limit") as err:
        _post(server, *encode(torch.zeros(64, 8, 14, 14), "fp32", split=SPLIT))
    assert err.value.status == 413
    reply, out = _post(server, header, body)  # still serving
    assert torch.equal(out, model(x).detach())
    assert reply["tail_ms"] >= 0


@pytest.mark.parametrize("split", [SPLIT, "input"])
def test_fp32_round_trip_equals_local_forward(served, split):
    model, x, server = served
    head, _ = split_model(model, split)
    client = EdgeClient(head, split, "fp32", "127.0.0.1", server.port, TOKEN,
                        link=Link(bandwidth_mbps=1000.0, rtt_ms=1.0))
    out, times = client.infer(x)
    assert torch.equal(out, model(x).detach())
    assert times["total_ms"] >= times["tail_ms"]


def test_int8_round_trip_within_the_quantization_error_bound(served):
    model, x, server = served
    head, _ = split_model(model, SPLIT)
    act = head(x).detach()
    out, _ = EdgeClient(head, SPLIT, "int8", "127.0.0.1", server.port, TOKEN).infer(x)
    half_step = json.loads(encode(act, "int8")[0])["scale"] / 2
    assert (roundtrip(act, "int8") - act).abs().max() <= half_step * (1 + 1e-5)
    # tail(act + e) for every |e| <= half a step lies in the interval propagated from
    # [act - half_step, act + half_step], and so does the exact output
    ref = model(x).detach()
    lo, hi = _propagate(model, act - half_step, act + half_step)
    assert torch.all(lo <= ref + 1e-4) and torch.all(ref <= hi + 1e-4)
    assert torch.all(lo - 1e-4 <= out) and torch.all(out <= hi + 1e-4)
    assert not torch.equal(out, ref)  # it really was quantized


@torch.no_grad()
def _propagate(model, lo, hi):
    """Interval bounds through the CompactCNN layers after the split (eval mode)."""
    layers = list(model.features)[list(dict(model.features.named_children())).index("pool1") + 1:]
    for m in [*layers, *model.classifier]:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            mid, rad = (hi + lo) / 2, (hi - lo) / 2
            if isinstance(m, nn.Conv2d):
                r = F.conv2d(rad, m.weight.abs(), None, m.stride, m.padding)
            else:
                r = F.linear(rad, m.weight.abs())
            lo, hi = m(mid) - r, m(mid) + r
        else:  # BN (eval: per-channel affine), ReLU, max-pool, flatten, dropout: monotone or
            a, b = m(lo), m(hi)  # an affine map whose sign per channel min/max takes care of
            lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    return lo, hi
