"""Semi-structured activation sparsity: tile masks on the im2col layout, the skipping runtime
against plain F.conv2d, and the modifier in a tiny training run."""

import copy

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from sparseforge.activation.im2col_tiles import (
    build_plan,
    choose_run,
    choose_tiles,
    conv_out_size,
    feature_map_mask,
    im2col_mask,
    semi_structured_conv2d,
    semi_structured_conv2d_reference,
)
from sparseforge.activation.semi_structured import SemiStructuredConv2d, freeze, wrap_convs
from sparseforge.algorithms.act_semi_structured import SemiStructuredActivationConfig
from sparseforge.recipe import load_recipe
from sparseforge.trainer import build_loop

GEOMETRIES = [("channel", (3,)), ("spatial", (2, 3))]
CONVS = [  # (stride, padding, dilation, kernel)
    (1, 1, 1, 3), (2, 1, 1, 3), (2, 0, 1, 3), (1, 2, 2, 3), (1, 0, 1, 1), (2, (1, 2), 1, (3, 5)),
]


def _layer(geometry, tile, stride, padding, dilation, kernel, bias=True, seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(7, 5, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias)
    return SemiStructuredConv2d.from_conv(conv, geometry=geometry, tile=tile, criterion="random",
                                          seed=seed)


@pytest.mark.parametrize("geometry,tile", GEOMETRIES)
@pytest.mark.parametrize("stride,padding,dilation,kernel", CONVS)
@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("channels_last", [False, True])
def test_runtime_equals_reference(geometry, tile, stride, padding, dilation, kernel, ratio,
                                  channels_last):
    layer = _layer(geometry, tile, stride, padding, dilation, kernel, bias=ratio != 0.5)
    x = torch.randn(3, 7, 11, 9, generator=torch.Generator().manual_seed(1))  # odd sizes
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    layer.train()
    layer(x)  # sizes the spatial mask
    layer.set_ratio(ratio)
    keep = layer.keep_mask()
    assert abs(layer.masked_ratio - ratio) <= 0.25  # whole tiles: close to the target
    if ratio in (0.0, 1.0):
        assert layer.masked_ratio == ratio
    reference = semi_structured_conv2d_reference(x, layer, geometry, keep)
    trained = layer(x)  # the training path: mask applied, full conv computed
    layer.eval()
    with torch.no_grad():
        deployed = layer(x)
    torch.testing.assert_close(trained, reference, rtol=0, atol=0)
    torch.testing.assert_close(deployed, reference, rtol=1e-5, atol=1e-5)
    if 0 < ratio < 1:
        assert (reference != F.conv2d(x, layer.weight, layer.bias, stride, padding,
                                      dilation)).any()


@pytest.mark.parametrize("geometry,tile", GEOMETRIES)
def test_zeros_fill_whole_im2col_tiles(geometry, tile):
    """After F.unfold, the mask is whole rows (channel tiles x kh x kw) or whole columns
    (tiles of output positions), and the masked conv is the GEMM on the masked im2col."""
    layer = _layer(geometry, tile, 1, 1, 1, 3)
    x = torch.randn(2, 7, 10, 8)
    layer.train()
    layer(x)
    layer.set_ratio(0.5)
    keep = layer.keep_mask()
    out_size = conv_out_size((10, 8), layer)
    cols = F.unfold(x, 3, padding=1)  # (B, C*9, L), rows (c, kh, kw)
    mask = im2col_mask(geometry, keep, 7, (3, 3), out_size)  # (C*9, L)
    assert mask.shape == cols.shape[1:]
    if geometry == "channel":
        masked_cols = F.unfold(x * feature_map_mask(geometry, keep), 3, padding=1)
        torch.testing.assert_close(masked_cols, cols * mask, rtol=0, atol=0)
        per_channel = mask.view(7, 9, -1)
        assert (per_channel == per_channel[:, :1, :1]).all()  # rows of a channel go together
        per_tile = F.pad(keep, (0, 2)).view(3, 3)[:2]  # the two full tiles of 3 channels
        assert (per_tile == per_tile[:, :1]).all()
    else:
        grid = mask[0].view(out_size)  # (OH, OW)
        assert (mask == mask[:1]).all()  # whole columns
        blocks = grid[:10, :6].reshape(5, 2, 2, 3)  # full 2x3 tiles of the 10x8 output
        assert (blocks == blocks[:, :1, :, :1]).all()
    gemm = layer.weight.reshape(5, -1) @ (cols * mask) + layer.bias[:, None]  # (B, O, L)
    reference = semi_structured_conv2d_reference(x, layer, geometry, keep)
    if geometry == "spatial":
        gemm = gemm * mask[:1]  # masked columns are not computed at all: output 0, not bias
    torch.testing.assert_close(gemm.view_as(reference), reference, rtol=1e-5, atol=1e-5)
    assert 0.3 < 1 - mask.float().mean().item() < 0.7


def test_runtime_runs_a_smaller_problem():
    layer = _layer("spatial", (2, 2), 1, 1, 1, 3)
    x = torch.randn(1, 7, 8, 8)
    layer.train()
    layer(x)
    layer.set_ratio(0.75)
    plan = build_plan(layer, "spatial", layer.keep_mask(), (8, 8))
    assert plan.kept.numel() == 16  # 64 positions, 3/4 masked
    channel = _layer("channel", (3,), 1, 1, 1, 3)
    channel.set_ratio(0.5)
    plan = build_plan(channel, "channel", channel.keep_mask(), (8, 8))
    assert plan.weight.shape[1] == plan.kept.numel() < 7
    torch.testing.assert_close(
        semi_structured_conv2d(x, channel, plan),
        semi_structured_conv2d_reference(x, channel, "channel", channel.keep_mask()),
        rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        channel.tile_keep.copy_(torch.tensor([True, True, False]))  # channels 0-5: one run
    run = build_plan(channel, "channel", channel.keep_mask(), (8, 8))
    assert run.channel_run == (0, 6)
    torch.testing.assert_close(
        semi_structured_conv2d(x, channel, run),
        semi_structured_conv2d_reference(x, channel, "channel", channel.keep_mask()),
        rtol=1e-5, atol=1e-5)


def test_choose_tiles_nested_and_sized():
    scores = torch.rand(10, generator=torch.Generator().manual_seed(0))
    masks = [choose_tiles(scores, r) for r in (0.0, 0.2, 0.5, 0.9, 1.0)]
    assert [int((~m).sum()) for m in masks] == [0, 2, 5, 9, 10]
    for small, big in zip(masks, masks[1:], strict=False):
        assert (big <= small).all()  # a growing ratio only adds masked tiles
    assert not masks[2][scores.argsort()[:5]].any()  # the lowest scores go first
    sizes = torch.tensor([4.0, 4.0, 1.0])  # e.g. 9 channels in tiles of 4
    keep = choose_tiles(torch.tensor([0.0, 1.0, 2.0]), 0.5, sizes)
    assert keep.tolist() == [False, True, True]  # 4 of 9 elements is closest to a half


def test_contiguous_run_keeps_the_best_window_and_slices():
    keep = choose_run(torch.tensor([5.0, 0.0, 3.0, 4.0, 2.0, 1.0]), 0.5)
    assert keep.tolist() == [False, False, True, True, True, False]  # 3+4+2 beats 5+0+3
    torch.manual_seed(0)
    conv = nn.Conv2d(10, 4, 3, padding=1)
    layer = SemiStructuredConv2d.from_conv(conv, geometry="channel", tile=(2,), contiguous=True)
    x = torch.randn(2, 10, 6, 6).contiguous(memory_format=torch.channels_last)
    layer.train()
    layer(x)
    layer.set_ratio(0.6)
    plan = build_plan(layer, "channel", layer.keep_mask(), (6, 6))
    assert plan.channel_run is not None and plan.channel_run[1] == 4
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), semi_structured_conv2d_reference(
            x, layer, "channel", layer.keep_mask()), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="channel"):
        SemiStructuredConv2d.from_conv(conv, geometry="spatial", contiguous=True)


