"""Math attention for training: SDPA's values and gradients without dropout, the dropout mask's with it."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from peftkit.recipe import TrainSpec
from peftkit.train.attention import IMPLEMENTATION, math_attention_forward, restore_attention, use_math_attention
from peftkit.train.dropout import SeededMask, draw_seed
from peftkit.train.speed import AUTO_ATTENTION, plan_speed


def _tiny_classifier(dropout: float = 0.0) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_labels=3, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=dropout, attn_implementation="sdpa")
    return BertForSequenceClassification(config)


def _batch():
    torch.manual_seed(1)
    ids = torch.randint(5, 100, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # padding: the mask reaches the attention
    mask[2, 4:] = 0
    return ids, mask, torch.tensor([0, 2, 1])


def _loss_and_grads(model, ids, mask, labels):
    model.zero_grad()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_without_dropout_math_attention_trains_exactly_like_sdpa():
    model = _tiny_classifier().train()
    batch = _batch()
    loss_sdpa, grads_sdpa = _loss_and_grads(model, *batch)
    use_math_attention(model)
    assert model.config._attn_implementation == IMPLEMENTATION
    loss_math, grads_math = _loss_and_grads(model, *batch)
    torch.testing.assert_close(loss_math, loss_sdpa)
    assert grads_math.keys() == grads_sdpa.keys()
    for name in grads_sdpa:
        torch.testing.assert_close(grads_math[name], grads_sdpa[name], msg=name)


def test_outside_training_it_is_sdpa_itself():
    model = _tiny_classifier(dropout=0.3).eval()
    ids, mask, _ = _batch()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        use_math_attention(model)
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, expected)


def test_attention_dropout_drops_weights_with_the_seeded_mask(mask_source):
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 3, 5, 8, requires_grad=True) for _ in range(3))
    bias = torch.zeros(2, 1, 5, 5)
    bias[1, ..., 3:] = float("-inf")
    module = torch.nn.Module().train()
    torch.manual_seed(3)
    out, _ = math_attention_forward(module, q, k, v, bias, dropout=0.25, scaling=0.5)
    out.sum().backward()

    torch.manual_seed(3)
    mask = SeededMask(0.25, draw_seed())  # the seed the attention drew
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    weights = torch.softmax((q2 * 0.5) @ k2.transpose(-1, -2) + bias, dim=-1)
    expected = (weights * mask.keep(weights) / (1 - 0.25) @ v2).transpose(1, 2)
    expected.sum().backward()
    torch.testing.assert_close(out, expected)
    for got, want in ((q.grad, q2.grad), (k.grad, k2.grad), (v.grad, v2.grad)):
        torch.testing.assert_close(got, want)


def test_causal_modules_without_a_mask_attend_to_the_past_only():
    torch.manual_seed(4)
    q, k, v = (torch.randn(1, 2, 6, 4) for _ in range(3))
    module = torch.nn.Module().train()
    module.is_causal = True
    out, _ = math_attention_forward(module, q, k, v, None)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
    torch.testing.assert_close(out, expected)


def test_restore_puts_the_model_back_on_sdpa_and_leaves_others_alone():
    model = _tiny_classifier()
    use_math_attention(model)
    restore_attention(model)
    assert model.config._attn_implementation == "sdpa"
    model.set_attn_implementation("eager")
    restore_attention(model)
    assert model.config._attn_implementation == "eager"


@pytest.mark.parametrize("task, expected", [("sequence-classification", "math"), ("causal-lm", "sdpa")])
def test_auto_attention_is_math_for_encoders_on_cpu(task, expected):
    assert plan_speed(TrainSpec(), task, device="cpu").attention == expected
    assert plan_speed(TrainSpec(attention="sdpa"), task, device="cpu").attention == "sdpa"
    assert AUTO_ATTENTION[("cuda", task)] == "sdpa"  # CUDA's SDPA has dropout kernels; not measured there


def test_backward_keeps_no_attention_weights():
    torch.manual_seed(5)
    q, k, v = (torch.randn(2, 3, 7, 8, requires_grad=True) for _ in range(3))
    bias = torch.ones(2, 1, 7, 7, dtype=torch.bool)
    bias[0, ..., 5:] = False
    kept = []
    module = torch.nn.Module().train()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(tuple(t.shape)) or t, lambda t: t):
        out, _ = math_attention_forward(module, q, k, v, bias, dropout=0.2, scaling=0.3)
    assert (2, 3, 7, 7) not in kept  # no [B, H, T, T] tensor from forward to backward
    assert (2, 3, 7, 8) in kept
    out.sum().backward()  # gradients from the weights computed again (their values: the test above)
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
