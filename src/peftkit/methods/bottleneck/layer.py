"""The bottleneck adapter layer: wraps a linear sublayer and adds a small residual MLP to its output.

    y = h + up(act(down(dropout(h))))      h = base_layer(x): [..., d]
                                           down: d -> d // reduction_factor, up: back to d

`up` starts at zero, so a freshly wrapped model computes exactly what the base computed. The base
layer is called, never re-implemented; adapters live in one `ModuleDict` per adapter name, as in
peft's tuner layers (BaseTunerLayer does the adapter bookkeeping: active / disabled / delete).
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, _get_in_out_features
from torch import nn

from peftkit.errors import MergeError, RecipeError
from peftkit.methods.bottleneck.config import BottleneckConfig

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}

MERGE_REASON = (
    "a bottleneck adapter adds a non-linear function of the sublayer's output (an activation between its "
    "down and up projections), so it cannot be folded into the base model's linear weights; "
    "keep the adapter separate (load it with BottleneckModel.from_pretrained) or use a mergeable method "
    "(lora, ia3, loha, lokr)"
)


class BottleneckLayer(nn.Module, BaseTunerLayer):
    """A linear layer whose output passes through one bottleneck adapter per active adapter name."""

    adapter_layer_names = ("bottleneck_down", "bottleneck_up")
    other_param_names = ("bottleneck_dropout", "bottleneck_act", "bottleneck_size")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: BottleneckConfig, **kwargs: Any) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.bottleneck_down = nn.ModuleDict({})
        self.bottleneck_up = nn.ModuleDict({})
        self.bottleneck_act = nn.ModuleDict({})
        self.bottleneck_dropout = nn.ModuleDict({})
        self.bottleneck_size: dict[str, int] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        self.kwargs = kwargs
        self.cast_input_dtype_enabled = True  # peft's per-layer switch (peft.helpers.disable_input_dtype_casting)

        in_features, out_features = _get_in_out_features(self.get_base_layer())
        if out_features is None:
            raise RecipeError(
                f"method.target_modules: bottleneck adapters wrap linear layers, got {type(base_layer).__name__}"
            )
        self.in_features = in_features
        self.out_features = out_features
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: BottleneckConfig, inference_mode: bool = False) -> None:
        """Add adapter `adapter_name`: down [d -> d/r], act, up [d/r -> d] with up zero-initialised."""
        size = self.out_features // config.reduction_factor
        if size < 1:
            raise RecipeError(
                f"method.reduction_factor: {config.reduction_factor} leaves no hidden unit for a layer of width "
                f"{self.out_features}; expected at most {self.out_features}"
            )
        self.bottleneck_size[adapter_name] = size
        self.bottleneck_dropout[adapter_name] = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.bottleneck_act[adapter_name] = ACTIVATIONS[config.non_linearity]()
        self.bottleneck_down[adapter_name] = nn.Linear(self.out_features, size)  # [d] -> [d/r], kaiming init
        up = nn.Linear(size, self.out_features)  # [d/r] -> [d]
        nn.init.zeros_(up.weight)
        nn.init.zeros_(up.bias)
        self.bottleneck_up[adapter_name] = up
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)  # h: [..., d]
        if self.disable_adapters:
            return result
        out_dtype = result.dtype
        for name in self.active_adapters:
            if name not in self.bottleneck_down:
                continue
            down = self.bottleneck_down[name]
            h = self._cast_input_dtype(result, down.weight.dtype)
            delta = self.bottleneck_up[name](self.bottleneck_act[name](down(self.bottleneck_dropout[name](h))))
            result = (h + delta).to(out_dtype)
        return result

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise MergeError(f"cannot merge bottleneck adapters: {MERGE_REASON}")

    def unmerge(self) -> None:
        raise MergeError(f"cannot unmerge bottleneck adapters: they are never merged ({MERGE_REASON})")

    def __repr__(self) -> str:
        return "bottleneck." + super().__repr__()
