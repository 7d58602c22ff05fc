"""Architectures from configuration only: exact parameter counts, catalog vs published totals."""

import pytest

from peftkit.errors import CatalogError
from peftkit.plan.architecture import load_architecture

# Published parameter totals of the catalog families (model cards / safetensors metadata).
PUBLISHED = {
    "llama-2-7b": 6_738_415_616,
    "llama-2-70b": 68_976_648_192,
    "llama-3.1-8b": 8_030_261_248,
    "llama-3.2-1b": 1_235_814_400,
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-7b": 7_615_616_512,
    "gemma-2-2b": 2_614_341_888,
    "mistral-7b": 7_248_023_552,
    "phi-3-mini": 3_821_079_552,
    "bert-base": 109_482_240 + 768 * 2 + 2,  # bert-base-uncased + a 2-class head
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_catalog_family_has_its_published_parameter_count(name):
    assert load_architecture(name).total_params == PUBLISHED[name]


def test_counts_equal_the_real_model(tiny_llama_dir, tiny_bert_dir):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    arch = load_architecture(str(tiny_llama_dir))
    real = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert arch.task == "causal-lm"
    assert arch.total_params == sum(p.numel() for p in real.parameters())
    assert arch.linear_shapes() == {n: (m.out_features, m.in_features) for n, m in real.named_modules()
                                    if type(m).__name__ == "Linear"}
    bert = load_architecture(str(tiny_bert_dir), num_labels=3)
    real_bert = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3)
    assert bert.task == "sequence-classification"
    assert bert.total_params == sum(p.numel() for p in real_bert.parameters())


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(CatalogError, match="unknown model 'llama-9'"):
        load_architecture("llama-9")
    with pytest.raises(CatalogError, match="no config.json"):
        load_architecture(str(tmp_path))
