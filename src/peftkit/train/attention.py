"""Attention for training encoders on CPU: the plain matrix-product form, with this project's dropout masks.

    use_math_attention(model)          # speed plan `attention: math` (auto for classification on CPU)
    trainer.train()                    # training forwards: q k^T, softmax, dropout, times v
    restore_attention(model)           # back to sdpa before the model is saved or handed on

BERT-style encoders drop 10% of their attention weights while training. PyTorch's SDPA has no CPU
kernel for attention with dropout: it falls back to its reference path, which upcasts q, k and v to
fp32 and draws the mask with `bernoulli_` (about 6 ns an element; a 16 x 12 x 128 x 128 mask per
layer). Without dropout its CPU flash kernel runs, but its backward is slow for the small heads of
such models. Measured on minilm-l6, LoRA r=8 all-linear, batches of 16 x 128, bf16 autocast, 2
threads (stop 19, /tmp profiling of one step after three warm-up steps): SDPA 0.74-0.79 s a step;
this form with the compiled dropout kernel 0.44-0.47 s; with every dropout off, SDPA's flash kernel
0.44-0.47 s and this form 0.34-0.38 s.

Here each training forward is q k^T (scaled), the mask added, softmax, dropout with
`train.dropout`'s SeededMask (a seed kept, not a mask), then times v, in the autocast dtype.
Backward keeps q, k, v and the mask's seed, no [T, T] tensor: it computes the weights again from q
and k and applies the mask to them again (at 16 x 128 on minilm-l6, fp32: 12 MiB a layer not kept,
for one more q k^T product and softmax per layer in backward). It is meant for short encoder inputs
(causal LMs keep SDPA).
Evaluation and inference (module not in training mode) go through transformers' SDPA unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from peftkit.methods import base_model
from peftkit.train.dropout import SeededMask, draw_seed

IMPLEMENTATION = "peftkit_math"  # the name under transformers' AttentionInterface


def _weights(query: torch.Tensor, key: torch.Tensor, bias: torch.Tensor | None, scaling: float) -> torch.Tensor:
    """softmax(q k^T * scaling + bias): the same ops in forward and in backward, so the same bits."""
    scores = torch.matmul(query * scaling, key.transpose(-1, -2))
    if bias is not None:
        scores = scores.masked_fill(~bias, float("-inf")) if bias.dtype == torch.bool else scores + bias
    return torch.softmax(scores, dim=-1)


class _MathAttentionFn(torch.autograd.Function):
    """softmax(q k^T * scaling + bias), dropped, times v; keeps q, k, v and the mask's seed, no [T, T] tensor.

    Backward computes the weights again from q and k (one q k^T product and one softmax per layer)
    and the dropped weights (what v's gradient needs) by applying the seed's mask to them: one pass
    of the compiled kernel, instead of keeping a [B, H, T, T] tensor per layer from forward to backward.
    """

    @staticmethod
    def forward(ctx, query, key, value, bias, p: float, scaling: float):
        weights = _weights(query, key, bias, scaling)
        mask = SeededMask(p, draw_seed()) if p > 0 else None
        ctx.save_for_backward(query, key, value, bias)
        ctx.mask, ctx.scaling = mask, scaling
        return torch.matmul(mask.apply(weights) if mask is not None else weights, value)

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, bias = ctx.saved_tensors
        mask, scaling = ctx.mask, ctx.scaling
        weights = _weights(query, key, bias, scaling)
        grad_out = grad_out.to(value.dtype)
        dropped = mask.apply(weights) if mask is not None else weights
        grad_value = torch.matmul(dropped.transpose(-1, -2), grad_out)
        del dropped
        grad_weights = torch.matmul(grad_out, value.transpose(-1, -2))
        if mask is not None:
            grad_weights = mask.apply(grad_weights)
        grad_scores = torch._softmax_backward_data(grad_weights, weights, -1, weights.dtype)
        del grad_weights, weights
        grad_query = torch.matmul(grad_scores, key) * scaling
        grad_key = torch.matmul(grad_scores.transpose(-1, -2), query) * scaling
        return grad_query, grad_key, grad_value, None, None, None


def math_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                           is_causal: bool | None = None, **kwargs):
    """transformers' attention-function signature: (output [B, T, H, D], None); SDPA outside training."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if not module.training:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    device = query.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
    query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    causal = getattr(module, "is_causal", False) if is_causal is None else is_causal
    q_len, kv_len = query.shape[-2], key.shape[-2]
    if attention_mask is None and causal and q_len > 1:
        attention_mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        attention_mask = attention_mask.to(dtype)
    with torch.autocast(device, enabled=False):  # every product in `dtype`, as autocast would run it
        out = _MathAttentionFn.apply(query, key, value, attention_mask, dropout, scaling)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register the implementation (and SDPA's mask builder for it) with transformers; returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, math_attention_forward)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)
    return IMPLEMENTATION


def use_math_attention(model: nn.Module) -> None:
    """Switch `model` (a transformers model, or a PeftModel around one) to this attention."""
    base_model(model).set_attn_implementation(register())


def restore_attention(model: nn.Module, implementation: str = "sdpa") -> None:
    """Put `model` back on a stock implementation if it is on this one (its config is saved as it is)."""
    base = base_model(model)
    if getattr(base.config, "_attn_implementation", None) == IMPLEMENTATION:
        base.set_attn_implementation(implementation)
