"""Bottleneck adapters on the tiny Llama and BERT classifier: placement, identity at init, training,
save/load, merge refusal and errors.

Every case runs on fresh bases from `make_base` (adapters are injected in place).
"""

from __future__ import annotations

import json

import pytest
import torch

from peftkit.errors import MergeError, RecipeError, RunDirError
from peftkit.methods.bottleneck import (
    BottleneckConfig,
    BottleneckLayer,
    BottleneckModel,
    add_bottleneck_adapters,
    is_bottleneck_adapter,
)
from tests.methods.bottleneck.conftest import HIDDEN, LAYERS

TASK = {"llama": "causal-lm", "bert": "sequence-classification"}
HEAD = {"llama": None, "bert": "classifier"}
# which sublayer outputs get an adapter, as name suffixes
ATTENTION = {"llama": "self_attn.o_proj", "bert": "attention.output.dense"}
FEED_FORWARD = {"llama": "mlp.down_proj", "bert": "output.dense"}
CASES = [(k, p) for k in ("llama", "bert") for p in ("houlsby", "pfeiffer")]


def adapted(make_base, kind, placement, **kwargs):
    return add_bottleneck_adapters(make_base(kind), BottleneckConfig(placement=placement, task=TASK[kind], **kwargs))


def adapter_layers(model):
    return {n: m for n, m in model.model.named_modules() if isinstance(m, BottleneckLayer)}


def outputs(model, inputs):
    with torch.no_grad():
        return model(**{k: v for k, v in inputs.items() if k != "labels"}).logits


