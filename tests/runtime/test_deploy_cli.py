"""`sparseforge deploy` and `sparseforge bench` on a tiny compressed run folder."""

import json

import pytest
import torch
import yaml

from sparseforge.cli import main
from sparseforge.runtime import CANDIDATES


@pytest.fixture
def sparse_run(make_recipe, tmp_path):
    recipe = make_recipe(
        train={"epochs": 1},
        modifiers=[{"type": "oneshot", "sparsity": 0.9, "scheme": {"name": "block", "block": [16, 16]}}],
    )
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run = tmp_path / "sparse"
    assert main(["compress", str(path), "--out", str(run)]) == 0
    return run


def test_deploy_then_bench_write_their_files(sparse_run, capsys):
    assert main(["deploy", str(sparse_run), "--repeats", "2", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "features.conv1" in out and "classifier.fc1" in out
    plan = json.loads((sparse_run / "deploy" / "deploy.json").read_text())
    assert plan["machine"]["cpu_model"] and plan["example_input_shape"] == [2, 1, 28, 28]
    names = [r["name"] for r in plan["layers"]]
    assert names == [f"features.conv{i}" for i in range(1, 5)] + ["classifier.fc1", "classifier.fc2"]
    fc1 = plan["layers"][4]
    assert fc1["input_shape"] == [2, 784] and "dense" in fc1["candidates"]
    assert set(fc1["candidates"]) | set(fc1["skipped"]) == set(CANDIDATES.names())
    torch.load(sparse_run / "deploy" / "deployed.pt", weights_only=True)

    assert main(["bench", str(sparse_run), "--batch-sizes", "1", "4", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "batch 4: dense" in out and "classifier.fc2" in out
    bench = json.loads((sparse_run / "deploy" / "bench.json").read_text())
    assert set(bench["latency_ms"]) == {"dense", "deployed"}
    assert set(bench["latency_ms"]["deployed"]) == {"1", "4"} and set(bench["speedup"]) == {"1", "4"}
    assert bench["deployment"].startswith("reused") and bench["machine"]["torch_version"]
    assert len(bench["layers"]) == 6

    (sparse_run / "deploy" / "deploy.json").unlink()  # nothing saved: bench deploys first
    assert main(["bench", str(sparse_run), "--batch-sizes", "1", "--repeats", "2"]) == 0
    bench = json.loads((sparse_run / "deploy" / "bench.json").read_text())
    assert bench["deployment"].startswith("deployed now")
    assert (sparse_run / "deploy" / "deploy.json").is_file()


def test_verbs_have_help_and_report_errors(sparse_run, tmp_path, capsys):
    for verb in ("deploy", "bench"):
        with pytest.raises(SystemExit) as info:
            main([verb, "--help"])
        assert info.value.code == 0 and "--target" in capsys.readouterr().out
    assert main(["deploy", str(tmp_path / "nothing")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["deploy", str(sparse_run), "--batch", "0"]) == 2
    assert "--batch must be a positive integer" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["deploy", str(sparse_run), "--target", "cuda"]) == 1
        assert "deploy with --target cpu" in capsys.readouterr().err
