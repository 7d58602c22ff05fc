"""LyCORIS methods through peft: LoHa (Hadamard product of low-rank pairs) and LoKr (Kronecker product).

    model = wrap(base, LoKrSpec(r=8, alpha=16), task="causal-lm")

Both adapt the same linear layers LoRA would (`peftkit.methods.targets`) with a higher-rank update
for the same parameter count, and both merge into the base weights.
"""

from __future__ import annotations

from torch import nn

from peftkit.methods.lora import peft_task_type
from peftkit.methods.targets import resolve_targets
from peftkit.recipe import LoHaSpec, LoKrSpec


def wrap(model: nn.Module, spec: LoHaSpec | LoKrSpec, task: str):
    from peft import LoHaConfig, LoKrConfig, get_peft_model

    config_cls = LoHaConfig if spec.kind == "loha" else LoKrConfig
    config = config_cls(r=spec.r, alpha=spec.alpha, target_modules=resolve_targets(model, spec),
                        task_type=peft_task_type(task))
    return get_peft_model(model, config)