@pytest.mark.parametrize(("kind", "placement"), CASES)
def test_placement_count_and_shapes(make_base, kind, placement):
    model = adapted(make_base, kind, placement, reduction_factor=16)
    layers = adapter_layers(model)
    assert len(layers) == (2 if placement == "houlsby" else 1) * LAYERS
    attention = [n for n in layers if n.endswith(ATTENTION[kind])]
    assert len(attention) == (LAYERS if placement == "houlsby" else 0)
    feed_forward = [n for n in layers if n.endswith(FEED_FORWARD[kind]) and n not in attention]
    assert len(feed_forward) == LAYERS
    for layer in layers.values():
        down, up = layer.bottleneck_down["default"], layer.bottleneck_up["default"]
        assert tuple(down.weight.shape) == (HIDDEN // 16, HIDDEN)  # d -> d/r
        assert tuple(up.weight.shape) == (HIDDEN, HIDDEN // 16)  # d/r -> d
        assert torch.count_nonzero(up.weight) == 0 and torch.count_nonzero(up.bias) == 0
        assert isinstance(layer.base_layer, torch.nn.Linear)  # the base layer is wrapped, not replaced


@pytest.mark.parametrize(("kind", "placement"), CASES)
def test_starts_as_the_base_model_exactly(make_base, batch, kind, placement):
    inputs = batch(kind)
    reference = outputs(make_base(kind), inputs)
    model = adapted(make_base, kind, placement).eval()
    assert torch.equal(outputs(model, inputs), reference)


@pytest.mark.parametrize(("kind", "placement"), CASES)
def test_only_adapters_and_head_train(make_base, kind, placement):
    model = adapted(make_base, kind, placement)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    adapters = [n for n in trainable if ".bottleneck_down." in n or ".bottleneck_up." in n]
    head = [n for n in trainable if ".modules_to_save." in n]
    assert sorted(adapters + head) == sorted(trainable)
    assert len(head) == (2 if HEAD[kind] else 0) and all(f".{HEAD[kind]}." in n for n in head)
    size = HIDDEN // 16
    per_adapter = 2 * HIDDEN * size + size + HIDDEN  # down weight + bias, up weight + bias
    head_params = (HIDDEN * 3 + 3) if HEAD[kind] else 0
    expected = len(adapter_layers(model)) * per_adapter + head_params
    trainable_count, total = model.get_nb_trainable_parameters()
    assert trainable_count == expected
    assert total == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("kind", "placement"), [("llama", "houlsby"), ("bert", "pfeiffer")])
def test_training_changes_outputs_not_base_weights(make_base, batch, kind, placement):
    inputs = batch(kind)
    model = adapted(make_base, kind, placement)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = outputs(model, inputs)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    assert not torch.allclose(outputs(model, inputs), before)
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name
    assert all(torch.count_nonzero(l.bottleneck_up["default"].weight) > 0 for l in adapter_layers(model).values())


@pytest.mark.parametrize(("kind", "placement"), [("llama", "houlsby"), ("bert", "pfeiffer")])
def test_save_and_load_into_a_fresh_base(make_base, batch, tmp_path, kind, placement):
    from safetensors import safe_open

    inputs = batch(kind)
    model = adapted(make_base, kind, placement)
    with torch.no_grad():  # stand-in for training: non-zero adapters and head
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    expected = outputs(model.eval(), inputs)
    model.save_pretrained(tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "BOTTLENECK" and saved["peftkit_tuner"] == "bottleneck"
    assert saved["placement"] == placement and saved["reduction_factor"] == 16
    assert saved["base_model_name_or_path"] == model.config._name_or_path
    assert is_bottleneck_adapter(tmp_path)
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f:
        assert sum(f.get_tensor(k).numel() for k in keys) == trainable
    assert all(k.startswith("base_model.model.") for k in keys)
    assert all(".bottleneck_" in k or f"{HEAD[kind]}.modules_to_save." in k for k in keys)
    assert len(keys) == 4 * len(adapter_layers(model)) + (2 if HEAD[kind] else 0)

    fresh = make_base(kind, seed=123)  # a different seed: a different classifier head before loading
    loaded = BottleneckModel.from_pretrained(fresh, tmp_path)
    assert torch.equal(outputs(loaded, inputs), expected)
    assert loaded.get_nb_trainable_parameters()[0] == 0  # loaded for inference, like peft's default
    trainable_again = BottleneckModel.from_pretrained(make_base(kind), tmp_path, is_trainable=True)
    assert trainable_again.get_nb_trainable_parameters()[0] == trainable


def test_load_is_strict(make_base, tmp_path):
    from safetensors.torch import load_file, save_file

    adapted(make_base, "llama", "houlsby").save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    tensors["base_model.model.extra.bottleneck_up.weight"] = torch.zeros(1)
    save_file(tensors, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(RunDirError, match="missing keys") as info:
        BottleneckModel.from_pretrained(make_base("llama"), tmp_path)
    assert dropped in str(info.value) and "unexpected keys: base_model.model.extra.bottleneck_up.weight" in str(info.value)


def test_loading_a_different_placement_fails(make_base, tmp_path):
    adapted(make_base, "llama", "houlsby").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["placement"] = "pfeiffer"
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(RunDirError, match=r"unexpected keys: .*self_attn\.o_proj"):
        BottleneckModel.from_pretrained(make_base("llama"), tmp_path)


def test_peft_adapter_folder_is_not_bottleneck(make_base, tmp_path):
    from peft import LoraConfig, get_peft_model

    get_peft_model(make_base("llama"), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path)
    assert not is_bottleneck_adapter(tmp_path)
    assert not is_bottleneck_adapter(tmp_path / "missing")
    with pytest.raises(RunDirError, match="not a bottleneck adapter"):
        BottleneckModel.from_pretrained(make_base("llama"), tmp_path)


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_merge_refuses_with_the_reason(make_base, kind):
    model = adapted(make_base, kind, "houlsby")
    with pytest.raises(MergeError, match="non-linear"):
        model.merge_and_unload()
    with pytest.raises(MergeError, match="cannot be folded into the base model's linear weights"):
        model.merge_adapter()


def test_explicit_target_modules(make_base):
    model = adapted(make_base, "llama", "pfeiffer", target_modules=["q_proj", "v_proj"])
    names = sorted(adapter_layers(model))
    assert len(names) == 2 * LAYERS and all(n.endswith(("q_proj", "v_proj")) for n in names)
    assert adapter_layers(model)[names[0]].bottleneck_down["default"].in_features == HIDDEN


def test_unknown_target_modules_names_the_model_layers(make_base):
    with pytest.raises(RecipeError, match=r"method\.target_modules: nope match no linear layer.*down_proj.*o_proj"):
        adapted(make_base, "llama", "pfeiffer", target_modules=["nope"])


def test_placement_that_finds_nothing_names_the_model_layers():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    base = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(RecipeError, match=r"method\.placement: 'houlsby' found no known .*dense_4h_to_h"):
        add_bottleneck_adapters(base, BottleneckConfig(placement="houlsby"))
    # the same model works once the layers are named
    model = add_bottleneck_adapters(base, BottleneckConfig(target_modules=["dense_4h_to_h"]))
    assert len(adapter_layers(model)) == 1


def test_reduction_larger_than_width_names_the_field(make_base):
    with pytest.raises(RecipeError, match=r"method\.reduction_factor: 128 leaves no hidden unit .* width 64"):
        adapted(make_base, "llama", "pfeiffer", reduction_factor=128)


def test_missing_head_names_the_field(make_base):
    with pytest.raises(RecipeError, match=r"method\.modules_to_save: no classifier head"):
        add_bottleneck_adapters(make_base("llama"), BottleneckConfig(task="sequence-classification"))


def test_delegates_config_and_generate(make_base, batch):
    base = make_base("llama")
    reference = base.generate(batch("llama")["input_ids"][:1], max_new_tokens=4, do_sample=False)
    model = add_bottleneck_adapters(make_base("llama"), BottleneckConfig())
    assert model.config is model.get_base_model().config and model.config.model_type == "llama"
    generated = model.generate(batch("llama")["input_ids"][:1], max_new_tokens=4, do_sample=False)
    assert torch.equal(generated, reference)  # zero-initialised adapters: same greedy tokens as the base


def test_gradient_checkpointing_gives_the_same_gradients(make_base, batch):
    inputs = batch("llama")

    def adapter_grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = adapted(make_base, "llama", "houlsby", non_linearity="gelu")
        with torch.no_grad():  # non-zero up so that `down` gets gradients too
            for layer in adapter_layers(model).values():
                layer.bottleneck_up["default"].weight.normal_(0, 0.1)
        if checkpointing:
            model.gradient_checkpointing_enable()  # the base's method, reached through the wrapper
            assert any(getattr(m, "gradient_checkpointing", False) for m in model.model.modules())
        model.train()
        model(**inputs).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain, checkpointed = adapter_grads(False), adapter_grads(True)
    assert plain.keys() == checkpointed.keys() and len(plain) == 4 * 2 * LAYERS
    for name, grad in plain.items():
        assert torch.count_nonzero(grad) > 0, name
        assert torch.allclose(grad, checkpointed[name], atol=1e-6), name


def test_trains_with_transformers_trainer(make_base, tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = adapted(make_base, "bert", "houlsby")
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(5, 1000, (8,), generator=g).tolist(), "attention_mask": [1] * 8,
             "token_type_ids": [0] * 8, "label": i % 3, "text": "unused"} for i in range(8)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2,
                             report_to=[], use_cpu=True, save_strategy="no", gradient_checkpointing=True,
                             logging_steps=1, disable_tqdm=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows))
    result = trainer.train()
    assert result.global_step == 2 and torch.isfinite(torch.tensor(result.training_loss))
    changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert any(".bottleneck_up." in n for n in changed) and any(".modules_to_save." in n for n in changed)
    metrics = trainer.evaluate(Dataset.from_list(rows))
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))  # labels reached the model through `forward`
