"""train.optimizer: transformers' optimizer names, and what bitsandbytes does with paged optimizers on CPU."""

import warnings

import pytest
import torch

from peftkit.recipe import TrainSpec
from peftkit.train.common import OPTIMIZERS, optimizer_note, trainer_kwargs


@pytest.mark.parametrize("choice", sorted(OPTIMIZERS))
def test_each_choice_builds_and_steps_through_transformers(choice, tmp_path):
    from transformers import Trainer, TrainingArguments

    model = torch.nn.Linear(128, 64)  # 8192 weights: above bitsandbytes' 4096 minimum for 8-bit states
    args = TrainingArguments(**{**trainer_kwargs(TrainSpec(optimizer=choice, lr=1e-3, epochs=1), tmp_path, has_val=False), "use_cpu": True})
    assert args.optim.value == OPTIMIZERS[choice]
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    optimizer = optimizer_cls(model.parameters(), **kwargs)
    model.weight.grad = torch.ones_like(model.weight)
    model.bias.grad = torch.ones_like(model.bias)
    before = model.weight.detach().clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizer.step()
    assert not torch.equal(model.weight, before)
    paged_warning = any("Paged optimizers are not supported on CPU" in str(w.message) for w in caught)
    assert paged_warning == choice.startswith("paged")  # bitsandbytes itself falls back on CPU
    state = optimizer.state[model.weight]
    assert (state["state1"].dtype == torch.uint8) if "8bit" in choice else True


def test_note_only_for_paged_on_cpu():
    assert "runs non-paged" in optimizer_note("paged_adamw", "cpu")
    assert optimizer_note("paged_adamw", "cuda") is None
    assert optimizer_note("adamw_8bit", "cpu") is None
