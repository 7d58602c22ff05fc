"""Which modules a method adapts: presets per architecture family, checked against the model.

    resolve_targets(model, spec)          # 'all-linear', or module names for peft's target_modules

Presets:
- `attention`: the query and value projections (q_proj/v_proj in Llama, query/value in BERT);
- `attention-all`: query, key, value and output projections (BERT: query, key, value, attention.output.dense);
- `all-linear`: every linear layer except the output head (peft's own preset);
- a list of names: module-name suffixes (`q_proj`, `attention.output.dense`); each must match a linear layer.

A target that matches nothing is a RecipeError that lists the model's linear layers.
"""

from __future__ import annotations

from torch import nn

from peftkit.errors import RecipeError

# Per architecture family, the first group whose names all exist in the model wins.
ATTENTION_PAIRS = (("q_proj", "v_proj"), ("query", "value"), ("q", "v"), ("q_lin", "v_lin"))
ATTENTION_ALL = (
    ("q_proj", "k_proj", "v_proj", "o_proj"),
    ("query", "key", "value", "attention.output.dense"),  # BERT: the attention output is a `dense` under attention.output
    ("q", "k", "v", "o"),
    ("q_lin", "k_lin", "v_lin", "out_lin"),
)
PRESET_GROUPS = {"attention": ATTENTION_PAIRS, "attention-all": ATTENTION_ALL}


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct last name parts of the model's nn.Linear layers, e.g. ['down_proj', 'gate_proj', ...]."""
    return sorted({name.rsplit(".", 1)[-1] for name, _ in _linears(model)})


def _linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    # bitsandbytes' Linear4bit subclasses nn.Linear, so a 4-bit model lists the same names.
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def _matches(full_names: list[str], target: str) -> bool:
    """peft's rule: a target matches a module whose name equals it or ends with '.' + target."""
    return any(n == target or n.endswith("." + target) for n in full_names)


def resolve_targets(model: nn.Module, spec, field: str = "method.target_modules") -> str | list[str]:
    """The `target_modules` value for peft (from `spec.target_modules`), after checking it against the model."""
    wanted = spec.target_modules
    full_names = [name for name, _ in _linears(model)]
    names = linear_module_names(model)
    if wanted == "all-linear":
        return "all-linear"
    if isinstance(wanted, str):
        for group in PRESET_GROUPS[wanted]:
            if all(_matches(full_names, t) for t in group):
                return list(group)
        raise RecipeError(
            f"{field}: preset '{wanted}' finds no known attention projections in this model; "
            f"give names explicitly, the linear layers are: {', '.join(names)}"
        )
    missing = [t for t in wanted if not _matches(full_names, t)]
    if missing:
        raise RecipeError(
            f"{field}: {', '.join(missing)} match no linear layer; "
            f"the model's linear layers are: {', '.join(names)}"
        )
    return list(wanted)
