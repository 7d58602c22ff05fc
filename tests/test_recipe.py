import pytest

from peftkit.errors import RecipeError
from peftkit.recipe import dump_recipe, load_recipe, shipped_recipes

MINIMAL = {"name": "t", "model": {"name": "smollm2-135m"}, "data": {"dataset": "shipping-emails"}}


def test_shipped_recipes_parse():
    names = shipped_recipes()
    assert {"quickstart", "bbc-news-lora", "chatterbot-sft"} <= set(names)
    for name in names:
        recipe = load_recipe(name)
        assert recipe.name == name


def test_unknown_key_names_its_path():
    with pytest.raises(RecipeError, match=r"train\.learning_rate: unknown key"):
        load_recipe({**MINIMAL, "train": {"learning_rate": 1e-4}})


def test_missing_section_is_named():
    with pytest.raises(RecipeError, match=r"model: required field is missing"):
        load_recipe({"name": "t", "data": {"dataset": "bbc-news"}})


def test_bad_value_names_path_and_input():
    with pytest.raises(RecipeError, match=r"method\.r: .*got -4"):
        load_recipe({**MINIMAL, "method": {"r": -4}})


def test_set_overrides_parse_values_as_yaml():
    recipe = load_recipe(MINIMAL, ["train.lr=1e-4", "method.target_modules=[q_proj, v_proj]", "output.mlflow=false"])
    assert recipe.train.lr == pytest.approx(1e-4)
    assert recipe.method.target_modules == ["q_proj", "v_proj"]
    assert recipe.output.mlflow is False


def test_set_with_unknown_key_fails():
    with pytest.raises(RecipeError, match=r"train\.lrr: unknown key"):
        load_recipe(MINIMAL, ["train.lrr=1"])


def test_set_without_equals_fails():
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        load_recipe(MINIMAL, ["train.lr"])


def test_unknown_target_preset_rejected():
    with pytest.raises(RecipeError, match="preset must be"):
        load_recipe({**MINIMAL, "method": {"target_modules": "mlp"}})


def test_dump_fills_every_default():
    text = dump_recipe(load_recipe(MINIMAL))
    for key in ("batch_size: 8", "lr: 0.0002", "r: 16", "target_modules: all-linear", "runs_dir: runs", "max_length: 512"):
        assert key in text
    assert load_recipe(__import__("yaml").safe_load(text)) == load_recipe(MINIMAL)


def test_missing_recipe_file_lists_shipped(tmp_path):
    with pytest.raises(RecipeError, match="no such recipe file.*quickstart"):
        load_recipe(tmp_path / "nope.yaml")


def test_recipe_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="a recipe is a mapping"):
        load_recipe(path)
