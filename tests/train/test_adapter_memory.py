"""Fused LoRA dropout and uncast adapter inputs: same values and gradients, less kept for backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from peftkit.train.adapter_memory import (
    DropoutLinear,
    _DropoutLinearFn,
    adapter_inputs_uncast,
    fuse_lora_dropout_in_place,
)
from peftkit.train.dropout import SeededMask, drop_rate, keep_mask, keep_scale


def test_fused_dropout_linear_matches_dropout_then_linear_for_the_same_mask(mask_source):
    torch.manual_seed(1)
    x = torch.randn(3, 5, 12, requires_grad=True)
    w = torch.randn(4, 12, requires_grad=True)
    torch.manual_seed(7)
    y = _DropoutLinearFn.apply(x, w, 0.3)
    y.pow(2).sum().backward()

    torch.manual_seed(7)  # the seed the function drew
    mask = SeededMask(0.3, int(torch.randint(0, 2**62, (1,)).item())).keep(x.detach())
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y2 = F.linear(x2 * mask * keep_scale(0.3), w2)
    y2.pow(2).sum().backward()

    assert mask.dtype == torch.bool
    assert 0 < (~mask).float().mean() < 0.6  # some entries dropped, most kept
    torch.testing.assert_close(y, y2)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(w.grad, w2.grad)


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_keep_mask_drops_at_rate_p_independently_and_repeats_from_its_seed(p):
    x = torch.empty(1000, 1000, dtype=torch.bfloat16)
    mask = keep_mask(x, p, seed=3)
    assert mask.shape == x.shape
    dropped = (~mask).double()
    # 1e6 Bernoulli(p) draws: the rate is within 5 standard deviations of p
    assert abs(dropped.mean().item() - p) < 5 * (p * (1 - p) / 1e6) ** 0.5
    # neighbours (the 16-bit values of one 64-bit word) and rows are uncorrelated
    flat = dropped.flatten()
    for lag in (1, 2, 3, 4, 1000):
        corr = torch.corrcoef(torch.stack([flat[:-lag], flat[lag:]]))[0, 1].item()
        assert abs(corr) < 0.01, (lag, corr)
    assert torch.equal(mask, keep_mask(x, p, seed=3))
    assert not torch.equal(mask, keep_mask(x, p, seed=4))
    # odd sizes (not a multiple of four 16-bit values) work too
    assert keep_mask(torch.empty(3, 7), p, seed=1).shape == (3, 7)


def test_drop_rate_is_p_to_one_part_in_65536():
    assert drop_rate(0.05) == round(0.05 * 65536) / 65536
    assert abs(drop_rate(0.05) - 0.05) < 1 / 65536
    assert keep_scale(0.5) == 2.0


def test_dropout_linear_keeps_the_parameter_and_is_plain_linear_in_eval():
    linear = torch.nn.Linear(8, 2, bias=False)
    fused = DropoutLinear(linear, 0.5)
    assert fused.weight is linear.weight
    fused.eval()
    x = torch.randn(4, 8)
    torch.testing.assert_close(fused(x), linear(x))
    fused.train()
    assert not torch.equal(fused(x), linear(x))  # half the inputs dropped


def _lora(tiny_llama_dir, dropout: float, dora: bool = False):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear", use_dora=dora,
                        init_lora_weights=False)  # B != 0: the adapter changes the output
    return get_peft_model(model, config)


def _saved_bytes(model, ids) -> tuple[int, torch.Tensor]:
    seen, total = set(), [0]

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in seen and not isinstance(t, torch.nn.Parameter):
            seen.add(key)
            total[0] += t.untyped_storage().nbytes()
        return t

    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        hidden = model.get_base_model().model(input_ids=ids).last_hidden_state  # decoder layers, no LM head
    return total[0], hidden


def test_fusing_and_uncast_keep_less_and_train_the_same_parameters(tiny_llama_dir):
    model = _lora(tiny_llama_dir, dropout=0.1)
    keys = set(model.state_dict())
    ids = torch.randint(0, 1000, (2, 32))
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(input_ids=ids).logits
    model.train()
    stock, _ = _saved_bytes(model, ids)

    n = fuse_lora_dropout_in_place(model)
    assert n == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
    assert set(model.state_dict()) == keys  # saving and loading see no change
    with adapter_inputs_uncast(model):
        slim, hidden = _saved_bytes(model, ids)
        hidden.float().pow(2).mean().backward()
        model.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            after = model(input_ids=ids).logits
    assert slim < 0.75 * stock, (slim, stock)
    torch.testing.assert_close(after, before)  # eval: dropout off, the same model
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and g.dtype == torch.float32 and g.abs().sum() > 0 for g in grads.values())
    assert all(layer.cast_input_dtype_enabled for layer in model.modules() if hasattr(layer, "cast_input_dtype_enabled"))


@pytest.mark.parametrize("dropout,dora", [(0.0, False), (0.1, True)])
def test_layers_without_dropout_or_with_a_variant_are_left_alone(tiny_llama_dir, dropout, dora):
    model = _lora(tiny_llama_dir, dropout=dropout, dora=dora)
    assert fuse_lora_dropout_in_place(model) == 0
    assert not any(isinstance(m, DropoutLinear) for m in model.modules())


def test_uncast_skips_tuners_without_the_switch_and_restores_it(tiny_llama_dir):
    from peft import IA3Config, LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    ia3 = get_peft_model(model, IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]))
    with adapter_inputs_uncast(ia3):  # peft's IA3 layers have no cast_input_dtype_enabled: nothing to do, no error
        pass
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), LoraConfig(r=2, target_modules="all-linear"))
    switches = [m for m in lora.modules() if hasattr(m, "cast_input_dtype_enabled")]
    with adapter_inputs_uncast(lora):
        assert switches and not any(m.cast_input_dtype_enabled for m in switches)
    assert all(m.cast_input_dtype_enabled for m in switches)
    with adapter_inputs_uncast(lora, active=False):
        assert all(m.cast_input_dtype_enabled for m in switches)
