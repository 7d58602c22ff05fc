"""Labelled-positions loss: chunked CE equals plain CE; loss equals the full-logits loss; packed rows
do not see each other."""

import pytest
import torch
import torch.nn.functional as F

from peftkit.train.loss import chunked_cross_entropy, labelled_positions_loss


def test_chunked_cross_entropy_equals_plain_cross_entropy_and_its_gradient():
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight, bias = torch.randn(50, 16), torch.randn(50)
    targets = torch.randint(0, 50, (37,))
    chunked = chunked_cross_entropy(hidden, weight, bias, targets, chunk=8)  # 5 chunks, the last one short
    (g_chunked,) = torch.autograd.grad(chunked, hidden)
    plain = F.cross_entropy(hidden @ weight.T + bias, targets, reduction="sum")
    (g_plain,) = torch.autograd.grad(plain, hidden)
    torch.testing.assert_close(chunked, plain)
    torch.testing.assert_close(g_chunked, g_plain)


def test_chunked_cross_entropy_gives_a_training_heads_gradients_and_scales_by_the_incoming_one():
    torch.manual_seed(1)
    hidden = torch.randn(21, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(50, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (21,))
    chunked = chunked_cross_entropy(hidden, weight, bias, targets, chunk=8) * 0.37
    grads = torch.autograd.grad(chunked, (hidden, weight, bias))
    plain = F.cross_entropy(hidden @ weight.T + bias, targets, reduction="sum") * 0.37
    plain_grads = torch.autograd.grad(plain, (hidden, weight, bias))
    torch.testing.assert_close(chunked, plain)
    for got, want in zip(grads, plain_grads):
        torch.testing.assert_close(got, want)


def test_chunked_cross_entropy_under_bf16_autocast_is_close_to_fp32():
    torch.manual_seed(2)
    hidden = torch.randn(19, 32, requires_grad=True)
    weight = torch.randn(64, 32) * 0.1
    targets = torch.randint(0, 64, (19,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = chunked_cross_entropy(hidden, weight, None, targets, chunk=8)
    (grad,) = torch.autograd.grad(loss, hidden)
    plain = F.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    (plain_grad,) = torch.autograd.grad(plain, hidden)
    assert loss.dtype == torch.float32 and grad.dtype == hidden.dtype
    torch.testing.assert_close(loss, plain, rtol=2e-2, atol=0.0)
    torch.testing.assert_close(grad, plain_grad, rtol=5e-2, atol=5e-3)


def test_no_labelled_position_gives_a_differentiable_zero():
    hidden = torch.randn(0, 4, requires_grad=True)
    loss = chunked_cross_entropy(hidden, torch.randn(6, 4), None, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0


@pytest.fixture(scope="module")
def tiny_lm(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    return model.eval()


def _example(seed: int, length: int, prompt: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 1000, (length,), generator=g)
    labels = ids.clone()
    labels[:prompt] = -100
    return ids, labels


def test_loss_at_labelled_positions_equals_the_models_full_logits_loss(tiny_lm):
    (a, la), (b, lb) = _example(0, 12, 5), _example(1, 7, 3)
    ids = torch.full((2, 12), 0)
    labels = torch.full((2, 12), -100)
    mask = torch.zeros(2, 12, dtype=torch.long)
    ids[0], labels[0], mask[0] = a, la, 1
    ids[1, :7], labels[1, :7], mask[1, :7] = b, lb, 1
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    ours = labelled_positions_loss(tiny_lm, batch, chunk=4)
    full = tiny_lm(**batch).loss  # logits at every position, then masked
    torch.testing.assert_close(ours, full)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_sequences_do_not_see_each_other(tiny_lm, attention):
    tiny_lm.set_attn_implementation(attention)
    seqs = [_example(s, n, 2)[0] for s, n in ((2, 9), (3, 5), (4, 11))]
    ids = torch.cat(seqs)[None]
    position_ids = torch.cat([torch.arange(len(s)) for s in seqs])[None]
    with torch.no_grad():
        packed = tiny_lm(input_ids=ids, position_ids=position_ids, use_cache=False).logits[0]
        start = 0
        for s in seqs:
            alone = tiny_lm(input_ids=s[None]).logits[0]
            torch.testing.assert_close(packed[start:start + len(s)], alone, atol=1e-5, rtol=1e-4)
            start += len(s)
    tiny_lm.set_attn_implementation("sdpa")


def test_padding_free_loss_equals_padded_loss(tiny_lm):
    (a, la), (b, lb) = _example(5, 10, 4), _example(6, 6, 2)
    padded = {
        "input_ids": torch.stack([a, torch.cat([b, torch.zeros(4, dtype=torch.long)])]),
        "attention_mask": torch.tensor([[1] * 10, [1] * 6 + [0] * 4]),
        "labels": torch.stack([la, torch.cat([lb, torch.full((4,), -100)])]),
    }
    # trl's padding-free collator: one row, position ids restart per example, first label of each example -100
    lb_free = lb.clone()
    lb_free[0] = -100
    free = {
        "input_ids": torch.cat([a, b])[None],
        "position_ids": torch.cat([torch.arange(10), torch.arange(6)])[None],
        "labels": torch.cat([la, lb_free])[None],
    }
    with torch.no_grad():
        torch.testing.assert_close(labelled_positions_loss(tiny_lm, free), labelled_positions_loss(tiny_lm, padded))
