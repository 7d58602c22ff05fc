"""Long-batch checkpointing: the budget from lengths, the switch flips per batch, gradients are unchanged,
a long checkpointed batch keeps less for backward, and `peftkit train` applies it by default."""

from __future__ import annotations

import torch

from peftkit.recipe import TrainSpec
from peftkit.train.checkpointing import LongBatchCheckpointing, long_batch_tokens
from peftkit.train.speed import plan_speed


def test_budget_is_batch_size_times_the_p90_length():
    lengths = list(range(1, 101))  # 1..100
    assert long_batch_tokens(lengths, batch_size=8) == 8 * 90
    assert long_batch_tokens([50] * 10, batch_size=4) == 200  # uniform lengths: no batch is above it
    assert long_batch_tokens([], batch_size=4) == 0


def test_plan_turns_it_on_only_for_padded_causal_batches_under_auto():
    assert plan_speed(TrainSpec(), "causal-lm").long_batch_checkpointing
    assert "for long batches only" in plan_speed(TrainSpec(), "causal-lm").summary()
    assert not plan_speed(TrainSpec(gradient_checkpointing="off"), "causal-lm").long_batch_checkpointing
    assert not plan_speed(TrainSpec(gradient_checkpointing="on"), "causal-lm").long_batch_checkpointing
    assert not plan_speed(TrainSpec(packing="padding_free"), "causal-lm").long_batch_checkpointing
    assert not plan_speed(TrainSpec(), "sequence-classification").long_batch_checkpointing
    assert not plan_speed(TrainSpec(), "causal-lm", method="prompt").long_batch_checkpointing


def _model(tiny_llama_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    model.train()
    return model


def _grads_and_saved(model, ids) -> tuple[dict, int]:
    total = [0]

    def pack(t):
        if not isinstance(t, torch.nn.Parameter):
            total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        # the decoder layers only: the tiny model's full logits would outweigh every activation
        loss = model.get_base_model().model(input_ids=ids, use_cache=False).last_hidden_state.pow(2).mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads, total[0]


def test_switch_checkpoints_long_batches_with_the_same_gradients(tiny_llama_dir):
    model = _model(tiny_llama_dir)
    short, long = torch.randint(0, 100, (2, 8)), torch.randint(0, 100, (4, 32))
    plain_grads, plain_saved = _grads_and_saved(model, long)

    switch = LongBatchCheckpointing.attach(model, max_tokens=64)
    assert switch is not None and switch.layers
    assert switch.set_for(short) is False
    assert not any(layer.gradient_checkpointing for layer in switch.layers)
    assert switch.set_for(long) is True
    ckpt_grads, ckpt_saved = _grads_and_saved(model, long)

    assert ckpt_saved < plain_saved / 2  # layer inputs only, not every activation
    assert plain_grads.keys() == ckpt_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(ckpt_grads[name], plain_grads[name], rtol=1e-4, atol=1e-6)
    assert (switch.batches, switch.checkpointed_batches) == (2, 1)


def test_train_checkpoints_the_long_batches(tiny_llama_dir, runs_dir):
    from peftkit.train import train

    result = train("chatterbot-sft", overrides=[
        f"model.name={tiny_llama_dir}", "data.size=60", "train.max_steps=6", "train.batch_size=4",
        "train.precision=fp32", f"output.runs_dir={runs_dir}", "output.run_id=r", "output.mlflow=false"])
    m = result.metrics
    assert m["speed"]["long_batch_checkpointing"] is True
    assert m["checkpoint_budget_tokens"] > 0
    # the sampler puts the longest batch first, and it is above the p90 budget
    assert 1 <= m["checkpointed_batches"] < 6
