"""BottleneckModel: injects bottleneck adapters into a transformers model and saves / loads them.

    model = add_bottleneck_adapters(base, BottleneckConfig(placement="houlsby"))   # base is modified in place
    model.save_pretrained("runs/x/adapter")          # adapter_config.json + adapter_model.safetensors
    model = BottleneckModel.from_pretrained(fresh_base, "runs/x/adapter")

A peft `BaseTuner`: peft matches the target modules, swaps in our `BottleneckLayer`, freezes the
rest and wraps `modules_to_save` (a classifier head) in its `ModulesToSaveWrapper`. What peft
cannot do for a type its `PeftType` enum does not know (saving, loading, counting) is done here.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner
from peft.utils import ModulesToSaveWrapper
from torch import nn

from peftkit.errors import MergeError, RecipeError, RunDirError
from peftkit.methods.bottleneck.config import PEFT_TYPE, BottleneckConfig
from peftkit.methods.bottleneck.layer import MERGE_REASON, BottleneckLayer

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
TUNER_NAME = "bottleneck"
KEY_PREFIX = "base_model.model."  # peft's prefix for saved adapter keys

# (family, attention output projection, feed-forward output projection): regexes on full module names.
# The first family whose feed-forward pattern matches a linear layer of the model wins.
PLACEMENT_FAMILIES = (
    ("llama", r"(.*\.)?self_attn\.o_proj", r"(.*\.)?mlp\.down_proj"),
    ("bert", r"(.*\.)?attention\.output\.dense", r"(.*\.)?layer\.\d+\.output\.dense"),
)
# Sequence-classification heads by architecture: BERT-family `classifier`, Llama-family `score`.
HEAD_NAMES = ("classifier", "score")
# Inputs a transformers Trainer must see in `forward`'s signature (it drops dataset columns that are not).
FORWARD_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds", "labels")


def _linear_names(model: nn.Module) -> list[str]:
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})


def resolve_target_names(model: nn.Module, config: BottleneckConfig) -> list[str]:
    """Full names of the linear layers that get an adapter, in model order."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.endswith(".base_layer")]
    if config.target_modules:
        matched: list[str] = []
        missing = []
        for target in config.target_modules:
            hits = [n for n in linears if n == target or n.endswith("." + target)]
            if not hits:
                missing.append(target)
            matched += hits
        if missing:
            raise RecipeError(
                f"method.target_modules: {', '.join(missing)} match no linear layer; "
                f"the model's linear layers are: {', '.join(_linear_names(model))}"
            )
        return [n for n in linears if n in set(matched)]
    for _family, attention, feed_forward in PLACEMENT_FAMILIES:
        ffn = [n for n in linears if re.fullmatch(feed_forward, n)]
        attn = [n for n in linears if re.fullmatch(attention, n)]
        if not ffn or (config.placement == "houlsby" and not attn):
            continue
        chosen = set(ffn) | (set(attn) if config.placement == "houlsby" else set())
        return [n for n in linears if n in chosen]
    raise RecipeError(
        f"method.placement: '{config.placement}' found no known attention/feed-forward output projections "
        f"(Llama self_attn.o_proj and mlp.down_proj, BERT attention.output.dense and layer.N.output.dense) in "
        f"{type(model).__name__}; give method.target_modules explicitly; the model's linear layers are: "
        f"{', '.join(_linear_names(model))}"
    )


def _with_head(model: nn.Module, config: BottleneckConfig) -> BottleneckConfig:
    """The config with its modules_to_save checked, and the classifier head added for sequence classification."""
    modules = [n for n, _ in model.named_modules()]
    names = list(config.modules_to_save or [])
    if config.task == "sequence-classification" and not names:
        names = [h for h in HEAD_NAMES if isinstance(getattr(model, h, None), nn.Module)]
        if not names:
            raise RecipeError(
                f"method.modules_to_save: no classifier head ({' or '.join(HEAD_NAMES)}) on {type(model).__name__}; "
                f"name the head module explicitly"
            )
    missing = [t for t in names if not any(n == t or n.endswith("." + t) for n in modules)]
    if missing:
        raise RecipeError(
            f"method.modules_to_save: {', '.join(missing)} match no module of {type(model).__name__}; its top-level "
            f"modules are: {', '.join(n for n, _ in model.named_children())}"
        )
    return dataclasses.replace(config, modules_to_save=names or None)


