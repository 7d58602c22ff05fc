"""The mixed-adapter LoRA step against peft run one adapter at a time, on a tiny random Llama."""

from __future__ import annotations

import zlib

import pytest
import torch

from peftkit.serve.lora_batch import LoraBatch

# name -> (rank, alpha, rsLoRA, targets): ranks differ, one adapter uses rsLoRA, one targets fewer layers
ADAPTERS = {"one": (4, 8, False, "all-linear"), "two": (8, 16, True, "all-linear"),
            "three": (2, 4, False, ["q_proj", "v_proj"]), "four": (6, 6, False, "all-linear")}


_LOADED: dict = {}


def _base(tiny_llama_dir):
    """A fresh copy of the tiny base (loaded from disk once)."""
    import copy

    from transformers import AutoModelForCausalLM

    if tiny_llama_dir not in _LOADED:
        _LOADED[tiny_llama_dir] = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    return copy.deepcopy(_LOADED[tiny_llama_dir])


def _add(model, name: str):
    """Add adapter `name` with seeded, non-zero A and B (a fresh LoRA has B = 0, which would prove nothing)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    r, alpha, rs, targets = ADAPTERS[name]
    config = LoraConfig(r=r, lora_alpha=alpha, use_rslora=rs, target_modules=targets, lora_dropout=0.1)
    if isinstance(model, PeftModel):
        model.add_adapter(name, config)
    else:
        model = get_peft_model(model, config, adapter_name=name)
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    with torch.no_grad():
        for key, p in model.named_parameters():
            if f".{name}." in key and "lora_" in key:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return model.eval()


def _model(tiny_llama_dir, names):
    model = _base(tiny_llama_dir)
    for name in names:
        model = _add(model, name)
    return model


def _alone(tiny_llama_dir, name, ids):
    """Reference logits: peft's own forward with only `name` (or the bare base for None)."""
    model = _base(tiny_llama_dir) if name is None else _add(_base(tiny_llama_dir), name)
    with torch.no_grad():
        return model(input_ids=ids).logits


def _mixed(lora: LoraBatch, model, rows, ids):
    with torch.no_grad(), lora.step(lora.index(rows, ids.shape[1])):
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def prompts():
    return torch.randint(3, 400, (5, 7), generator=torch.Generator().manual_seed(0))  # [rows, tokens]


@pytest.mark.parametrize("tokens", [1, 7], ids=["decode-gather", "prefill-segments"])
def test_mixed_batch_logits_equal_each_adapter_alone(tiny_llama_dir, prompts, tokens):
    rows = ["one", None, "two", "three", "one"]
    ids = prompts[:, :tokens]
    model = _model(tiny_llama_dir, ["one", "two", "three"])
    lora = LoraBatch()
    assert LoraBatch.supported(model)
    lora.sync(model, version=1)
    mixed = _mixed(lora, model, rows, ids)
    for row, name in enumerate(rows):
        alone = _alone(tiny_llama_dir, name, ids[row : row + 1])
        torch.testing.assert_close(mixed[row : row + 1], alone, atol=1e-5, rtol=1e-5)
    base = _alone(tiny_llama_dir, None, ids[:1])
    assert (mixed[0:1] - base).abs().max() > 1e-3  # the adapters really change the logits


def test_greedy_answers_in_one_mixed_batch_equal_each_adapter_alone(tiny_llama_dir, prompts):
    from transformers import DynamicCache

    rows = ["two", "three", None, "one"]
    model = _model(tiny_llama_dir, ["one", "two", "three"])
    lora = LoraBatch()
    lora.sync(model, version=1)

    def greedy(forward, ids, steps=8):
        cache, out = DynamicCache(), []
        with torch.no_grad():
            logits = forward(ids, cache)
            for _ in range(steps):
                token = logits[:, -1].argmax(-1, keepdim=True)  # [rows, 1]
                out.append(token)
                logits = forward(token, cache)
        return torch.cat(out, dim=1).tolist()

    ids = prompts[: len(rows)]
    together = greedy(lambda x, c: _mixed_cached(lora, model, rows, x, c), ids)
    for row, name in enumerate(rows):
        alone_model = _base(tiny_llama_dir) if name is None else _add(_base(tiny_llama_dir), name)
        alone = greedy(lambda x, c: alone_model(input_ids=x, past_key_values=c, use_cache=True).logits, ids[row : row + 1])
        assert together[row] == alone[0], name
    assert len({tuple(t) for t in together}) > 1


def _mixed_cached(lora, model, rows, ids, cache):
    with lora.step(lora.index(rows, ids.shape[1])):
        return model(input_ids=ids, past_key_values=cache, use_cache=True).logits


def test_peft_weights_become_views_of_the_stacks(tiny_llama_dir):
    """A resident adapter's weights live once in memory: peft's parameters share the stacks' storage."""
    model = _model(tiny_llama_dir, ["one", "two"])
    lora = LoraBatch()
    lora.sync(model, version=1)
    layer, stack = lora.layers[0], lora.stacks[0]
    assert lora.rank == 8 and lora.slots == 2
    for name in ("one", "two"):
        weight = layer.lora_A[name].weight
        assert weight.untyped_storage().data_ptr() == stack.a.untyped_storage().data_ptr()
        assert torch.equal(stack.a[lora.slot_of[name], : weight.shape[0]], weight)
    assert float(stack.scale[lora.slot_of["two"]]) == pytest.approx(16 / 8 ** 0.5)  # rsLoRA: alpha / sqrt(r)


def test_loading_and_unloading_between_steps_update_the_stacks(tiny_llama_dir, prompts):
    ids = prompts[:3, :5]
    model = _model(tiny_llama_dir, ["one", "two"])
    lora = LoraBatch()
    lora.sync(model, version=1, capacity=3)
    before = _mixed(lora, model, ["one", "two", None], ids)
    stacks = [s.a for s in lora.stacks]

    model = _add(model, "three")  # a free slot, rank below the largest: written in place
    lora.sync(model, version=2, capacity=3)
    assert all(a is s.a for a, s in zip(stacks, lora.stacks))
    after = _mixed(lora, model, ["one", "two", "three"], ids)
    torch.testing.assert_close(after[:2], before[:2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after[2:], _alone(tiny_llama_dir, "three", ids[2:]), atol=1e-5, rtol=1e-5)

    model.delete_adapter("two")
    model.set_adapter("one")
    lora.sync(model, version=3, capacity=3)
    assert set(lora.slot_of) == {"one", "three"}
    model = _add(model, "four")  # takes the freed slot
    lora.sync(model, version=4, capacity=3)
    assert sorted(lora.slot_of.values()) == [0, 1, 2]
    got = _mixed(lora, model, ["four", "one", "three"], ids)
    for row, name in enumerate(["four", "one", "three"]):
        torch.testing.assert_close(got[row : row + 1], _alone(tiny_llama_dir, name, ids[row : row + 1]),
                                   atol=1e-5, rtol=1e-5)


def test_dora_keeps_peft_s_own_path(tiny_llama_dir):
    from peft import LoraConfig, get_peft_model

    dora = get_peft_model(_base(tiny_llama_dir), LoraConfig(r=4, use_dora=True, target_modules="all-linear"))
    assert not LoraBatch.supported(dora)
    assert LoraBatch.supported(_model(tiny_llama_dir, ["one"]))
