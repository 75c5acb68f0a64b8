"""The planner picks the obviously right split on synthetic profiles."""

import pytest

from sparseforge.edge.planner import SplitProfile, plan, predict


def _profile(drop_int8=0.0):
    # the edge is slow (10 ms for the whole model), the cloud fast (1 ms); the input is big,
    # the middle activation small
    return [
        SplitProfile("input", 0.0, 1.0, {"fp32": 400_000, "fp16": 200_000, "int8": 100_000},
                     {"fp32": 0.0, "fp16": 0.0, "int8": drop_int8}, 40),
        SplitProfile("mid", 3.0, 0.5, {"fp32": 4_000, "fp16": 2_000, "int8": 1_000},
                     {"fp32": 0.0, "fp16": 0.0, "int8": drop_int8}, 40),
        SplitProfile("output", 10.0, 0.0, {}),
    ]


def test_fast_link_goes_all_cloud_slow_link_all_edge_mid_link_splits():
    assert plan(_profile(), 100_000, 0.0).split == "input"  # 100 Gbit/s, no rtt
    assert plan(_profile(), 0.1, 20.0).split == "output"  # 0.1 Mbit/s
    chosen = plan(_profile(), 10.0, 1.0)
    assert (chosen.split, chosen.precision) == ("mid", "int8")
    assert chosen.predicted_ms == pytest.approx(3.0 + (1000 + 40) * 8 / 10e6 * 1e3 + 1.0 + 0.5)


def test_tolerance_rules_out_lossy_precisions():
    chosen = plan(_profile(drop_int8=2.0), 10.0, 1.0, tolerance=0.5)
    assert (chosen.split, chosen.precision) == ("mid", "fp16")
    assert plan(_profile(drop_int8=2.0), 10.0, 1.0, tolerance=3.0).precision == "int8"


def test_all_edge_pays_no_transfer_and_bad_bandwidth_is_an_error():
    edge = predict(_profile()[-1], None, 1.0, 50.0)
    assert edge.predicted_ms == 10.0 and edge.transfer_ms == 0.0
    with pytest.raises(ValueError, match="bandwidth must be positive"):
        plan(_profile(), 0.0, 1.0)
