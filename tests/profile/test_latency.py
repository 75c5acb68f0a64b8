import pytest
import torch
from torch import nn

from sparseforge.profile.latency import checked_medians, model_latency
from sparseforge.profile.timing import Timing


def test_one_timing_per_batch_size():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    result = model_latency(model, (3, 4), batch_sizes=(1, 8), repeats=3)
    assert sorted(result) == [1, 8]
    assert all(isinstance(t, Timing) and t.repeats == 3 for t in result.values())


def test_restores_thread_count_and_training_flag():
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    seen_threads = []
    model = nn.Linear(4, 2)
    model.register_forward_pre_hook(lambda m, i: seen_threads.append(torch.get_num_threads()))
    model.train()
    model_latency(model, (4,), batch_sizes=(2,), threads=target, repeats=2)
    assert set(seen_threads) == {target}
    assert torch.get_num_threads() == before
    assert model.training


def test_restores_thread_count_when_forward_fails():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        model_latency(nn.Linear(4, 2), (5,), threads=1, repeats=1)
    assert torch.get_num_threads() == before


def test_runs_in_inference_mode():
    seen = []
    model = nn.Linear(2, 2)
    model.register_forward_pre_hook(lambda m, i: seen.append(torch.is_inference_mode_enabled()))
    model_latency(model, (2,), batch_sizes=(1,), repeats=1)
    assert seen and all(seen)


@pytest.mark.parametrize("kwargs", [{"threads": 0}, {"batch_sizes": ()}, {"batch_sizes": (0,)}])
def test_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        model_latency(nn.Linear(2, 2), (2,), **kwargs)


def test_compare_latency_times_every_model_on_every_batch_size():
    from sparseforge.profile.latency import compare_latency

    models = {"a": nn.Linear(4, 2), "b": nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))}
    calls = {k: 0 for k in models}
    for k, m in models.items():
        m.register_forward_pre_hook(lambda mod, i, k=k: calls.__setitem__(k, calls[k] + 1))
    result = compare_latency(models, (4,), batch_sizes=(1, 3), rounds=3, repeats=2)
    assert set(result) == {"a", "b"}
    for per_batch in result.values():
        assert sorted(per_batch) == [1, 3]
        assert all(t.repeats == 6 for t in per_batch.values())  # 3 rounds x 2 repeats
    # same number of calls for each model: warm-up 3 + 1 + 1, plus 6 timed, per batch size
    assert calls["a"] == calls["b"] == 2 * (3 + 1 + 1 + 6)


def test_checked_medians_times_every_candidate_and_stops_at_a_wrong_one():
    x = torch.randn(8, 8)
    fns = {"dense": lambda: x @ x, "same": lambda: torch.mm(x, x)}
    medians = checked_medians(fns, reference="dense", rtol=1e-5, where="8x8", rounds=1, repeats=2)
    assert set(medians) == {"dense", "same"} and all(m > 0 for m in medians.values())
    wrong = {**fns, "off": lambda: x @ x + 1e-2}
    with pytest.raises(SystemExit, match="off disagrees with dense at 8x8"):
        checked_medians(wrong, reference="dense", rtol=1e-5, where="8x8", rounds=1, repeats=2)
