"""Split points cover the model: head then tail equals the whole model bit for bit."""

import pytest
import torch

from sparseforge.edge.splits import INPUT, OUTPUT, split_model, split_points, tails_for
from sparseforge.models.cnn import CompactCNN
from sparseforge.models.resnet import ResNet


@pytest.mark.parametrize("model, shape", [
    (lambda: CompactCNN(width=8, hidden=16), (3, 1, 28, 28)),
    (lambda: ResNet(depth=20), (2, 3, 32, 32)),
])
def test_every_split_reproduces_the_model_exactly(model, shape):
    torch.manual_seed(0)
    m, x = model().eval(), torch.randn(shape)
    points = split_points(m)
    assert points[0].name == INPUT and points[-1].name == OUTPUT
    assert len({p.name for p in points}) == len(points)
    with torch.no_grad():
        ref = m(x)
        for p in points:
            head, tail = split_model(m, p.name)
            assert torch.equal(tail(head(x)), ref), p.name


def test_resnet_cuts_only_between_blocks():
    names = [p.name for p in split_points(ResNet(depth=8))]
    assert "layer1.0.relu2" in names and "layer2.0.relu2" in names
    assert "layer1.0.conv1" not in names  # the residual input is still live there


def test_tails_report_their_input_shape_and_unknown_split_lists_valid_ones():
    m = CompactCNN(width=8, hidden=16).eval()
    tails = tails_for(m, torch.randn(2, 1, 28, 28), ["features.pool1"])
    assert tails["features.pool1"][1] == (8, 14, 14)
    with pytest.raises(ValueError, match="valid: input, features.conv1"):
        split_model(m, "nope")
