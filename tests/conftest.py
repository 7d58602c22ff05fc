"""Shared fixtures: tiny random Llama and BERT models built from configs, with the real tokenizers.

The tiny models use the built-in models' tokenizers (so chat templates and vocabularies are real)
and widths that are multiples of 32. The SmolLM2 tokenizer comes from the converted built-in
model, cached under $PEFTKIT_HOME (converted once, ~30 s, on a fresh machine).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from peftkit.catalog.models import resolve_model

    source = resolve_model("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    from peftkit.catalog.models import resolve_model

    source = Path(resolve_model("minilm-l6"))
    config = BertConfig(vocab_size=30522, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=512)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(source / name, out / name)
    return out


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    return tmp_path / "runs"


@pytest.fixture(params=["kernel", "generator"])
def mask_source(request, monkeypatch) -> str:
    """Run a test with each source of dropout masks (train.dropout): the compiled hash kernel, the generator."""
    import peftkit.train.dropout as dropout

    if request.param == "kernel":
        ok, line = dropout.compile_mask_kernel()
        assert ok, line  # CI and this project's machines have a C++ compiler: the kernel must compile
    else:
        monkeypatch.setattr(dropout, "_kernel", None)
    return request.param
