"""The training fast path: which precision, packing, attention kernel, compile and checkpointing a run uses.

    plan = plan_speed(recipe.train, task="causal-lm", model_config=config)
    console.print(plan.summary())          # also written to the run log and metrics.json
    model_spec = plan.load_spec(recipe.model)   # bf16 storage of the frozen base while training
    ...
    prepare_model_in_place(model, plan)    # LoRA weights fp32, attention kernel, compile

Every `auto` choice is made here from what the hardware reports and from measurements
(benchmarks/train_bench.py), and each comes with its reason, so the run log says which path was
taken and why. A recipe can force any of them.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch

from peftkit.methods import PROMPT_LEARNING_KINDS  # virtual tokens: the loss goes through PeftModel.forward
from peftkit.methods import base_model
from peftkit.recipe import ModelSpec, TrainSpec
from peftkit.train.precision import PrecisionChoice, resolve_precision

# Attention and compile, measured on this CPU (benchmarks/attention_compile_probe.py: smollm2-135m
# LoRA r=16 as peftkit trains it, padded batches of 8 chatterbot conversations, 2 threads, 6 steps x
# 2 alternating rounds in one process; stop 11): eager 1.14x sdpa's tokens/s, sdpa + torch.compile
# (dynamic shapes) 1.01x after a 67 s first step. SDPA stays the default for causal LMs: eager keeps
# the [T, T] attention weights for backward (the planner's trace at 8 x 256: 2219 vs 1321 MiB of
# activations), which would undo the memory target for a 14% gain; compile stays off (no gain on CPU,
# a minute of compilation). Encoders on CPU train with `math` (train.attention): SDPA has no CPU
# kernel for their attention dropout (stop 19, minilm-l6 16 x 128: 0.74-0.79 s a step with SDPA,
# 0.44-0.47 s with math), and their [T, T] weights at 128 tokens are small. Not measured on CUDA.
AUTO_ATTENTION = {("cpu", "causal-lm"): "sdpa", ("cpu", "sequence-classification"): "math",
                  ("cuda", "causal-lm"): "sdpa", ("cuda", "sequence-classification"): "sdpa"}
AUTO_COMPILE = {"cpu": False, "cuda": False}
# Methods whose base is not stored in bf16 on the bf16 path (see SpeedPlan.load_spec).
UNCAST_BASE_METHODS = ("full", "qlora")


@dataclass(frozen=True)
class SpeedPlan:
    device: str
    precision: str  # bf16 | fp32
    precision_reason: str
    packing: str  # padding_free | bfd | off
    attention: str  # sdpa | eager | math (train.attention)
    compile: bool
    gradient_checkpointing: bool
    checkpointing_reason: str
    labelled_positions_loss: bool  # LM head only where a label is, chunked CE
    loss_chunk: int
    split_long_batches: bool = False  # batches above the p75 size run in row slices (train.long_batches)

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    def summary(self) -> str:
        """One line for the console and the run log."""
        return (
            f"speed: {self.precision} on {self.device} ({self.precision_reason}); packing {self.packing}; "
            f"attention {self.attention}; compile {'on' if self.compile else 'off'}; "
            f"gradient checkpointing {self._checkpointing_word()} ({self.checkpointing_reason}); "
            f"loss {'at labelled positions, chunks of ' + str(self.loss_chunk) if self.labelled_positions_loss else 'full logits'}"
        )

    def _checkpointing_word(self) -> str:
        if self.gradient_checkpointing:
            return "on"
        return "off, long batches cut into pieces" if self.split_long_batches else "off"

    def as_dict(self) -> dict:
        return asdict(self)

    def load_spec(self, spec: ModelSpec, method: str = "lora") -> ModelSpec:
        """The ModelSpec to load the base with for training: bf16 storage of a frozen base on the bf16 path.

        Only training changes: eval and merge load `model.dtype` as the recipe says (merge parity is
        checked in that dtype), and the adapter is saved in fp32 either way. Not for `full` (its weights
        train: they stay fp32 master weights under bf16 autocast, since bf16 storage would round small
        updates away) nor `qlora` (its linear layers load in 4 bits and peft's
        prepare_model_for_kbit_training casts the rest to fp32; nothing re-casts them).
        """
        return spec.model_copy(update={"dtype": training_storage_dtype(spec.dtype, method, self.bf16)})

    def trainer_overrides(self) -> dict:
        """TrainingArguments fields for this plan (autocast through the Trainer's own bf16 flag)."""
        return {
            "bf16": self.bf16,
            "use_cpu": self.device == "cpu",  # transformers refuses bf16 on CPU without it
            "activation_checkpointing": self.gradient_checkpointing,
        }


def training_storage_dtype(dtype: str, method: str, bf16: bool) -> str:
    """The dtype a frozen base of `dtype` is stored in while training `method` (see SpeedPlan.load_spec)."""
    if bf16 and dtype == "float32" and method not in UNCAST_BASE_METHODS:
        return "bfloat16"
    return dtype


def plan_speed(spec: TrainSpec, task: str, model_config=None, max_length: int = 512, device: str | None = None,
               method: str = "lora") -> SpeedPlan:
    """Resolve the recipe's speed fields (`auto` or forced) into a concrete plan for this machine.

    Args:
        task: "causal-lm" or "sequence-classification".
        model_config: the base model's transformers config (sizes for the activation estimate).
        max_length: the recipe's data.max_length.
        method: the recipe's method.kind (prefix/prompt tuning: padded batches and the model's own loss).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision: PrecisionChoice = resolve_precision(spec.precision, device)
    causal = task == "causal-lm"
    # auto = off: padded batches grouped by length. Padding-free rows trained a worse quickstart adapter
    # on the final main of stop 9 (same 38 steps, bf16: field accuracy 74.6% and 80% valid JSON with
    # padding_free vs 93.6% and 100% with off; fp32 + padding_free 79.6%), although the tests show packed
    # sequences isolated and the loss equal to padded batches. Stop 24 (fp32, AVX2, seeds 42 and 43): field
    # accuracy 79.6% / 84.6% with padding_free vs 91.4% / 85.4% with off, validation loss 0.033 / 0.022 vs
    # 0.035 / 0.027, and 0.81-0.86x the tokens/s: the accuracy gap moves with the seed (12 points, then 1),
    # the speed loss does not, so it stays opt-in.
    packing = spec.packing if spec.packing != "auto" else "off"
    if not causal or method in PROMPT_LEARNING_KINDS:
        packing = "off"  # encoders take padded batches; virtual tokens are outside packed rows' position ids
    attention = spec.attention if spec.attention != "auto" else AUTO_ATTENTION.get((device, task), "sdpa")
    compile_on = spec.compile == "on" or (spec.compile == "auto" and AUTO_COMPILE[device])
    tokens = spec.batch_size * max_length
    gc_on, gc_reason = _checkpointing(spec.gradient_checkpointing, model_config, tokens, precision.name, device)
    # Padded batches of varying length: the longest few set the peak; cut only those (train.long_batches).
    long_batches = (spec.gradient_checkpointing == "auto" and not gc_on and causal and packing == "off"
                    and method not in PROMPT_LEARNING_KINDS)
    if long_batches:
        gc_reason += "; batches above batch_size x the 75th-percentile length run in row slices"
    return SpeedPlan(
        device=device,
        precision=precision.name,
        precision_reason=precision.reason,
        packing=packing,
        attention=attention,
        compile=compile_on,
        gradient_checkpointing=gc_on,
        checkpointing_reason=gc_reason,
        labelled_positions_loss=causal and method not in PROMPT_LEARNING_KINDS,
        loss_chunk=spec.loss_chunk,
        split_long_batches=long_batches,
    )


def activation_bytes(model_config, tokens: int, precision: str) -> int:
    """Rough bytes of activations kept for backward in one micro-batch of `tokens` tokens.

    Per layer and token a transformer block keeps about 16 hidden-sized tensors and 3
    intermediate-sized ones (norms, q/k/v/o inputs and outputs, MLP gate/up/act); the chunked loss
    keeps no logits.
    """
    hidden = getattr(model_config, "hidden_size", 768)
    inter = getattr(model_config, "intermediate_size", 4 * hidden)
    layers = getattr(model_config, "num_hidden_layers", 12)
    width = 2 if precision == "bf16" else 4
    return tokens * layers * (16 * hidden + 3 * inter) * width


def free_memory_bytes(device: str) -> int:
    """Memory available to this process now: free CUDA memory, or MemAvailable on Linux."""
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    try:
        import psutil

        return psutil.virtual_memory().available
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _checkpointing(requested: str, model_config, tokens: int, precision: str, device: str) -> tuple[bool, str]:
    if requested != "auto":
        return requested == "on", "recipe"
    if model_config is None:
        return False, "auto: model size unknown"
    need, free = activation_bytes(model_config, tokens, precision), free_memory_bytes(device)
    gib = 1024**3
    verdict = need > free / 2
    return verdict, f"auto: activations ~{need / gib:.1f} GiB vs {free / gib:.1f} GiB free"


def keep_trainable_fp32(model) -> None:
    """Cast trainable parameters to fp32 in place (their optimizer states follow); frozen ones keep their dtype."""
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def prepare_model_in_place(model, plan: SpeedPlan) -> None:
    """Make trainable parameters fp32 (optimizer states follow), set the attention kernel, compile if planned.

    peft already keeps LoRA A/B in fp32 over a bf16 base; a classifier's fully trained head is a copy
    of a base module and would otherwise stay bf16. `math` attention is put back to sdpa by
    `train.attention.restore_attention` before the model is saved.
    """
    from peftkit.train.attention import use_math_attention

    keep_trainable_fp32(model)
    base = base_model(model)
    if plan.attention == "math":
        use_math_attention(base)
    elif getattr(base.config, "_attn_implementation", None) != plan.attention:
        base.set_attn_implementation(plan.attention)
    if plan.compile:
        decoder = base.get_decoder() if hasattr(base, "get_decoder") else base
        decoder.compile(dynamic=True)
