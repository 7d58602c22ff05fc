"""The speed plan per method: which base is stored in bf16, and which loss and packing prompt learning gets."""

import pytest

from peftkit.recipe import ModelSpec, TrainSpec
from peftkit.train.speed import plan_speed


@pytest.mark.parametrize("method, stored", [("lora", "bfloat16"), ("ia3", "bfloat16"), ("prefix", "bfloat16"),
                                            ("full", "float32"), ("qlora", "float32")])
def test_bf16_storage_only_for_a_frozen_unquantized_base(method, stored):
    plan = plan_speed(TrainSpec(precision="bf16"), "causal-lm", None, 128, device="cpu", method=method)
    assert plan.load_spec(ModelSpec(name="m"), method).dtype == stored


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_prompt_learning_uses_the_model_loss_and_padded_batches(method):
    spec = TrainSpec(packing="padding_free", precision="fp32")
    plan = plan_speed(spec, "causal-lm", None, 128, device="cpu", method=method)
    assert not plan.labelled_positions_loss and plan.packing == "off"
    lora = plan_speed(spec, "causal-lm", None, 128, device="cpu", method="lora")
    assert lora.labelled_positions_loss and lora.packing == "padding_free"
