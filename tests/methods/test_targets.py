"""Target presets per architecture, and the error that lists the model's linear layers."""

import pytest

from peftkit.errors import RecipeError
from peftkit.methods.targets import linear_module_names, resolve_targets
from peftkit.recipe import LoHaSpec, LoraSpec


@pytest.fixture(scope="module")
def models(tiny_llama_dir, tiny_bert_dir):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return {"llama": AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
            "bert": AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3)}


@pytest.mark.parametrize("model, preset, expected", [
    ("llama", "attention", ["q_proj", "v_proj"]),
    ("llama", "attention-all", ["q_proj", "k_proj", "v_proj", "o_proj"]),
    ("bert", "attention", ["query", "value"]),
    ("bert", "attention-all", ["query", "key", "value", "attention.output.dense"]),
    ("llama", "all-linear", "all-linear"),
])
def test_presets_resolve_per_architecture(models, model, preset, expected):
    assert resolve_targets(models[model], LoraSpec(target_modules=preset)) == expected


def test_bert_attention_all_wraps_only_the_attention_output_dense(models):
    from peft import get_peft_model

    from peftkit.methods.lora import lora_config

    config = lora_config(models["bert"], LoraSpec(r=2, target_modules="attention-all"), "sequence-classification")
    model = get_peft_model(models["bert"], config)
    wrapped = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    dense = sorted(n for n in wrapped if n.endswith("dense"))
    # the FFN's intermediate.dense / output.dense and the pooler stay untouched
    assert dense and all(n.endswith("attention.output.dense") for n in dense)
    assert len(wrapped) == 2 * 4  # 2 layers × (query, key, value, attention.output.dense)
    model.unload()


def test_dotted_suffix_names_are_accepted(models):
    assert resolve_targets(models["bert"], LoraSpec(target_modules=["attention.output.dense"])) == ["attention.output.dense"]


def test_target_matching_nothing_lists_linear_layers(models):
    with pytest.raises(RecipeError) as info:
        resolve_targets(models["llama"], LoHaSpec(target_modules=["query_proj", "v_proj"]))
    msg = str(info.value)
    assert msg.startswith("method.target_modules: query_proj match no linear layer")
    assert "v_proj" not in msg.split(";")[0]  # only the missing name is blamed
    for name in linear_module_names(models["llama"]):
        assert name in msg


def test_preset_without_known_projections_lists_linear_layers():
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.wq, self.wo = nn.Linear(4, 4), nn.Linear(4, 4)

    with pytest.raises(RecipeError, match=r"preset 'attention-all' finds no known attention projections.*wo, wq"):
        resolve_targets(Tiny(), LoraSpec(target_modules="attention-all"))
