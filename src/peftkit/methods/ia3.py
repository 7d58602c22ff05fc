"""IA3 through peft: learned per-feature scaling vectors on chosen activations (mergeable).

    model = wrap(base, IA3Spec(), task="causal-lm")     # attention-ffn: peft's default per architecture

`target_modules: attention-ffn` leaves the choice to peft's table (Llama: k_proj, v_proj and
down_proj, scaling down_proj's input; BERT: key, value and output.dense). Any other preset or list
is resolved like LoRA's (`peftkit.methods.targets`); `feedforward_modules` then names the targets
whose input rather than output is scaled (default: none).
"""

from __future__ import annotations

from torch import nn

from peftkit.errors import RecipeError
from peftkit.methods.lora import peft_task_type
from peftkit.methods.targets import resolve_targets
from peftkit.recipe import IA3Spec


def wrap(model: nn.Module, spec: IA3Spec, task: str):
    from peft import IA3Config, get_peft_model

    if spec.target_modules == "attention-ffn":
        targets, feedforward = None, None  # peft fills both from its per-architecture table
    else:
        targets = resolve_targets(model, spec)
        feedforward = list(spec.feedforward_modules or [])
    config = IA3Config(task_type=peft_task_type(task), target_modules=targets, feedforward_modules=feedforward)
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise RecipeError(f"method.target_modules: IA3 cannot pick defaults for {model.config.model_type} ({exc}); "
                          f"give target_modules explicitly") from None
