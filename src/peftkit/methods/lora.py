"""LoRA through peft: target-module presets, a clear error for targets that match nothing.

    model = wrap_with_lora(base_model, recipe.method, task="causal-lm")   # base_model is modified in place

Presets:
- `attention`: the query and value projections (q_proj/v_proj in Llama, query/value in BERT);
- `all-linear`: every linear layer except the output head (peft's own preset);
- a list of names: module-name suffixes, each must match at least one linear layer.
"""

from __future__ import annotations

from torch import nn

from peftkit.errors import RecipeError
from peftkit.recipe import LoraSpec

# (query, value) module names by architecture family; the first pair present in the model wins.
ATTENTION_PAIRS = (("q_proj", "v_proj"), ("query", "value"), ("q", "v"), ("q_lin", "v_lin"))


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct last name parts of the model's nn.Linear layers, e.g. ['down_proj', 'gate_proj', ...]."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})


def resolve_targets(model: nn.Module, spec: LoraSpec) -> str | list[str]:
    """The `target_modules` value for peft, after checking it against the model."""
    names = linear_module_names(model)
    if spec.target_modules == "all-linear":
        return "all-linear"
    if spec.target_modules == "attention":
        for pair in ATTENTION_PAIRS:
            if all(p in names for p in pair):
                return list(pair)
        raise RecipeError(
            f"method.target_modules: no known query/value projections in this model; "
            f"give names explicitly, the linear layers are: {', '.join(names)}"
        )
    missing = [t for t in spec.target_modules if t not in names]
    if missing:
        raise RecipeError(
            f"method.target_modules: {', '.join(missing)} match no linear layer; "
            f"the model's linear layers are: {', '.join(names)}"
        )
    return list(spec.target_modules)


def wrap_with_lora(model: nn.Module, spec: LoraSpec, task: str):
    """Wrap `model` in a LoRA PeftModel (peft injects the layers into `model` itself, in place).

    Args:
        task: "causal-lm" or "sequence-classification" (the head then trains fully, saved with the adapter).
    """
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=resolve_targets(model, spec),
        task_type=TaskType.CAUSAL_LM if task == "causal-lm" else TaskType.SEQ_CLS,
    )
    return get_peft_model(model, config)


def parameter_counts(model) -> dict[str, float]:
    """Trainable and total parameters of a PeftModel (peft's count: right for 4-bit and ZeRO-3 too)."""
    trainable, total = model.get_nb_trainable_parameters()
    return {"trainable_params": trainable, "total_params": total, "trainable_percent": 100.0 * trainable / total}
