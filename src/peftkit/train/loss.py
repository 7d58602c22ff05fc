"""Causal-LM loss with logits only where a label is, computed in chunks.

    loss = labelled_positions_loss(model, batch, num_items_in_batch=None, chunk=128)

The stock path projects every position (prompt, padding and answer alike) through the LM head,
a [tokens, 49,152] fp32 tensor for SmolLM2, keeps it and its gradient, and only then masks the
loss to the answer. Here the backbone's hidden states are gathered at the positions whose next
token carries a label (the answer, ~30% of chatterbot's tokens) and the LM head + cross-entropy
run over them `chunk` positions at a time. Each chunk's gradient (softmax minus the target) is
taken in the forward pass while its logits exist, so at most one chunk of logits exists at once and
backward recomputes none (until stop 12 each chunk was checkpointed: three head matmuls a chunk,
now two). Chunk size on
train_bench's (c) recipe (smollm2-135m, batch 8, 2 threads, each run alone, stop 11): 512 vs 256
positions, 12 steps: peak RSS 2.70 vs 2.57 GiB at 2.37 vs 2.45 s/step; 256 vs 128, 40 steps with
the heap trimmed each step: 2.62 vs 2.54 GiB at 2.11 vs 2.07 s/step. 128 is the recipe default.

On CUDA with `liger-kernel` installed, Liger's fused linear cross-entropy does the same in one
kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from peftkit.methods import base_model

IGNORE_INDEX = -100
BACKBONE_INPUTS = ("input_ids", "attention_mask", "position_ids")


class _LinearCrossEntropyFn(torch.autograd.Function):
    """Sum of CE(hidden @ weight.T + bias, targets), its gradients computed in the forward pass chunk by chunk.

    The softmax of a chunk's logits is its gradient (less one at the target), so the input's gradient
    (and the head's, when it trains) is made while the logits exist and only [N, H] is kept: the
    backward pass multiplies by the incoming scalar instead of recomputing every chunk's logits.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk):
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        w = weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.promote_types(weight.dtype, torch.float32)) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.promote_types(bias.dtype, torch.float32)) if need_b else None
        acc = torch.promote_types(dtype, torch.float32)  # the softmax's dtype: fp32 at least
        total = torch.zeros((), dtype=acc, device=hidden.device)
        with torch.autocast(device, enabled=False):
            for start in range(0, hidden.shape[0], chunk):
                h, t = hidden[start:start + chunk].to(dtype), targets[start:start + chunk]
                logits = F.linear(h, w, b).to(acc)  # [n, V]
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
                if not (need_h or need_w or need_b):
                    continue
                grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place
                grad[torch.arange(t.shape[0], device=t.device), t] -= 1.0  # d(sum CE) / d logits
                grad = grad.to(dtype)
                if need_h:
                    grad_h[start:start + chunk] = grad @ w
                if need_w:
                    grad_w += grad.t() @ h
                if need_b:
                    grad_b += grad.sum(0)
        ctx.save_for_backward(*(g for g in (grad_h, grad_w, grad_b) if g is not None))
        ctx.has = (need_h, need_w, need_b)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        saved = iter(ctx.saved_tensors)
        grad_h, grad_w, grad_b = (next(saved) if has else None for has in ctx.has)
        if grad_h is not None:
            grad_h = grad_h * grad_out.to(grad_h.dtype)
        if grad_w is not None:
            grad_w = (grad_w * grad_out).to(ctx.dtypes[0])
        if grad_b is not None:
            grad_b = (grad_b * grad_out).to(ctx.dtypes[1])
        return grad_h, grad_w, grad_b, None, None


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, chunk: int = 128
) -> torch.Tensor:
    """Sum over positions of CE(hidden @ weight.T + bias, targets), never holding more than `chunk` rows of logits.

    Args:
        hidden: [N, H] hidden states at the positions that carry a label.
        weight: [V, H] LM-head weight (bias [V] or None).
        targets: [N] next-token ids.
    Returns:
        A scalar fp32 tensor (the sum, not the mean).
    """
    if hidden.is_cuda:
        liger = _liger_loss()
        if liger is not None:
            return liger(weight, hidden, targets, bias)
    if hidden.shape[0] == 0:
        return hidden.new_zeros((), dtype=torch.float32) + hidden.sum() * 0.0  # keeps the graph connected
    return _LinearCrossEntropyFn.apply(hidden, weight, bias, targets, chunk)


def _liger_loss():
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    return LigerFusedLinearCrossEntropyLoss(reduction="sum")


def supports_labelled_positions_loss(model) -> bool:
    """True when the model exposes a decoder and an output embedding (transformers causal LMs do)."""
    base = base_model(model)
    try:
        return base.get_decoder() is not None and base.get_output_embeddings() is not None
    except (AttributeError, NotImplementedError):
        return False


def labelled_positions_loss(
    model, inputs: dict[str, torch.Tensor], num_items_in_batch: int | torch.Tensor | None = None, chunk: int = 128
) -> torch.Tensor:
    """Next-token cross-entropy over the positions whose label is not -100, logits computed only there.

    Args:
        model: a transformers causal LM, or a PeftModel around one (LoRA layers live inside its modules).
        inputs: input_ids [B, T], labels [B, T], and attention_mask or position_ids (padding-free rows).
        num_items_in_batch: labelled tokens in the whole optimizer step (the Trainer passes it so that
            gradient accumulation averages over tokens, not micro-batches); default: this batch's count.
    Returns:
        The mean loss per labelled token (a scalar).
    """
    base = base_model(model)
    head = base.get_output_embeddings()
    backbone_inputs = {k: inputs[k] for k in BACKBONE_INPUTS if inputs.get(k) is not None}
    # use_cache=False: with a cache object the mask builder ignores packed position_ids and lets packed
    # sequences attend to each other.
    hidden = base.get_decoder()(**backbone_inputs, use_cache=False).last_hidden_state  # [B, T, H]
    targets = inputs["labels"][:, 1:]  # [B, T-1]: position t predicts token t+1
    mask = targets != IGNORE_INDEX
    total = chunked_cross_entropy(hidden[:, :-1][mask], head.weight, head.bias, targets[mask], chunk)
    count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    return total / count
