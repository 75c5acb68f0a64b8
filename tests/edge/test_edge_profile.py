"""Profiling a model's splits: bytes per precision, exact fp32 accuracy, tails timed on the
cloud device; the planner runs on the result; the CLI knows the two verbs."""

import pytest
import torch

from sparseforge.cli import build_parser
from sparseforge.edge.cloud import time_tails
from sparseforge.edge.planner import plan
from sparseforge.edge.profile import accuracy_drop, profile_splits
from sparseforge.edge.server import read_token
from sparseforge.edge.splits import split_model
from sparseforge.models.cnn import CompactCNN


def test_profile_of_every_split_feeds_the_planner():
    torch.manual_seed(0)
    model = CompactCNN(width=4, hidden=8).eval()
    x, images = torch.randn(2, 1, 28, 28), torch.randn(16, 1, 28, 28)
    labels = model(images).argmax(1)
    tails = time_tails(model, x, "cpu", repeats=2)
    profile = profile_splits(model, x, tails, images, labels, repeats=2, edge_slowdown=3.0)
    names = [p.name for p in profile]
    assert names[0] == "input" and names[-1] == "output" and set(tails) == set(names[:-1])
    first = profile[0]
    assert first.head_ms == 0.0 and first.bytes == {"fp32": 2 * 784 * 4, "fp16": 2 * 784 * 2,
                                                    "int8": 2 * 784}
    assert first.reply_bytes == 2 * 10 * 4
    assert all(p.accuracy_drop["fp32"] == 0.0 for p in profile[:-1])
    assert profile[-1].tail_ms == 0.0 and profile[-1].head_ms > 0.0
    slow = plan(profile, 0.001, 50.0)  # 1 kbit/s: shipping anything costs seconds
    assert slow.split == "output"


def test_accuracy_drop_counts_changed_predictions():
    model = CompactCNN(width=4, hidden=8).eval()
    head, tail = split_model(model, "features.pool2")
    images = torch.randn(8, 1, 28, 28)
    labels = model(images).argmax(1)
    drops = accuracy_drop(head, tail, images, labels, batch=4)
    assert drops["fp32"] == 0.0 and -100 <= drops["int8"] <= 100
    wrong = (labels + 1) % 10  # the reference is 0% right: nothing can be lost in fp32
    assert accuracy_drop(head, tail, images, wrong, batch=8)["fp32"] == 0.0


def test_cli_has_partition_and_serve_and_token_must_be_long(tmp_path):
    args = build_parser().parse_args(
        ["partition", "runs/x", "--bandwidth-mbps", "1", "10", "--rtt-ms", "5"])
    assert args.bandwidth_mbps == [1.0, 10.0] and args.rtt_ms == 5.0 and args.tolerance == 0.5
    args = build_parser().parse_args(
        ["serve", "runs/x", "--split", "features.pool1", "--port", "0", "--token-file", "t"])
    assert args.host == "127.0.0.1"
    short = tmp_path / "t"
    short.write_text("abc\n")
    with pytest.raises(ValueError, match="at least 16"):
        read_token(short)
    short.write_text("x" * 20 + "\n")
    assert read_token(short) == "x" * 20
