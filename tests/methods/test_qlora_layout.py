"""A QLoRA model keeps training after a validation round (bitsandbytes' CPU inference repacking is off)."""

import torch

from peftkit.methods import apply_method, base_quantization
from peftkit.recipe import QLoraSpec


def test_training_continues_after_an_eval_forward(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    spec = QLoraSpec(r=4, compute_dtype="fp32")
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(
        tiny_bert_dir, num_labels=3, quantization_config=base_quantization(spec, "sequence-classification", "fp32"))
    model = apply_method(base, spec, "sequence-classification")
    import bitsandbytes as bnb

    linear4 = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linear4 and all(not m.support_avx512bf16_for_cpu for m in linear4)
    assert any(m.bias is not None for m in linear4)  # BERT's biases: the case that broke
    inputs = {"input_ids": torch.randint(1000, 2000, (2, 12)), "labels": torch.tensor([0, 2])}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(2):
        model.train()
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        model.eval()
        with torch.no_grad():  # a validation round between the steps
            model(**inputs)
    assert torch.isfinite(loss)
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in linear4)
