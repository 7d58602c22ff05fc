"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020) as a tuner on peft's contract.

    from peftkit.methods.bottleneck import BottleneckConfig, add_bottleneck_adapters, BottleneckModel

    model = add_bottleneck_adapters(base, BottleneckConfig(placement="houlsby", task="causal-lm"))
    trainer = transformers.Trainer(model=model, ...)       # forward takes and returns what the base does
    model.save_pretrained(run / "adapter")                 # adapter_config.json + adapter_model.safetensors
    model = BottleneckModel.from_pretrained(load_base(), run / "adapter")   # strict

Each adapter adds `up(act(down(dropout(h))))` to a sublayer's output h (`up` zero-initialised, so
training starts from the base model exactly). Placement:
- houlsby: after the attention block (Llama `self_attn.o_proj`, BERT `attention.output.dense`)
  and after the feed-forward block (Llama `mlp.down_proj`, BERT `layer.N.output.dense`): 2 per layer;
- pfeiffer: after the feed-forward block only: 1 per layer;
- `target_modules`: explicit module names instead.

Why subclass peft and how far: `BottleneckModel` is a peft `BaseTuner` and `BottleneckLayer` a
`BaseTunerLayer` (files `config.py`, `layer.py`, `model.py`, as peft's VeRA). They need no
registration: peft only needs the `PeftType` enum for `get_peft_model`, `PeftModel` and its
save/load helpers, and peft 0.21 cannot add a member without patching the enum, which we do not do.
So we use BaseTuner directly (target matching, layer replacement, freezing, `ModulesToSaveWrapper`
for the head, adapter enable/disable) and write what would need registration ourselves:
`save_pretrained` / `from_pretrained` in peft's on-disk layout (`peft_type: "BOTTLENECK"`,
`peftkit_tuner: "bottleneck"`, keys `base_model.model.<module>.<param>`), `is_bottleneck_adapter`
for telling these folders from peft's, and `get_nb_trainable_parameters`. peft's own
`PeftModel.from_pretrained` cannot read these folders.

Not mergeable: the activation between `down` and `up` is non-linear, so `merge_and_unload` raises
MergeError.
"""

from peftkit.methods.bottleneck.config import BottleneckConfig
from peftkit.methods.bottleneck.layer import BottleneckLayer
from peftkit.methods.bottleneck.model import (
    BottleneckModel,
    add_bottleneck_adapters,
    is_bottleneck_adapter,
    read_bottleneck_config,
    resolve_target_names,
)

__all__ = [
    "BottleneckConfig",
    "BottleneckLayer",
    "BottleneckModel",
    "add_bottleneck_adapters",
    "is_bottleneck_adapter",
    "read_bottleneck_config",
    "resolve_target_names",
]
