"""Time, price and storage of a plan: FLOPs per token, an assumed (or measured) utilisation, a price table.

    estimate_cost(plan_spec, tokens=10_000_000, device=GPUS["a100-80gb"], utilisation=0.4)
    storage(plan_spec, tasks=100)            # one base + 100 adapters vs 100 full copies

FLOPs per trained token, with N the weights that multiply (every linear layer, the output head
included; embedding lookups are free) and attention's score and value products (4 · layers · seq
· heads · head_dim per token, halved for causal masking):
- forward 2N + attention;
- backward: full fine-tuning computes gradients for inputs and weights (2 × forward); with frozen
  weights (LoRA, QLoRA, DoRA, prompt) only the input gradients (1 × forward) plus the adapters'
  small products, which are left out;
- gradient checkpointing recomputes the forward once more.
Time = tokens × FLOPs per token / (peak BF16 throughput × utilisation). Utilisation (MFU) is an
assumption, 0.4 by default (typical reported figures for single-GPU fine-tuning are 0.3-0.5);
pass your own, e.g. one measured here with `benchmarks/plan_vs_measured.py`, which prints the
FLOP/s each run achieved on this machine.
"""

from __future__ import annotations

from peftkit.plan.activations import DTYPE_BYTES
from peftkit.plan.architecture import load_architecture
from peftkit.plan.hardware import Device
from peftkit.plan.memory import TrainPlanSpec, adapter_targets, head_params, lora_params

DEFAULT_UTILISATION = 0.4


def flops_per_token(spec: TrainPlanSpec) -> float:
    """Training FLOPs per token of `spec` (see the module docstring)."""
    arch = load_architecture(spec.model, spec.task, spec.num_labels, spec.attention)
    n = sum(d * k for d, k in arch.linear_shapes().values())
    heads = arch.config.num_attention_heads
    attention = 4 * arch.layers * spec.seq * heads * arch.head_dim * (0.5 if arch.task == "causal-lm" else 1.0)
    forward = 2 * n + attention
    backward = 2 * forward if spec.method == "full" else forward
    recompute = forward if spec.gradient_checkpointing else 0
    return forward + backward + recompute


def estimate_cost(spec: TrainPlanSpec, tokens: int, device: Device, utilisation: float = DEFAULT_UTILISATION) -> dict:
    """Hours and price of training `tokens` tokens of `spec` on `device`."""
    fpt = flops_per_token(spec)
    out = {"device": device.name, "tokens": tokens, "flops_per_token": fpt, "total_flops": fpt * tokens,
           "utilisation": utilisation, "hours": None, "usd": None}
    if device.bf16_tflops:
        hours = fpt * tokens / (device.bf16_tflops * 1e12 * utilisation) / 3600
        out["hours"] = hours
        if device.usd_per_hour is not None:
            out["usd"] = hours * device.usd_per_hour
    return out


def storage(spec: TrainPlanSpec, tasks: int, dtype: str | None = None) -> dict:
    """Disk for `tasks` task-specific models: one base + `tasks` adapters vs `tasks` full copies.

    Adapters are saved as peft keeps them (float32); full copies in `dtype` (default: the spec's).
    """
    arch = load_architecture(spec.model, spec.task, spec.num_labels, spec.attention)
    dbytes = DTYPE_BYTES[dtype or spec.dtype]
    base = arch.total_params * dbytes
    method = spec.method if spec.method in ("lora", "qlora", "dora") else "lora"
    names = adapter_targets(arch, method, spec.rank, spec.targets)
    adapter = (lora_params(arch.linear_shapes(), names, spec.rank, dora=method == "dora") + head_params(arch)) * 4
    return {"tasks": tasks, "base_bytes": base, "adapter_bytes": adapter,
            "base_plus_adapters_bytes": base + tasks * adapter, "full_copies_bytes": tasks * base,
            "ratio": (tasks * base) / (base + tasks * adapter)}
