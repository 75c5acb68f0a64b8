import statistics

import pytest
import torch

from sparseforge.profile import timing
from sparseforge.profile.timing import Timing, measure


def test_measure_calls_warmup_plus_repeats_and_summarises_samples():
    calls = []
    result = measure(lambda: calls.append(1), warmup=2, repeats=7)
    assert len(calls) == 9
    assert result.repeats == 7 == len(result.samples)
    assert result.median_s == statistics.median(result.samples)
    assert result.min_s == min(result.samples)
    assert result.mean_s == pytest.approx(statistics.fmean(result.samples))
    assert result.min_s <= result.median_s <= max(result.samples)
    assert result.median_ms == pytest.approx(result.median_s * 1e3)


def test_min_time_keeps_sampling_until_total_reached():
    result = measure(lambda: sum(range(1000)), warmup=0, repeats=1, min_time_s=0.002)
    assert sum(result.samples) >= 0.002
    assert result.repeats == len(result.samples) >= 1


def test_inference_mode_only_when_asked():
    seen = []
    measure(lambda: seen.append(torch.is_inference_mode_enabled()), warmup=0, repeats=1)
    measure(
        lambda: seen.append(torch.is_inference_mode_enabled()), warmup=0, repeats=1, inference=True
    )
    assert seen == [False, True]


def test_synchronises_around_each_call_on_cuda(monkeypatch):
    syncs = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(device))
    measure(lambda: None, warmup=1, repeats=3, device="cuda")
    assert len(syncs) == 6
    syncs.clear()
    measure(lambda: None, warmup=1, repeats=3, device="cpu")
    assert syncs == []


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"warmup": -1}, {"min_time_s": -1.0}])
def test_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        measure(lambda: None, **kwargs)


def test_timing_is_frozen_and_needs_samples():
    t = Timing.from_samples([0.3, 0.1, 0.2])
    assert (t.median_s, t.min_s, t.repeats) == (0.2, 0.1, 3)
    with pytest.raises(AttributeError):
        t.median_s = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        timing.Timing.from_samples([])
