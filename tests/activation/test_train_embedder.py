import copy

import pytest
import torch

from sparseforge.activation import SineStages, substitute_activations
from sparseforge.activation.train_embedder import CHECKPOINT, DistillConfig, distill_prosparse
from sparseforge.checkpoint import load_weights_only

SENTENCES = [f"sentence number {i} about {'abc'[i % 3]} things" for i in range(40)]


def encode(texts):
    ids = [[1 + (ord(c) % 38) for c in t[:12]] for t in texts]
    width = max(map(len, ids))
    input_ids = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    return {"input_ids": input_ids, "attention_mask": mask}


@pytest.fixture
def models(tiny_bert):
    """models(): (student with FATReLU, teacher), the same tiny BERT."""

    def make(seed: int = 0):
        teacher = tiny_bert(seed)
        student = copy.deepcopy(teacher)
        substitute_activations(student)
        return student, teacher

    return make


CONFIG = DistillConfig(
    steps=6,
    batch_size=8,
    lr=1e-3,
    checkpoint_every=2,
    log_every=2,
    schedule=SineStages(lambdas=[0.1, 1.0], starts=[0, 3], warmups=[2, 2]),
)


class Killed(Exception):
    pass


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, models):
    student, teacher = models()
    full = distill_prosparse(
        student, teacher, encode, SENTENCES, CONFIG, tmp_path / "a", log=lambda m: None
    )
    assert [r["step"] for r in full] == [2, 4, 6]

    killed, teacher2 = models()

    def kill(step):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        distill_prosparse(
            killed,
            teacher2,
            encode,
            SENTENCES,
            CONFIG,
            tmp_path / "b",
            on_step=kill,
            log=lambda m: None,
        )
    state = load_weights_only(tmp_path / "b" / CHECKPOINT)  # weights_only=True loads it
    assert state["step"] == 2
    assert not list((tmp_path / "b").glob(".*.tmp"))  # no torn temporary left behind

    resumed, teacher3 = models()
    logs = []
    history = distill_prosparse(
        resumed, teacher3, encode, SENTENCES, CONFIG, tmp_path / "b", log=logs.append
    )
    assert logs[0].startswith("resumed from") and "step 2" in logs[0]
    assert [r["step"] for r in history] == [2, 4, 6]
    for (name, a), b in zip(
        student.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6), name
    assert history[-1]["loss"] == pytest.approx(full[-1]["loss"], rel=1e-5)


def test_training_moves_student_towards_teacher_and_other_config_refuses_resume(tmp_path, models):
    student, teacher = models()
    config = CONFIG.model_copy(update={"steps": 30, "log_every": 10, "checkpoint_every": 30})
    history = distill_prosparse(
        student, teacher, encode, SENTENCES, config, tmp_path, log=lambda m: None
    )
    assert history[-1]["distill"] < history[0]["distill"]
    other = CONFIG.model_copy(update={"steps": 40})
    with pytest.raises(ValueError, match="another configuration"):
        distill_prosparse(student, teacher, encode, SENTENCES, other, tmp_path, log=lambda m: None)


def test_nan_stops_with_a_message_and_unsubstituted_student_is_refused(tmp_path, models):
    student, teacher = models()
    with torch.no_grad():
        teacher.encoder.layer[0].output.dense.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="lower lr"):
        distill_prosparse(student, teacher, encode, SENTENCES, CONFIG, tmp_path, log=lambda m: None)
    assert not (tmp_path / CHECKPOINT).exists()
    with pytest.raises(ValueError, match="substitute_activations"):
        distill_prosparse(copy.deepcopy(teacher), teacher, encode, SENTENCES, CONFIG, tmp_path)
