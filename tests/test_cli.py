import json

import pytest
import yaml

from sparseforge.cli import build_parser, main


def write(tmp_path, recipe, name="r.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_every_verb_has_help(capsys):
    for verb in ("train", "compress", "eval", "report", "ticket", "demo"):
        with pytest.raises(SystemExit) as info:
            main([verb, "--help"])
        assert info.value.code == 0
        assert "usage: sparseforge " + verb in capsys.readouterr().out
    assert set(build_parser()._subparsers._group_actions[0].choices) >= {"train", "compress", "eval", "report", "demo"}


def test_train_compress_eval_report_on_a_tiny_dataset(make_recipe, tmp_path, capsys):
    dense = tmp_path / "dense"
    assert main(["train", write(tmp_path, make_recipe(train={"epochs": 1})), "--out", str(dense)]) == 0
    sparse_recipe = make_recipe(
        model={"checkpoint": str(dense)}, train={"epochs": 1},
        modifiers=[{"type": "oneshot", "sparsity": 0.6, "scheme": {"name": "block", "block": [2, 2]}}],
    )
    sparse = tmp_path / "sparse"
    assert main(["compress", write(tmp_path, sparse_recipe, "s.yaml"), "--out", str(sparse)]) == 0
    assert main(["eval", str(sparse)]) == 0
    out = capsys.readouterr().out
    evaluated = json.loads(out[out.index("{"):])
    assert evaluated["nonzeros"] < 0.5 * evaluated["params"]
    assert main(["report", str(dense), str(sparse), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "report.html").is_file()
    assert main(["report", str(sparse)]) == 0


def test_errors_are_reported_not_raised(make_recipe, tmp_path, capsys):
    assert main(["compress", write(tmp_path, make_recipe()), "--out", str(tmp_path / "x")]) == 2
    assert "has no modifiers" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: -1\n")
    assert main(["train", str(bad)]) == 2
    assert "bad.yaml:2: train.epochs" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    missing_data = make_recipe(data={"root": str(tmp_path / "void")})
    assert main(["train", write(tmp_path, missing_data, "m.yaml"), "--out", str(tmp_path / "m")]) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_demo_quick_runs_end_to_end(tiny_fmnist, tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--data-root", str(tiny_fmnist)]) == 0
    for run in ("dense", "gmp90"):
        assert (out / run / "summary.json").is_file()
    summary = json.loads((out / "gmp90" / "summary.json").read_text())
    assert summary["compressed"]["nonzeros"] < 0.2 * summary["compressed"]["params"]
    assert summary["dense"]["test_accuracy"] is not None
    assert (out / "report.html").is_file()
    # a second run reuses the finished runs (idempotent)
    assert main(["demo", "--quick", "--out", str(out), "--data-root", str(tiny_fmnist)]) == 0


def test_ticket_verb_runs_imp_and_prints_a_verdict(make_recipe, tmp_path, capsys):
    recipe = write(tmp_path, make_recipe(train={"epochs": 1}))
    out = tmp_path / "ticket"
    assert main(["ticket", recipe, "--out", str(out), "--rounds", "1", "--prune-rate", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "sparsity 0.5" in printed and "ticket" in printed
    assert json.loads((out / "ticket.json").read_text())["verdict"]
