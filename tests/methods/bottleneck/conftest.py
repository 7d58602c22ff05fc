"""Fresh tiny bases for the bottleneck tests: the Llama causal LM and a 3-label BERT classifier.

`make_base(kind, seed)` loads a new copy each call (adapters are injected in place), seeded so that
two calls with the same seed give the same weights, including the classifier's fresh head.
"""

from __future__ import annotations

import pytest
import torch

HIDDEN = 64  # width of the tiny models in tests/conftest.py
LAYERS = 2


@pytest.fixture(scope="session")
def make_base(tiny_llama_dir, tiny_bert_dir):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    def make(kind: str, seed: int = 0):
        hf_logging.set_verbosity_error()
        torch.manual_seed(seed)
        if kind == "llama":
            model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3)
        return model.eval()

    return make


@pytest.fixture(scope="session")
def batch():
    """Inputs for either tiny model: ids inside both vocabularies, one padded row."""

    def make(kind: str) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(5, 1000, (2, 9), generator=g)
        mask = torch.ones_like(ids)
        mask[1, -3:] = 0
        out = {"input_ids": ids, "attention_mask": mask}
        out["labels"] = ids.clone() if kind == "llama" else torch.tensor([0, 2])
        return out

    return make
