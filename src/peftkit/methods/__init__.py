"""PEFT methods: one module per family turns its recipe spec into a trainable model.

    model = apply_method(base, recipe.method, task="causal-lm")      # task: causal-lm | sequence-classification
    parameter_counts(model)                                         # trainable / total, PeftModel or plain
    save_tuned(model, recipe.method, run_dir, tokenizer)            # RUN/adapter, or RUN/model for full
    tuned = load_tuned(base, recipe.method, run_dir)                # what eval scores as "tuned"

| kind            | module     | what trains                                | artifact     | mergeable |
| lora            | lora.py    | A, B (rsLoRA / DoRA / PiSSA / OLoRA flags) | RUN/adapter  | yes       |
| qlora           | qlora.py   | A, B over a 4-bit base                     | RUN/adapter  | via a 16/32-bit reload |
| prefix, prompt  | prompt.py  | prefix keys/values, virtual tokens         | RUN/adapter  | no        |
| ia3             | ia3.py     | scaling vectors                            | RUN/adapter  | yes       |
| loha, lokr      | lycoris.py | Hadamard / Kronecker factors               | RUN/adapter  | yes       |
| bottleneck      | bottleneck/| down/up blocks after sublayers (ours)      | RUN/adapter  | no (non-linear) |
| full            | full.py    | every weight                               | RUN/model    | nothing to merge |

A classifier's fresh head trains with every PEFT kind (peft's SEQ_CLS task puts it in
modules_to_save, so it is saved with the adapter).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from torch import nn

from peftkit.methods.lora import linear_module_names, needs_initial_snapshot, parameter_counts, resolve_targets, wrap_with_lora

__all__ = ["MERGEABLE_KINDS", "PROMPT_LEARNING_KINDS", "apply_method", "artifact_name", "base_quantization",
           "describe_method", "linear_module_names", "load_tuned", "parameter_counts", "resolve_targets",
           "save_tuned", "snapshot_initial", "trained_precision", "wrap_with_lora"]

TASKS = ("causal-lm", "sequence-classification")
MERGEABLE_KINDS = frozenset({"lora", "qlora", "ia3", "loha", "lokr"})
PROMPT_LEARNING_KINDS = frozenset({"prefix", "prompt"})  # add inputs / keys instead of changing layers
INITIAL_SNAPSHOT = "initial_adapter"  # PiSSA/OLoRA init, kept during training; peft loads it as an adapter of this name


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a PeftModel (or the model itself when it is not wrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def apply_method(model: nn.Module, spec, task: str, *, gradient_checkpointing: bool = False) -> nn.Module:
    """Make `model` trainable with the method `spec.kind` (in place: peft injects layers into `model`).

    Args:
        model: the base model from `loading.load_base_model` (4-bit for qlora: see `base_quantization`).
        spec: one of the recipe's method specs (`recipe.method`).
        task: "causal-lm" or "sequence-classification".
        gradient_checkpointing: qlora only; `prepare_model_for_kbit_training` turns it on (speed plan).
    Returns:
        A PeftModel, or for `full` the model itself with every parameter trainable.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    kind = spec.kind
    if kind == "lora":
        from peftkit.methods import lora

        return lora.wrap(model, spec, task)
    if kind == "qlora":
        from peftkit.methods import qlora

        return qlora.wrap(model, spec, task, gradient_checkpointing=gradient_checkpointing)
    if kind in PROMPT_LEARNING_KINDS:
        from peftkit.methods import prompt

        return prompt.wrap(model, spec, task)
    if kind == "ia3":
        from peftkit.methods import ia3

        return ia3.wrap(model, spec, task)
    if kind in ("loha", "lokr"):
        from peftkit.methods import lycoris

        return lycoris.wrap(model, spec, task)
    if kind == "bottleneck":
        from peftkit.methods.bottleneck import BottleneckConfig, add_bottleneck_adapters

        config = BottleneckConfig(placement=spec.placement, reduction_factor=spec.reduction_factor,
                                  non_linearity=spec.non_linearity, dropout=spec.dropout,
                                  target_modules=spec.target_modules, task=task)
        return add_bottleneck_adapters(model, config)
    if kind == "full":
        from peftkit.methods import full

        return full.wrap(model, spec, task)
    raise ValueError(f"no method module for kind {kind!r}")  # the recipe's union admits no other kind


def base_quantization(spec, task: str = "causal-lm", precision: str | None = None):
    """The `quantization` to load the base with for `spec`: a 4-bit BitsAndBytesConfig for qlora, else None.

    Args:
        task: "causal-lm" or "sequence-classification" (a classifier's head stays unquantized).
        precision: the run's training precision, for compute_dtype auto (default: detected here).
    """
    if spec.kind != "qlora":
        return None
    from peftkit.methods.qlora import quantization_config

    return quantization_config(spec, precision, task)


