"""Method × model combinations peft cannot do are RecipeErrors that say why, raised before training."""

import pytest
import torch

from peftkit.errors import RecipeError
from peftkit.methods import MERGEABLE_KINDS, apply_method, artifact_name, describe_method
from peftkit.recipe import FullSpec, IA3Spec, PrefixSpec, PromptSpec, QLoraSpec


def test_prefix_on_a_model_whose_backbone_takes_no_cache():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    model = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=100, dim=32, hidden_dim=64, n_layers=1,
                                                                 n_heads=2, num_labels=2))
    with pytest.raises(RecipeError, match=r"prefix tuning passes its trained keys/values as past_key_values.*distilbert"):
        apply_method(model, PrefixSpec(num_virtual_tokens=2), "sequence-classification")
    assert not any(p.requires_grad is False for p in model.parameters())  # refused before peft froze anything


def test_qlora_needs_a_4bit_base(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with pytest.raises(RecipeError, match="qlora needs the base loaded in 4 bits"):
        apply_method(model, QLoraSpec(r=2), "causal-lm")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only refusal")
def test_loftq_on_cpu_says_peft_computes_it_on_cuda(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from peftkit.methods import base_quantization

    spec = QLoraSpec(r=2, loftq=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=base_quantization(spec),
                                                 device_map={"": "cpu"})
    with pytest.raises(RecipeError, match=r"method.loftq: peft computes the LoftQ initialisation on a CUDA"):
        apply_method(model, spec, "causal-lm")


def test_ia3_without_defaults_for_the_architecture_asks_for_targets():
    from torch import nn
    from transformers import PretrainedConfig, PreTrainedModel

    class Config(PretrainedConfig):
        model_type = "peftkit-unknown"

    class Unknown(PreTrainedModel):
        config_class = Config

        def __init__(self, config):
            super().__init__(config)
            self.proj = nn.Linear(4, 4)

    with pytest.raises(RecipeError, match="IA3 cannot pick defaults for peftkit-unknown.*give target_modules"):
        apply_method(Unknown(Config()), IA3Spec(), "causal-lm")


def test_kind_facts():
    assert artifact_name(FullSpec()) == "model" and artifact_name(PromptSpec()) == "adapter"
    assert {"prefix", "prompt", "full"}.isdisjoint(MERGEABLE_KINDS)
    assert describe_method(QLoraSpec(r=8, dora=True)) == "QLoRA r=8, alpha=32 (4-bit nf4, DoRA)"
    assert describe_method(PrefixSpec(num_virtual_tokens=5)) == "prefix tuning (5 virtual tokens)"
