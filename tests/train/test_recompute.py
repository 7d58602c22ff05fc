"""GELU outputs recomputed in backward: the same loss and gradients, without keeping the outputs."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from peftkit.train.adapter_memory import fuse_lora_dropout_in_place
from peftkit.train.recompute import GeluRecompute, recompute_gelu_outputs_in_place


def _classifier(hidden_act: str = "gelu") -> torch.nn.Module:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                        num_attention_heads=4, num_labels=3, hidden_act=hidden_act)
    model = get_peft_model(BertForSequenceClassification(config),
                           LoraConfig(task_type="SEQ_CLS", r=4, lora_dropout=0.1, target_modules="all-linear"))
    with torch.no_grad():  # lora_B starts at zero: give it values so every LoRA gradient is non-trivial
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    fuse_lora_dropout_in_place(model)  # as peftkit trains: lora_A keeps its input (the gelu output)
    return model.train()


def _loss_and_grads(model):
    torch.manual_seed(1)
    ids = torch.randint(5, 100, (4, 11))
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    model.zero_grad()
    loss = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 2, 1, 1])).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_same_loss_and_gradients_with_the_outputs_recomputed():
    model = _classifier()
    full_loss, full_grads = _loss_and_grads(model)
    assert recompute_gelu_outputs_in_place(model) == 3
    registry = model._peftkit_gelu_recompute
    loss, grads = _loss_and_grads(model)
    assert registry.swapped == 3 and registry.recomputed == 3  # each layer's output.dense LoRA input
    assert torch.equal(loss, full_loss)
    assert grads.keys() == full_grads.keys()
    for name in full_grads:
        assert torch.equal(grads[name], full_grads[name]), name
    assert not registry.outputs and registry.context is None  # nothing held after the step


def test_eval_and_no_grad_forwards_are_untouched():
    model = _classifier()
    recompute_gelu_outputs_in_place(model)
    registry = model._peftkit_gelu_recompute
    model.eval()
    model(input_ids=torch.randint(5, 100, (2, 7)))
    model.train()
    with torch.no_grad():
        model(input_ids=torch.randint(5, 100, (2, 7)))
    assert registry.swapped == 0 and registry.context is None


def test_hooks_are_left_when_forward_raises():
    model = _classifier()
    recompute_gelu_outputs_in_place(model)
    try:
        model(input_ids=torch.randint(5, 100, (2, 7)), labels=torch.tensor([0]))  # 1 label for 2 rows
    except ValueError:
        pass
    assert model._peftkit_gelu_recompute.context is None
    _loss_and_grads(model)  # and the next step trains as usual


def test_only_torch_gelu_modules_and_only_once():
    assert recompute_gelu_outputs_in_place(_classifier("gelu_python")) == 0  # the Python variant: not one op
    assert recompute_gelu_outputs_in_place(_classifier("relu")) == 0
    model = _classifier()
    assert recompute_gelu_outputs_in_place(model) == 3
    assert recompute_gelu_outputs_in_place(model) == 0
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                         num_attention_heads=4))
    assert recompute_gelu_outputs_in_place(llama) == 0  # SiLU MLPs: train.gated_mlp's job


def test_a_tensor_at_a_freed_outputs_address_is_kept_as_it_is():
    registry = GeluRecompute()
    gelu = torch.nn.GELU().train()
    buffer, x = torch.randn(2, 8), torch.randn(8)
    registry.enter(gelu, ())
    try:
        output = buffer[0]  # a gelu output, and later another tensor at the same address, shape and version
        registry.record(gelu, (x,), output)
        assert isinstance(registry.pack(buffer[0]), tuple)  # the output itself (another view of it): swapped
        del output
        assert isinstance(registry.pack(buffer[0]), torch.Tensor)  # only its address is the output's: kept
    finally:
        registry.leave(gelu, (), None)
