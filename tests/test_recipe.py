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
    for key in ("batch_size: 8", "lr: auto", "epochs: auto", "class_weights: auto", "r: 16", "target_modules: all-linear", "runs_dir: runs", "max_length: 512"):
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


# --- method: one spec per kind (discriminated on `kind`) and train.optimizer --------------------------------

@pytest.mark.parametrize("method, field, value", [
    ({"kind": "lora", "rslora": True, "dora": True, "init": "olora", "target_modules": "attention-all"}, "init", "olora"),
    ({"kind": "qlora", "quant_type": "fp4", "double_quant": False, "compute_dtype": "bf16", "loftq": True}, "quant_type", "fp4"),
    ({"kind": "prefix", "num_virtual_tokens": 8, "projection": True}, "projection", True),
    ({"kind": "prompt", "init_text": "Extract the booking"}, "num_virtual_tokens", 20),
    ({"kind": "ia3"}, "target_modules", "attention-ffn"),
    ({"kind": "ia3", "target_modules": ["k_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
     "feedforward_modules", ["down_proj"]),
    ({"kind": "loha", "r": 4}, "alpha", 16.0),
    ({"kind": "lokr", "target_modules": ["q_proj"]}, "r", 8),
    ({"kind": "full"}, "kind", "full"),
])
def test_each_method_kind_parses_and_round_trips(method, field, value):
    recipe = load_recipe({**MINIMAL, "method": method})
    assert recipe.method.kind == method["kind"]
    assert getattr(recipe.method, field) == value
    assert load_recipe(__import__("yaml").safe_load(dump_recipe(recipe))) == recipe


def test_method_without_kind_is_lora():
    assert load_recipe({**MINIMAL, "method": {"r": 4}}).method.kind == "lora"


def test_unknown_method_kind_lists_the_kinds():
    with pytest.raises(RecipeError, match=r"method\.kind: unknown method 'adapterx'; expected one of lora, qlora, "
                                          r"prefix, prompt, ia3, loha, lokr, bottleneck, full"):
        load_recipe({**MINIMAL, "method": {"kind": "adapterx"}})


def test_field_of_another_kind_is_an_unknown_key_at_its_path():
    with pytest.raises(RecipeError, match=r"method\.r: unknown key"):
        load_recipe({**MINIMAL, "method": {"kind": "prompt", "r": 8}})
    with pytest.raises(RecipeError, match=r"method\.num_virtual_tokens: .*got 0"):
        load_recipe(MINIMAL, ["method={kind: prefix, num_virtual_tokens: 0}"])


@pytest.mark.parametrize("method, message", [
    ({"kind": "qlora", "init": "pissa"}, "init: pissa decomposes full-precision weights"),
    ({"kind": "ia3", "target_modules": ["k_proj"], "feedforward_modules": ["down_proj"]},
     r"feedforward_modules \['down_proj'\] are not in target_modules"),
    ({"kind": "prompt", "init_text": "  "}, "init_text is empty"),
    ({"kind": "loha", "target_modules": "mlp"}, "preset must be one of 'attention', 'attention-all', 'all-linear'"),
])
def test_method_validators_say_what_is_wrong(method, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe({**MINIMAL, "method": method})


def test_optimizer_choices():
    assert load_recipe(MINIMAL).train.optimizer == "adamw"
    assert load_recipe(MINIMAL, ["train.optimizer=paged_adamw_8bit"]).train.optimizer == "paged_adamw_8bit"
    with pytest.raises(RecipeError, match=r"train\.optimizer: "):
        load_recipe(MINIMAL, ["train.optimizer=sgd"])
