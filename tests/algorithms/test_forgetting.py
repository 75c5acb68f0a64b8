import io

import pytest
import torch
from pydantic import ValidationError

from sparseforge.algorithms.forgetting import ForgettingConfig, ForgettingTracker

# Correctness of examples 0..4 over four presentations (one row per epoch).
SEQUENCE = [
    [1, 0, 1, 0, 1],
    [0, 0, 1, 1, 1],
    [1, 0, 1, 0, 1],
    [0, 0, 1, 1, 1],
]
# 0: right->wrong twice; 1: never right; 2: always right; 3: wrong->right->wrong->right (one
# forgetting); 4: always right
FORGETS = [2, 0, 0, 1, 0]


def present(tracker, rows, order=(4, 2, 0, 3, 1)):
    """Present every example once per row, in two batches and a shuffled order."""
    idx = torch.tensor(order)
    for row in rows:
        correct = torch.tensor(row, dtype=torch.bool)[idx]
        tracker.observe(idx[:2], correct[:2])
        tracker.observe(idx[2:], correct[2:])


def test_forgetting_events_are_counted_per_example_on_a_hand_made_sequence():
    tracker = ForgettingTracker(ForgettingConfig())
    present(tracker, SEQUENCE)
    assert tracker.forgets.tolist() == FORGETS
    assert tracker.unforgettable().tolist() == [False, False, True, False, True]
    assert tracker.metrics()["forgetting_events"] == 3


def test_the_drop_filter_starts_after_the_warm_up_and_then_holds():
    tracker = ForgettingTracker(ForgettingConfig(drop_after_epoch=2))
    g = torch.Generator().manual_seed(0)
    assert tracker.keep(0, 5, g) is None
    present(tracker, SEQUENCE[:1])
    assert tracker.keep(1, 5, g) is None  # one epoch of statistics: still training on all
    present(tracker, SEQUENCE[1:2])
    keep = tracker.keep(2, 5, g)
    assert keep.tolist() == [True, True, False, False, False]  # 3: learned at its 2nd showing
    present(tracker, [[0, 0, 0, 0, 0]])  # example 2 now forgotten: the decision is final
    assert tracker.keep(3, 5, g).tolist() == keep.tolist()
    assert tracker.metrics()["examples_dropped"] == 3


def test_the_cap_drops_a_seeded_subset_of_the_unforgettable():
    picks = []
    for _ in range(2):
        tracker = ForgettingTracker(ForgettingConfig(drop_after_epoch=1, max_drop_fraction=0.3))
        tracker.observe(torch.arange(10), torch.ones(10, dtype=torch.bool))
        keep = tracker.keep(1, 10, torch.Generator().manual_seed(7))
        assert int((~keep).sum()) == 3
        picks.append(keep)
    assert torch.equal(picks[0], picks[1])


def test_state_round_trips_through_a_weights_only_checkpoint():
    tracker = ForgettingTracker(ForgettingConfig(drop_after_epoch=1))
    present(tracker, SEQUENCE[:3])
    tracker.keep(3, 5, torch.Generator())
    tracker.epoch_done(12, 15)
    buffer = io.BytesIO()
    torch.save(tracker.state_dict(), buffer)
    buffer.seek(0)
    fresh = ForgettingTracker(ForgettingConfig(drop_after_epoch=1))
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(fresh.forgets, tracker.forgets) and torch.equal(fresh.last, tracker.last)
    assert torch.equal(fresh.dropped, tracker.dropped) and fresh.decided
    assert fresh.metrics() == tracker.metrics()
    assert fresh.metrics()["steps_saved_fraction"] == pytest.approx(0.2)


def test_statistics_grow_to_the_largest_index_seen():
    tracker = ForgettingTracker(ForgettingConfig())
    tracker.observe(torch.tensor([7]), torch.tensor([True]))
    assert len(tracker.last) == 8 and tracker.last[7] == 1 and (tracker.last[:7] == -1).all()
    assert tracker.keep(0, 12, torch.Generator()) is None and len(tracker.forgets) == 12


def test_config_rejects_unknown_keys_and_a_zero_warm_up():
    with pytest.raises(ValidationError):
        ForgettingConfig(drop_after_epoch=0)
    with pytest.raises(ValidationError):
        ForgettingConfig(drop_after=2)
