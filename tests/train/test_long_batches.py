"""Long batches: the budget from lengths, row slices with their padding trimmed, the sliced loss has the whole
batch's gradient, the checkpointing switch (a row above the budget) flips per batch with unchanged gradients,
and `peftkit train` cuts the long batches by default."""

from __future__ import annotations

import torch

from peftkit.recipe import TrainSpec
from peftkit.train.long_batches import LongBatchCheckpointing, labelled_tokens, long_batch_tokens, split_batch
from peftkit.train.speed import plan_speed


def test_budget_is_batch_size_times_the_p75_length():
    lengths = list(range(1, 101))  # 1..100
    assert long_batch_tokens(lengths, batch_size=8) == 8 * 75
    assert long_batch_tokens(lengths, batch_size=8, quantile=0.9) == 8 * 90
    assert long_batch_tokens([50] * 10, batch_size=4) == 200  # uniform lengths: no batch is above it
    assert long_batch_tokens([], batch_size=4) == 0


def test_split_batch_slices_rows_and_trims_their_padding():
    ids = torch.arange(5 * 6).reshape(5, 6)
    mask = torch.tensor([[1] * 6, [1] * 6, [1] * 4 + [0] * 2, [1] * 3 + [0] * 3, [1] * 2 + [0] * 4])
    labels = ids.masked_fill(mask == 0, -100)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "note": "kept"}
    pieces = split_batch(batch, max_tokens=13)  # 2 rows of 6 per slice
    assert [tuple(p["input_ids"].shape) for p in pieces] == [(2, 6), (2, 4), (1, 2)]
    assert all(p["note"] == "kept" for p in pieces)
    assert torch.equal(pieces[1]["labels"], labels[2:4, :4])
    assert sum(int(labelled_tokens(p["labels"])) for p in pieces) == int(labelled_tokens(labels))
    assert [tuple(p["input_ids"].shape) for p in split_batch(batch, max_tokens=3)] == [(1, 6), (1, 6), (1, 4), (1, 3), (1, 2)]
    assert len(split_batch(batch, max_tokens=100)) == 1


def test_sliced_loss_has_the_whole_batch_gradient(tiny_llama_dir):
    from peftkit.train.loss import labelled_positions_loss

    model = _model(tiny_llama_dir)
    torch.manual_seed(1)
    ids = torch.randint(0, 100, (5, 12))
    mask = torch.ones_like(ids)
    mask[3:, 9:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :4] = -100  # a prompt
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    labelled_positions_loss(model, batch).backward()
    whole = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    count, total = labelled_tokens(labels), 0.0
    for piece in split_batch(batch, max_tokens=24):
        loss = labelled_positions_loss(model, piece, count)
        loss.backward()
        total += float(loss.detach())
    for name, grad in whole.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6)
    model.zero_grad(set_to_none=True)
    assert abs(total - float(labelled_positions_loss(model, batch))) < 1e-4


def test_plan_turns_it_on_only_for_padded_causal_batches_under_auto():
    assert plan_speed(TrainSpec(), "causal-lm").split_long_batches
    assert "long batches cut into pieces" in plan_speed(TrainSpec(), "causal-lm").summary()
    assert not plan_speed(TrainSpec(gradient_checkpointing="off"), "causal-lm").split_long_batches
    assert not plan_speed(TrainSpec(gradient_checkpointing="on"), "causal-lm").split_long_batches
    assert not plan_speed(TrainSpec(packing="padding_free"), "causal-lm").split_long_batches
    assert not plan_speed(TrainSpec(), "sequence-classification").split_long_batches
    assert not plan_speed(TrainSpec(), "causal-lm", method="prompt").split_long_batches


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


def test_train_cuts_the_long_batches(tiny_llama_dir, runs_dir):
    from peftkit.train import train

    result = train("chatterbot-sft", overrides=[
        f"model.name={tiny_llama_dir}", "data.size=60", "train.max_steps=6", "train.batch_size=4",
        "train.precision=fp32", f"output.runs_dir={runs_dir}", "output.run_id=r", "output.mlflow=false"])
    m = result.metrics
    assert m["speed"]["split_long_batches"] is True
    assert m["long_batch_tokens"] > 0
    # the sampler puts the longest batch first, and it is above the p75 budget
    assert 1 <= m["split_batches"] < 6
    assert m["checkpointed_batches"] == 0  # no single row is above 4 x the p75 length
    assert all(h["loss"] > 0 for h in m["loss_history"])
