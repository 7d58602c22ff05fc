"""Gated MLPs: silu_mul's values and gradients equal autograd's, it keeps less for backward, and
fuse_gated_mlps_in_place changes only Llama-family MLPs without changing the model's loss or gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.train.gated_mlp import fuse_gated_mlps_in_place, silu_mul


def _saved_bytes(fn) -> tuple[torch.Tensor, int]:
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def test_silu_mul_matches_autograd_and_keeps_two_tensors():
    torch.manual_seed(0)
    gate = torch.randn(7, 33, dtype=torch.float64, requires_grad=True)
    up = torch.randn(7, 33, dtype=torch.float64, requires_grad=True)
    ref, ref_saved = _saved_bytes(lambda: F.silu(gate) * up)
    out, saved = _saved_bytes(lambda: silu_mul(gate, up))
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (gate, up), grad)
    grads = torch.autograd.grad(out, (gate, up), grad)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)
    assert saved == 2 * gate.numel() * 8 < ref_saved
    assert torch.autograd.gradcheck(silu_mul, (gate[:2, :5].detach().requires_grad_(), up[:2, :5].detach().requires_grad_()))


def test_fused_mlps_give_the_same_loss_and_gradients(tiny_llama_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    def build():
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
        return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))

    ids = torch.randint(0, 100, (3, 16), generator=torch.Generator().manual_seed(1))
    results = []
    for fuse in (False, True):
        model = build()
        if fuse:
            assert fuse_gated_mlps_in_place(model) == model.config.num_hidden_layers
        loss, saved = _saved_bytes(lambda: model(input_ids=ids, labels=ids).loss)  # noqa: B023
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.detach(), saved, grads))
    (ref_loss, ref_saved, ref_grads), (loss, saved, grads) = results
    torch.testing.assert_close(loss, ref_loss)
    assert ref_grads.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-7)
    assert saved < ref_saved


def test_other_mlps_are_left_alone():
    class GeluMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj, self.up_proj, self.down_proj = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 4)
            self.act_fn = nn.GELU()

    model = nn.Sequential(GeluMLP())
    assert fuse_gated_mlps_in_place(model) == 0
    assert "forward" not in vars(model[0])