def test_magnitude_criterion_masks_quiet_positions():
    """Spatial tiles where the output is silent (an empty image border) go first."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    layer = SemiStructuredConv2d.from_conv(conv, geometry="spatial", tile=(2, 2))
    x = torch.zeros(4, 3, 8, 8)
    x[:, :, 2:6, 2:6] = torch.randn(4, 3, 4, 4)
    layer.train()
    layer(x)
    layer.set_ratio(0.5)
    keep = layer.keep_mask()
    assert keep[3:5, 3:5].all() and not keep[0].any()


def test_spatial_mask_survives_state_dict_round_trip():
    layer = _layer("spatial", (2, 2), 1, 1, 1, 3)
    x = torch.randn(2, 7, 6, 6)
    layer.train()
    layer(x)
    layer.set_ratio(0.5)
    fresh = _layer("spatial", (2, 2), 1, 1, 1, 3, seed=5)
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.keep_mask(), layer.keep_mask())
    layer.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)


def test_frozen_mask_does_not_change():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1))
    wrapped = wrap_convs(model, ["2"], geometry="channel", tile=(2,), criterion="random")
    assert isinstance(model[2], SemiStructuredConv2d) and list(wrapped) == ["2"]
    model[2].set_ratio(0.5)
    assert freeze(model) == {"2": pytest.approx(0.5)}
    with pytest.raises(RuntimeError, match="frozen"):
        model[2].set_ratio(0.7)


def test_config_rejects_bad_tiles_and_order():
    with pytest.raises(ValidationError, match="spatial tile is 2"):
        SemiStructuredActivationConfig(geometry="spatial", tile=(4,), ratio=0.5, end_epoch=1)
    with pytest.raises(ValidationError, match="end_epoch"):
        SemiStructuredActivationConfig(ratio=0.5, start_epoch=2, end_epoch=1)
    with pytest.raises(ValidationError, match="extra"):
        SemiStructuredActivationConfig(ratio=0.5, end_epoch=1, tile_shape=(4,))


def _logits_with_reference_convs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model in eval mode, but every wrapped conv on its training path (plain conv with
    the mask multiplied in): the reference the deployed runtime must match."""
    model.eval()
    for m in model.modules():
        if isinstance(m, SemiStructuredConv2d):
            m.train()
    with torch.no_grad():
        out = model(x)
    model.eval()
    return out