class BottleneckModel(BaseTuner):
    """A transformers model with bottleneck adapters; calls, `.config` and `generate` go to the base model."""

    prefix: str = "bottleneck_"
    tuner_layer_cls = BottleneckLayer
    target_module_mapping: dict[str, list[str]] = {}

    def __init__(self, model: nn.Module, config: BottleneckConfig, adapter_name: str = "default") -> None:
        super().__init__(model, _with_head(model, config), adapter_name)

    # --- peft's tuner contract -------------------------------------------------------------------

    def _pre_injection_hook(self, model: nn.Module, config: BottleneckConfig, adapter_name: str) -> None:
        self._targets = set(resolve_target_names(model, config))

    def _prepare_adapter_config(self, peft_config: BottleneckConfig, model_config: dict) -> BottleneckConfig:
        return peft_config  # targets come from the placement (see _pre_injection_hook), not a per-model table

    def _check_target_module_exists(self, peft_config: BottleneckConfig, key: str) -> bool:
        return key in self._targets

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key, **kwargs) -> None:
        if isinstance(target, BottleneckLayer):
            target.update_layer(adapter_name, config, inference_mode=config.inference_mode)
            return
        new_module = BottleneckLayer(target, adapter_name, config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added, inactive adapter does not train
        self._replace_module(parent, target_name, new_module, target)

    def _check_merge_allowed(self) -> None:
        raise MergeError(f"cannot merge bottleneck adapters: {MERGE_REASON}")

    # --- calling the model -----------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ):
        """The base model's forward (same kwargs, same output). Named inputs let Trainer keep its columns."""
        named = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                     position_ids=position_ids, inputs_embeds=inputs_embeds, labels=labels)
        kwargs.update({k: v for k, v in named.items() if v is not None})
        return self.model(**kwargs)

    def generate(self, *args: Any, **kwargs: Any):
        """The base model's `generate`, running through the adapters."""
        return self.model.generate(*args, **kwargs)

    def get_base_model(self) -> nn.Module:
        """The wrapped transformers model (it holds the adapter layers: they were injected in place)."""
        return self.model

    def merge_and_unload(self, *args: Any, **kwargs: Any) -> nn.Module:
        raise MergeError(f"cannot merge bottleneck adapters: {MERGE_REASON}")

    def merge_adapter(self, *args: Any, **kwargs: Any) -> None:
        raise MergeError(f"cannot merge bottleneck adapters: {MERGE_REASON}")

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, total) parameters, counted as peft counts them (4-bit weights count twice per byte)."""
        trainable = total = 0
        for param in self.parameters():
            n = param.numel()
            if param.__class__.__name__ == "Params4bit":
                n *= 2 * (param.element_size() if hasattr(param, "element_size") else 1)
            total += n
            if param.requires_grad:
                trainable += n
        return trainable, total

    # --- saving and loading ----------------------------------------------------------------------

    def adapter_state_dict(self, adapter_name: str = "default") -> dict[str, torch.Tensor]:
        """Adapter and modules_to_save tensors under peft-style keys (`base_model.model.<module>.<param>`)."""
        tensors: dict[str, torch.Tensor] = {}
        for path, module in self.model.named_modules():
            if isinstance(module, BottleneckLayer):
                for attr in module.adapter_layer_names:
                    layers = getattr(module, attr)
                    if adapter_name in layers:
                        for key, value in layers[adapter_name].state_dict(keep_vars=True).items():
                            tensors[f"{KEY_PREFIX}{path}.{attr}.{key}"] = value
            elif isinstance(module, ModulesToSaveWrapper) and adapter_name in module.modules_to_save:
                for key, value in module.modules_to_save[adapter_name].state_dict(keep_vars=True).items():
                    tensors[f"{KEY_PREFIX}{path}.modules_to_save.{key}"] = value
        return tensors

    def save_pretrained(self, save_directory: str | Path, adapter_name: str = "default") -> Path:
        """Write adapter_config.json and adapter_model.safetensors (adapter + modules_to_save only)."""
        from safetensors.torch import save_file

        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        config = self.peft_config[adapter_name]
        data = config.to_dict()
        data["task_type"] = str(getattr(config.task_type, "value", config.task_type))
        data["peft_type"] = PEFT_TYPE
        data["peftkit_tuner"] = TUNER_NAME
        base_config = getattr(self.model, "config", None)
        data["base_model_name_or_path"] = getattr(base_config, "_name_or_path", None) or data.get(
            "base_model_name_or_path"
        )
        data["inference_mode"] = True
        data["targeted_modules"] = list(self.targeted_module_names)
        (out / CONFIG_FILE).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.adapter_state_dict(adapter_name).items()}
        save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
        return out

    @classmethod
    def from_pretrained(
        cls, model: nn.Module, adapter_dir: str | Path, adapter_name: str = "default", is_trainable: bool = False
    ) -> BottleneckModel:
        """Inject the saved adapter into `model` (a fresh base, modified in place) and load its weights.

        Strict: a key missing from the file, a key the model does not have, or a shape that differs is an
        error naming them. With `is_trainable=False` (the default, as in peft) everything stays frozen.
        """
        from safetensors.torch import load_file

        adapter_dir = Path(adapter_dir)
        config = read_bottleneck_config(adapter_dir)
        config.inference_mode = not is_trainable
        weights = adapter_dir / WEIGHTS_FILE
        if not weights.is_file():
            raise RunDirError(f"{adapter_dir}: no {WEIGHTS_FILE} (only safetensors adapters are loaded)")
        wrapped = cls(model, config, adapter_name)
        wrapped._load_adapter_tensors(load_file(str(weights)), adapter_dir, adapter_name)
        return wrapped

    def _load_adapter_tensors(self, loaded: dict[str, torch.Tensor], source: Path, adapter_name: str) -> None:
        expected = self.adapter_state_dict(adapter_name)
        missing = sorted(set(expected) - set(loaded))
        unexpected = sorted(set(loaded) - set(expected))
        wrong_shape = sorted(k for k in set(expected) & set(loaded) if expected[k].shape != loaded[k].shape)
        problems = []
        if missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {', '.join(unexpected)}")
        if wrong_shape:
            problems.append(
                "shape mismatch: "
                + ", ".join(f"{k} {tuple(loaded[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong_shape)
            )
        if problems:
            raise RunDirError(
                f"{source / WEIGHTS_FILE} does not fit this base model ({type(self.model).__name__}): "
                + "; ".join(problems)
            )
        with torch.no_grad():
            for key, target in expected.items():
                target.copy_(loaded[key].to(device=target.device, dtype=target.dtype))


def read_bottleneck_config(adapter_dir: str | Path) -> BottleneckConfig:
    """The BottleneckConfig saved in `adapter_dir`, or a RunDirError saying what is there instead."""
    path = Path(adapter_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunDirError(f"{adapter_dir}: no {CONFIG_FILE}; expected a saved bottleneck adapter")
    data = json.loads(path.read_text())
    if data.get("peftkit_tuner") != TUNER_NAME:
        raise RunDirError(
            f"{path}: not a bottleneck adapter (peft_type {data.get('peft_type')!r}); load it with peft instead"
        )
    own = {f.name for f in dataclasses.fields(BottleneckConfig)} - {"peft_type", "task_type", "peft_version"}
    return BottleneckConfig(**{k: v for k, v in data.items() if k in own})


def is_bottleneck_adapter(adapter_dir: str | Path) -> bool:
    """True when `adapter_dir` holds an adapter_config.json written by BottleneckModel.save_pretrained."""
    path = Path(adapter_dir) / CONFIG_FILE
    try:
        return json.loads(path.read_text()).get("peftkit_tuner") == TUNER_NAME
    except (OSError, ValueError, AttributeError):
        return False


def add_bottleneck_adapters(model: nn.Module, config: BottleneckConfig) -> BottleneckModel:
    """Insert bottleneck adapters into `model` IN PLACE and return the wrapping BottleneckModel.

    `model`'s target layers are replaced by adapter layers and all its parameters are frozen except the
    adapters and `modules_to_save` (for sequence classification: the classifier head, found by name).
    """
    return BottleneckModel(model, config)


__all__ = [
    "BottleneckModel",
    "add_bottleneck_adapters",
    "is_bottleneck_adapter",
    "read_bottleneck_config",
    "resolve_target_names",
]
