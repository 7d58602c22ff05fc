"""What one GPU holds under each multi-GPU strategy: DDP, ZeRO-2, FSDP (FULL_SHARD) / ZeRO-3, CPU offload.

    sizes = {"weights": ..., "adapter / trainable copy": ..., "gradients": ..., "optimizer states": ...,
             "optimizer step temporary": ...}
    per_gpu, added, notes = shard(spec, sizes, layer_bytes, outside_bytes)

The micro-batch is per GPU, so activations, logits and the transients of one forward/backward do not
change with the number of GPUs; what changes is where the model state lives:

| strategy | weights | gradients, optimizer states | extra on each GPU |
| --- | --- | --- | --- |
| ddp   | full copy | full copy | gradient buckets (DDP copies every gradient into flat all-reduce buckets) |
| zero2 | full copy | 1/N each | – |
| fsdp, zero3 | 1/N each | 1/N each | the unit being computed and the one prefetched, unsharded (two transformer layers), plus the root unit (embeddings, head, final norm), which FSDP keeps unsharded between forward and backward |

On CUDA, FSDP / ZeRO-3 also make the caching allocator reserve more beyond what is allocated
(STREAM_RESERVE: the gathered weights come from another stream's pool of blocks).

`cpu_offload` moves to host memory what the engine offloads: FSDP's `offload_params` and ZeRO-3's
`offload_param` + `offload_optimizer` take weights, gradients and optimizer states (the optimizer
steps on the CPU, so no step temporary either); ZeRO-2's `offload_optimizer` takes gradients and
optimizer states. DDP offloads nothing (a PlanError).
"""

from __future__ import annotations

from peftkit.plan.hardware import PlanError

# FSDP / ZeRO-3 gather weights on a communication stream; PyTorch's caching allocator keeps a separate pool of
# blocks per stream, so reserved memory exceeds the allocated peak by more than on one stream. Measured by
# PyTorch's FSDP developers (Llama-2-7B LoRA, FSDP on 4 A100s, rate limiter on): 19.36 GB peak reserved vs
# 15.22 GB peak active, +27% (https://github.com/meta-llama/llama-cookbook/pull/41). Not fitted here.
STREAM_RESERVE = 0.27
SHARDED_STATE = ("zero2", "fsdp", "zero3")  # gradients and optimizer states split over the GPUs
SHARDED_WEIGHTS = ("fsdp", "zero3")  # weights split too
PREFETCHED_LAYERS = 2  # the layer being computed and the next one being gathered


def shard(spec, sizes: dict[str, int], layer_bytes: int, outside_bytes: int) -> tuple[dict[str, int], dict[str, int], list[str]]:
    """Per-GPU bytes of the model-state components in `sizes` for `spec.gpus` / `spec.strategy` /
    `spec.cpu_offload`, the components the strategy adds, and notes.

    Args:
        sizes: the one-GPU bytes of "weights", "adapter / trainable copy", "gradients", "optimizer states"
            and "optimizer step temporary".
        layer_bytes: one transformer layer's weights and trainable gradients as stored (what an FSDP unit
            all-gathers); outside_bytes: the weights outside the layers (embeddings, head, final norm).
    """
    n, strategy = spec.gpus, spec.strategy
    if spec.cpu_offload and strategy == "ddp":
        raise PlanError("--cpu-offload: DDP keeps everything on each GPU; use --strategy zero2, zero3 or fsdp")
    out = dict(sizes)
    added: dict[str, int] = {}
    notes: list[str] = []
    if strategy == "ddp":
        if n > 1:
            added["gradient buckets (DDP)"] = sizes["gradients"]
        return out, added, notes
    state = ("gradients", "optimizer states", "optimizer step temporary")
    model = ("weights", "adapter / trainable copy") if strategy in SHARDED_WEIGHTS else ()
    for key in state + model:
        out[key] = 0 if spec.cpu_offload else -(-sizes[key] // n)
    if strategy in SHARDED_WEIGHTS:
        added["unsharded layers (all-gather)"] = PREFETCHED_LAYERS * layer_bytes + outside_bytes
    where = "host memory" if spec.cpu_offload else f"1/{n} per GPU"
    what = "weights, gradients and optimizer states" if strategy in SHARDED_WEIGHTS else "gradients and optimizer states"
    notes.append(f"{strategy} over {n} GPU{'s' if n > 1 else ''}: {what} in {where}")
    if spec.cpu_offload:
        notes.append("CPU offload is planned optimistically: PEFT's FSDP-QLoRA example (Llama-2-70B, 2 GPUs) measured "
                     "19.6 GB per GPU where this planner gives 14.0 GB (benchmarks/plan_vs_published.py)")
    return out, added, notes


def stream_reserve(spec, allocated: int) -> int:
    """Bytes the caching allocator reserves beyond `allocated` because FSDP / ZeRO-3 allocate the gathered
    weights on their own stream (STREAM_RESERVE); 0 for DDP and ZeRO-2 and off CUDA."""
    if spec.device != "cuda" or spec.strategy not in SHARDED_WEIGHTS:
        return 0
    return int(STREAM_RESERVE * allocated)