def trained_precision(recipe) -> str:
    """The precision training ran at on this machine (bf16 or fp32): a 4-bit base is reloaded with that compute dtype."""
    from peftkit.train.precision import resolve_precision

    return resolve_precision(recipe.train.precision).name


def describe_method(spec) -> str:
    """One short line naming the method and its main settings, e.g. 'LoRA r=16 (DoRA)', 'prefix tuning (20 tokens)'."""
    kind = spec.kind
    if kind in ("lora", "qlora"):
        init = {"pissa": "PiSSA init", "olora": "OLoRA init"}.get(spec.init)
        flags = [f for f, on in (("rsLoRA", spec.rslora), ("DoRA", spec.dora), (init, init is not None)) if on]
        if kind == "qlora":
            flags.insert(0, f"4-bit {spec.quant_type}" + (", LoftQ" if spec.loftq else ""))
        name = "QLoRA" if kind == "qlora" else "LoRA"
        return f"{name} r={spec.r}, alpha={spec.alpha:g}" + (f" ({', '.join(flags)})" if flags else "")
    if kind in PROMPT_LEARNING_KINDS:
        return f"{kind} tuning ({spec.num_virtual_tokens} virtual tokens)"
    if kind == "ia3":
        return "IA3"
    if kind in ("loha", "lokr"):
        return f"{'LoHa' if kind == 'loha' else 'LoKr'} r={spec.r}, alpha={spec.alpha:g}"
    if kind == "bottleneck":
        return f"bottleneck adapters ({spec.placement}, reduction {spec.reduction_factor}, {spec.non_linearity})"
    if kind == "full":
        return "full fine-tuning"
    return kind


def artifact_name(spec) -> str:
    """The run-directory folder training writes: `model` for full fine-tuning, else `adapter`."""
    return "model" if spec.kind == "full" else "adapter"


def snapshot_initial(model: nn.Module, spec, run_dir: Path) -> Path | None:
    """Right after wrapping: save the PiSSA/OLoRA initial adapter that `save_tuned` converts against."""
    if not needs_initial_snapshot(spec):
        return None
    path = Path(run_dir) / INITIAL_SNAPSHOT
    model.save_pretrained(path)
    return path


def save_tuned(model: nn.Module, spec, run_dir: Path, tokenizer=None) -> tuple[Path, int]:
    """Save what training produced: RUN/adapter (PEFT format) or RUN/model (full); returns (folder, weight bytes).

    PiSSA/OLoRA adapters of causal LMs are saved as plain LoRA relative to the untouched base (see
    `lora.needs_initial_snapshot`); the snapshot taken by `snapshot_initial` is removed afterwards.
    """
    run_dir = Path(run_dir)
    out = run_dir / artifact_name(spec)
    if spec.kind == "full":
        from peftkit.methods.full import save

        return out, save(model, tokenizer, out)
    initial = run_dir / INITIAL_SNAPSHOT
    if needs_initial_snapshot(spec) and not getattr(model, "modules_to_save", None):
        model.save_pretrained(out, path_initial_model_for_weight_conversion=str(initial))
    else:
        # A classifier's head (modules_to_save) is lost by peft 0.21's conversion (KeyError on its weight), so
        # a PiSSA/OLoRA classifier adapter is saved as trained: loading it on the untouched base makes peft
        # repeat the same (deterministic SVD / QR) init before setting A, B, which gives the trained model.
        model.save_pretrained(out)
    shutil.rmtree(initial, ignore_errors=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out, (out / "adapter_model.safetensors").stat().st_size


def load_tuned(base: nn.Module | None, spec, run_dir: Path, load_full=None) -> nn.Module:
    """The tuned model of a run: the adapter attached to `base` (in place), or for full the saved model.

    Args:
        base: the base as training saw it (4-bit for qlora); unused for full.
        load_full: for full, a callable(path) that loads RUN/model (eval passes loading.load_base_model
            with the model name replaced by that folder).
    """
    from peftkit.rundir import require

    folder = require(Path(run_dir), artifact_name(spec), "train")
    if spec.kind == "full":
        if load_full is None:
            raise ValueError("load_tuned: full fine-tuning needs load_full to read RUN/model")
        return load_full(folder)
    if spec.kind == "bottleneck":
        from peftkit.methods.bottleneck import BottleneckModel

        return BottleneckModel.from_pretrained(base, folder)
    from peft import PeftModel

    return PeftModel.from_pretrained(base, folder)
