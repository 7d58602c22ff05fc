"""peftkit.loading: a 4-bit load keeps no view of the checkpoint's memory map (Linux /proc/self/maps)."""

from __future__ import annotations

import sys

import pytest


def _mapped_checkpoints() -> list[tuple[int, int]]:
    spans = []
    with open("/proc/self/maps", encoding="utf-8") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) >= 6 and fields[5].endswith(".safetensors"):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                spans.append((start, end))
    return spans


def _views_of_the_map(model) -> int:
    spans = _mapped_checkpoints()
    return sum(any(a <= t.untyped_storage().data_ptr() < b for a, b in spans)
               for t in [*model.parameters(), *model.buffers()])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_a_4bit_base_owns_its_unquantized_weights(tiny_llama_dir):
    import torch
    from transformers import BitsAndBytesConfig

    from peftkit.loading import load_base_model, load_causal_lm
    from peftkit.recipe import ModelSpec

    spec = ModelSpec(name=str(tiny_llama_dir), dtype="float32")
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    as_loaded = load_causal_lm(spec, quant)  # transformers' own load: the fp32 embedding views the file
    assert _views_of_the_map(as_loaded) > 0
    del as_loaded
    model = load_base_model(spec, "causal-lm", None, seed=0, quantization=quant)
    assert _views_of_the_map(model) == 0
    ids = torch.tensor([[1, 2, 3]])
    assert torch.isfinite(model(input_ids=ids).logits).all()
