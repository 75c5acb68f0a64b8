import json
from importlib import resources

import pytest
import yaml

from sparseforge.cli import main
from sparseforge.quant.mixed_run import quantize_config
from sparseforge.recipe import parse_recipe


def test_shipped_mixed_precision_recipe_is_a_mixed_dp_search_at_three_quarters_of_int8():
    text = resources.files("sparseforge.recipes").joinpath("fmnist_mixed_precision.yaml").read_text()
    q = parse_recipe(text, "fmnist_mixed_precision.yaml").quantize
    assert q.mode == "mixed" and q.mixed.solver == "dp" and q.mixed.budget.weight_bytes == 0.75


def test_flags_override_the_section(tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump({"quantize": {"mode": "mixed", "mixed": {"bits": [4, 8]}}}))
    config = quantize_config(tmp_path, path, accuracy_drop=0.5, trials=None)
    assert config.mixed.bits == [4, 8] and config.mixed.budget.accuracy_drop == 0.5
    assert quantize_config(tmp_path, None, criterion="hessian").mode == "mixed"
    assert quantize_config(tmp_path, path, mode="ptq").mixed is None
    with pytest.raises(ValueError, match="only apply to mode mixed"):
        quantize_config(tmp_path, None, mode="ptq", bits=[4, 8])
    (tmp_path / "plain.yaml").write_text("train: {epochs: 1}\n")
    with pytest.raises(ValueError, match="has no `quantize:` section"):
        quantize_config(tmp_path, tmp_path / "plain.yaml")


def test_quantize_verb_on_a_tiny_sparse_run(make_recipe, tmp_path, capsys):
    recipe = make_recipe(train={"epochs": 1}, modifiers=[{"type": "oneshot", "sparsity": 0.5}])
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(recipe))
    run = tmp_path / "sparse"
    assert main(["compress", str(tmp_path / "s.yaml"), "--out", str(run)]) == 0
    capsys.readouterr()

    out = tmp_path / "q_mixed"
    assert main(["quantize", str(run), "--out", str(out), "--bits", "4", "8",
                 "--weight-bytes", "0.8", "--calibration-batches", "1", "--no-latency"]) == 0
    summary = json.loads((out / "quantize.json").read_text())
    rows = summary["rows"]
    assert set(rows) == {"fp32", "int8", "int8 weights", "mixed", "sparse+int8"} and summary["sparse"]
    assert rows["mixed"]["weight_bytes"] <= 0.8 * rows["int8 weights"]["weight_bytes"]
    assert rows["sparse+int8"]["weight_bytes"] < 0.7 * rows["int8"]["weight_bytes"]
    assert all(0 <= r["accuracy"] <= 100 for r in rows.values())
    assert set(summary["mixed"]["assignment"].values()) <= {4, 8}
    assert (out / "pareto_size.png").stat().st_size > 0
    assert "| mixed |" in (out / "quantize.md").read_text() and "| mixed |" in capsys.readouterr().out

    out = tmp_path / "q_ptq"
    assert main(["quantize", str(run), "--out", str(out), "--mode", "ptq",
                 "--calibration-batches", "1", "--batch-sizes", "2", "--repeats", "1"]) == 0
    rows = json.loads((out / "quantize.json").read_text())["rows"]
    assert {"ptq", "sparse+int8"} <= set(rows) and "mixed" not in rows
    assert rows["int8"]["latency_ms"]["2"] > 0 and rows["fp32"]["latency_ms"]["2"] > 0
    assert abs(rows["int8"]["deployed_accuracy"] - rows["int8"]["accuracy"]) <= 10
    assert (out / "pareto_latency.png").is_file()

    assert main(["quantize", str(tmp_path / "void"), "--out", str(out)]) == 2
    assert "not a run folder" in capsys.readouterr().err
