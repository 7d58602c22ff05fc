import pytest

from peftkit.errors import RecipeError
from peftkit.methods.lora import linear_module_names, parameter_counts, resolve_targets, wrap_with_lora
from peftkit.recipe import LoraSpec


@pytest.fixture
def tiny_llama(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir)


def test_presets_resolve_per_architecture(tiny_llama, tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    assert resolve_targets(tiny_llama, LoraSpec(target_modules="attention")) == ["q_proj", "v_proj"]
    bert = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3)
    assert resolve_targets(bert, LoraSpec(target_modules="attention")) == ["query", "value"]
    assert resolve_targets(bert, LoraSpec(target_modules="all-linear")) == "all-linear"


def test_target_matching_nothing_lists_linear_layers(tiny_llama):
    with pytest.raises(RecipeError) as info:
        resolve_targets(tiny_llama, LoraSpec(target_modules=["query_proj"]))
    msg = str(info.value)
    assert "query_proj match no linear layer" in msg
    assert "q_proj" in msg and "down_proj" in msg
    assert "lm_head" in linear_module_names(tiny_llama)


def test_lora_parameter_count_is_r_times_d_plus_k(tiny_llama):
    # q_proj: 64 -> 64 (2 heads x 32), v_proj: 64 -> 32 (1 kv head x 32); two layers; A is r x k, B is d x r.
    model = wrap_with_lora(tiny_llama, LoraSpec(r=4, target_modules=["q_proj", "v_proj"]), task="causal-lm")
    counts = parameter_counts(model)
    assert counts["trainable_params"] == 2 * (4 * (64 + 64) + 4 * (64 + 32))
    assert 0 < counts["trainable_percent"] < 5


def test_only_lora_parameters_train(tiny_llama):
    model = wrap_with_lora(tiny_llama, LoraSpec(r=2), task="causal-lm")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("lm_head" in n for n in trainable)
