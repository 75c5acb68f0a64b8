from importlib import resources

import pytest

from sparseforge.recipe import RecipeError, dump_recipe, load_recipe, parse_recipe


def error_of(text: str) -> str:
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, "r.yaml")
    return str(info.value)


def test_defaults_fill_an_empty_recipe():
    r = parse_recipe("")
    assert r.model.name == "cnn" and r.data.name == "fashion_mnist" and r.modifiers == []


def test_wrong_value_names_path_and_line():
    msg = error_of("model:\n  name: cnn\ntrain:\n  epochs: 3\n  optimizer:\n    lr: -1\n")
    assert "r.yaml:6: train.optimizer.lr" in msg and "greater than 0" in msg


def test_unknown_keys_are_errors_at_every_level():
    assert "r.yaml:2: train.epoch" in error_of("train:\n  epoch: 3\n")
    assert "r.yaml:1: colour" in error_of("colour: red\n")
    msg = error_of("train: {epochs: 4}\nmodifiers:\n  - type: gmp\n    sparsity: 0.5\n    end_epoch: 2\n    sparsty: 0.1\n")
    assert "r.yaml:6: modifiers[0].sparsty: Extra inputs are not permitted" in msg


def test_modifier_errors_name_the_modifier_field_and_line():
    text = "train: {epochs: 4}\nmodifiers:\n  - type: gmp\n    end_epoch: 2\n    sparsity: 1.5\n  - type: magic\n"
    msg = error_of(text)
    assert "r.yaml:5: modifiers[0].sparsity" in msg
    assert "r.yaml:6: modifiers[1]" in msg and "'magic'" in msg


def test_cross_field_checks():
    assert "beyond train.epochs" in error_of(
        "train: {epochs: 2}\nmodifiers: [{type: gmp, sparsity: 0.5, end_epoch: 5}]\n"
    )
    assert "must come after start_epoch" in error_of(
        "train: {epochs: 9}\nmodifiers: [{type: gmp, sparsity: 0.5, start_epoch: 3, end_epoch: 2}]\n"
    )
    assert "contradicts the 2:4 scheme" in error_of(
        "modifiers: [{type: oneshot, scheme: '2:4', sparsity: 0.7}]\n"
    )
    assert "`sparsity` is required" in error_of("modifiers: [{type: oneshot}]\n")
    assert "use allocation: layerwise" in error_of(
        "modifiers: [{type: oneshot, scheme: '2:4', allocation: global}]\n"
    )
    assert "unknown criterion 'size'" in error_of(
        "modifiers: [{type: oneshot, sparsity: 0.5, criterion: size}]\n"
    )


def test_yaml_problems():
    assert "r.yaml:3: not valid YAML" in error_of("train:\n  epochs: 1\n    lr: 2\n")
    assert "r.yaml:3: key 'epochs' appears twice" in error_of("train:\n  epochs: 1\n  epochs: 2\n")
    assert "a recipe is a mapping" in error_of("- 1\n- 2\n")


def test_scheme_shorthands_and_round_trip():
    r = parse_recipe(
        "modifiers:\n  - {type: oneshot, scheme: '2:4'}\n"
        "  - {type: oneshot, scheme: {name: bcr, block: [4, 8]}, sparsity: 0.8, layers: 'fc*'}\n"
    )
    assert r.modifiers[0].scheme.n == 2 and r.modifiers[0].final_sparsity == 0.5
    assert r.modifiers[1].scheme.block == (4, 8) and r.modifiers[1].layers.include == ["fc*"]
    assert parse_recipe(dump_recipe(r)) == r


def test_load_from_file_and_missing_file(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("train: {epochs: 1}\n")
    assert load_recipe(p).train.epochs == 1
    assert load_recipe(str(p)).train.epochs == 1
    with pytest.raises(FileNotFoundError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "name", [f.name for f in resources.files("sparseforge.recipes").iterdir() if f.name.endswith(".yaml")]
)
def test_shipped_recipes_validate(name):
    text = resources.files("sparseforge.recipes").joinpath(name).read_text()
    assert parse_recipe(text, name).train.epochs >= 1


def test_quantize_section_validates_and_errors_name_field_and_line():
    r = parse_recipe("quantize:\n  mode: mixed\n  mixed:\n    bits: [4, 8]\n    solver: optuna\n")
    assert r.quantize.mixed.bits == [4, 8] and r.quantize.mixed.budget.weight_bytes == 0.75
    assert parse_recipe("quantize: {mode: mixed}\n").quantize.mixed.criterion == "loss"
    assert parse_recipe("").quantize is None
    assert "r.yaml:4: quantize.mixed.bits[1]" in error_of(
        "train: {epochs: 1}\nquantize:\n  mode: mixed\n  mixed: {bits: [4, 5]}\n")
    assert "r.yaml:5: quantize.mixed.trails: Extra inputs" in error_of(
        "quantize:\n  mode: mixed\n  mixed:\n    solver: dp\n    trails: 3\n")
    msg = error_of("quantize:\n  mode: mixed\n  mixed:\n    budget: {weight_bytes: 0.7, accuracy_drop: 1}\n")
    assert "r.yaml:4: quantize.mixed.budget" in msg and "exactly one of" in msg
    assert "needs `mode: mixed`" in error_of("quantize:\n  mixed: {criterion: hessian}\n")
    assert "r.yaml:2: quantize.calibration_batches" in error_of("quantize:\n  calibration_batches: 0\n")