@pytest.mark.parametrize("geometry,tile", [("channel", [2]), ("spatial", [2, 2])])
def test_modifier_ramps_trains_and_deploys(make_recipe, tmp_path, geometry, tile):
    recipe = load_recipe(make_recipe(
        train={"epochs": 2, "batch_size": 32, "seed": 0},
        modifiers=[{"type": "semi_structured_activation", "geometry": geometry, "tile": tile,
                    "ratio": 0.5, "end_epoch": 1, "update_every": 0.25, "schedule": "linear"}],
    ))
    loop, _, _ = build_loop(recipe, tmp_path / "run")
    wrapped = {n: m for n, m in loop.model.named_modules() if isinstance(m, SemiStructuredConv2d)}
    assert sorted(wrapped) == ["features.conv2", "features.conv3", "features.conv4"]  # not conv1
    records = [loop.run_epoch(e, False, tmp_path / "ckpt.pt") for e in range(2)]
    assert records[0]["act_target_ratio"] == pytest.approx(0.5)  # linear ramp ends at epoch 1
    assert 0.4 <= records[1]["act_masked_ratio"] <= 0.6
    assert all(m.frozen for m in wrapped.values())
    assert records[1]["train_loss"] < records[0]["train_loss"]
    assert records[1]["val_accuracy"] > 0.3  # 10 classes: above chance
    x = loop.splits.test.tensors[0][:16]
    model = loop.model.cpu()
    reference = _logits_with_reference_convs(model, x)
    with torch.no_grad():
        deployed = model.eval()(x)
    torch.testing.assert_close(deployed, reference, rtol=1e-4, atol=1e-4)
    restored = copy.deepcopy(model)
    restored.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(restored(x), deployed, rtol=0, atol=0)


def test_ratio_ramps_cubic(make_recipe, tmp_path):
    recipe = load_recipe(make_recipe(
        train={"epochs": 2},
        modifiers=[{"type": "semi_structured_activation", "ratio": 0.75, "end_epoch": 2,
                    "update_every": 0.5, "criterion": "random"}],
    ))
    loop, _, _ = build_loop(recipe, tmp_path / "run")
    modifier = loop.session.modifiers[0]
    seen = []
    for step in range(1, 2 * loop.steps_per_epoch + 1):
        loop.session.global_step = step
        modifier.on_step(loop.session)
        seen.append(modifier.current)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(0.75)
    assert 0 < seen[len(seen) // 4] < seen[len(seen) // 2] < 0.75
    assert seen[len(seen) // 4] > 0.75 / 4  # cubic: fast at first
