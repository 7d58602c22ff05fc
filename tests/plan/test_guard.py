"""The pre-flight guard maps every method kind to the planner, with a note where it plans a stand-in."""

import pytest

from peftkit.plan.guard import planner_method, spec_from_recipe
from peftkit.plan.memory import plan_training
from peftkit.recipe import load_recipe

KINDS = [
    ({"kind": "lora", "r": 8}, "lora", 8, None),
    ({"kind": "lora", "dora": True}, "dora", 16, None),
    ({"kind": "lora", "rslora": True, "init": "pissa"}, "lora", 16, None),
    ({"kind": "qlora", "r": 4}, "qlora", 4, None),
    ({"kind": "prefix", "num_virtual_tokens": 7}, "prefix", 16, None),
    ({"kind": "prompt"}, "prompt", 16, None),
    ({"kind": "full"}, "full", 16, None),
    ({"kind": "ia3"}, "lora", 1, "ia3 is not modelled"),
    ({"kind": "loha", "r": 4}, "lora", 8, "loha is not modelled"),
    ({"kind": "lokr", "r": 4, "target_modules": "attention-all"}, "lora", 4, "lokr is not modelled"),
]


@pytest.mark.parametrize("method, planned, rank, note", KINDS)
def test_every_kind_plans(method, planned, rank, note, tiny_llama_dir):
    recipe = load_recipe("quickstart", [f"model.name={tiny_llama_dir}", f"method={method}".replace("'", ""),
                                        "train.optimizer=paged_adamw_8bit"])
    spec = spec_from_recipe(recipe, "cpu")
    assert (spec.method, spec.rank, spec.optimizer) == (planned, rank, "paged-adamw-8bit")
    got_note = planner_method(recipe.method)[1]
    assert (note is None) == (got_note is None) and (note is None or note in got_note)
    if method["kind"] == "prefix":
        assert spec.virtual_tokens == 7
    plan = plan_training(spec)
    assert plan.peak_bytes > 0
