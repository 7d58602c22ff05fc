"""Memory of a training (or serving) run, component by component, before anything is loaded.

    plan = plan_training(TrainPlanSpec(model="llama-3.1-8b", method="qlora", batch=4, seq=2048))
    plan.peak_bytes, plan.components        # bytes per component, the predicted peak

Every term is counted from the architecture built on the meta device (peftkit.plan.architecture)
and the traced forward (peftkit.plan.activations), not from a rule of thumb:

- weights, by storage type: float32/bfloat16 as loaded; QLoRA's NF4 is 4 bits per weight plus one
  absmax per 64-weight block (fp32, or with double quantization uint8 absmax plus one fp32 per 256
  absmax and an fp32 offset), plus the 16-value NF4 code and 256-value absmax code per layer; the
  layers transformers keeps unquantized (`get_keys_to_not_convert`: output head, tied and last
  modules) stay in `dtype`;
- trainable parameters exactly for the method: LoRA is r·(d+k) per targeted d×k linear (A is r×k,
  B is d×r), DoRA adds one magnitude per output feature, a classifier's head is trained as a copy
  (peft's modules_to_save); peft keeps adapters in float32 (autocast_adapter_dtype);
- gradients (one per trainable parameter, its dtype); optimizer states: AdamW 2 states in the
  parameter's dtype, 8-bit AdamW 1 byte per state plus an fp32 absmax per 256 (tensors under 4096
  elements keep fp32 states), paged variants the same bytes but pageable to host memory;
- activations saved for backward (traced), with or without gradient checkpointing;
- logits: batch × seq × vocab, upcast to fp32 for the loss: log-softmax output, its gradient and
  the logits' gradient are alive together at the start of backward (3 × 4 bytes, +2 when the model
  computes in 16-bit); on peftkit's path (`path="peftkit"`) only LOSS_CHUNK positions at a time
  (the labelled-positions loss, peftkit.train.loss), and the LoRA layers keep less (traced with
  inputs uncast under autocast and the dropout fused into lora_A; see `adapter_shape`); with
  `max_batch_tokens` a batch above it is planned as its largest row slice (`row_slice`);
- scratch: one checkpointed layer recomputed, one dequantized 4-bit weight, DoRA's weight norm,
  AdamW's temporary (all trainable parameters for the multi-tensor CUDA path, the largest tensor for
  the per-tensor CPU path);
- runtime: a constant per device (below); for DPO the reference model (a second copy of the weights
  for full fine-tuning; with adapters the base model with adapters disabled is the reference);
- QLoRA under 16-bit compute, where peft's prepare_model_for_kbit_training has cast the unquantized
  layers (embeddings, head, norms) to float32 (`kbit_upcast`): those weights in float32, the head's
  16-bit cast kept for its backward, and a float32 residual stream (each checkpointed layer input in
  float32); `bnb_saves_inputs` plans bitsandbytes < 0.42, whose 4-bit matmul kept its input;
- CUDA allocator reserve: the caching allocator keeps the blocks of the largest transient (one fp32
  copy of the logits, or a dequantized weight) reserved after they are freed, and they are not reused
  by the differently sized allocations that follow; `allocated_bytes` is the peak without it and
  without the runtime (what torch.cuda.max_memory_allocated reports);
- per GPU of several (`gpus`, `strategy`, `cpu_offload`: peftkit.plan.sharding): what DDP, ZeRO-2,
  FSDP and ZeRO-3 shard or offload, the layers they gather, DDP's gradient buckets, the reserve of a
  second CUDA stream; `activation_offload` keeps checkpointed layer inputs in host memory.

The peak is the larger of two moments: the start of backward (weights, optimizer states, saved
activations, the largest transient, the output head's gradient) and the optimizer step (weights,
optimizer states, gradients, the optimizer's temporary).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import Field, field_validator

from peftkit.plan.activations import DTYPE_BYTES, AdapterShape, _decoder_layers, trace_activations
from peftkit.plan.architecture import Architecture, load_architecture
from peftkit.plan.hardware import PlanError
from peftkit.plan.sharding import shard, stream_reserve
from peftkit.recipe import Spec

Method = Literal["full", "lora", "qlora", "dora", "prompt", "prefix"]
Optimizer = Literal["adamw", "adamw-8bit", "paged-adamw", "paged-adamw-8bit"]
METHODS: tuple[str, ...] = ("full", "lora", "qlora", "dora", "prompt", "prefix")
OPTIMIZERS: tuple[str, ...] = ("adamw", "adamw-8bit", "paged-adamw", "paged-adamw-8bit")

GiB = 1024**3
# Runtime overhead, one constant per device kind, never fitted per configuration:
# - cuda: the CUDA context and cuBLAS/cuDNN workspaces that live outside torch's allocator
#   (commonly 0.3-0.6 GiB; torch.cuda.max_memory_allocated does not include them). An assumption:
#   no GPU was available to measure it when this was written.
# - cpu: measured once with `benchmarks/plan_vs_measured.py --calibrate`: the resident memory a
#   training step adds for a tiny model (2 layers, 64 wide), where the tensor terms are 2-3 MiB, i.e.
#   autograd, oneDNN and thread-pool state: 38.6 MiB (full) and 48.5 MiB (LoRA), stable over 3
#   runs; the constant is their mean.
RUNTIME_BYTES = {"cuda": 512 * 1024**2, "cpu": 44 * 1024**2}
NF4_BLOCK = 64  # weights per absmax
DQ_BLOCK = 256  # absmax values per second-level fp32 scale (double quantization)
ADAM8_BLOCK = 256  # bitsandbytes blockwise 8-bit optimizer states
ADAM8_MIN_SIZE = 4096  # smaller tensors keep 32-bit states in bitsandbytes
LOSS_CHUNK = 128  # peftkit's labelled-positions loss: positions per chunk of logits (train.loss_chunk default)


class TrainPlanSpec(Spec):
    """What to plan: a model, a method and the shape of one optimizer micro-step."""

    model: str = Field(description="Built-in, catalog family (`peftkit plan --list-models`), folder or hub id.")
    task: Literal["causal-lm", "sequence-classification"] | None = Field(
        None, description="Default: the model's own (causal LM, or classifier for encoders).")
    num_labels: int = Field(2, gt=0, description="Classes of a sequence classifier.")
    method: Method = "lora"
    rank: int = Field(16, gt=0, description="LoRA/DoRA/QLoRA rank r.")
    targets: str | list[str] = Field("all-linear", description="`all-linear`, `attention`, `attention-all`, or module names.")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapter input (it keeps a copy).")
    virtual_tokens: int = Field(20, gt=0, description="Prompt/prefix tuning: virtual tokens.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "bfloat16", description="Storage and compute dtype of the (unquantized) weights.")
    double_quant: bool = Field(True, description="QLoRA: quantize the absmax constants too.")
    batch: int = Field(1, gt=0, description="Micro-batch size (sequences per forward).")
    seq: int = Field(512, gt=0, description="Tokens per sequence.")
    gradient_checkpointing: bool = False
    optimizer: Optimizer = "adamw"
    attention: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    objective: Literal["sft", "dpo"] = Field("sft", description="dpo: chosen + rejected per example, a reference model.")
    device: Literal["cuda", "cpu"] = Field("cuda", description="Kind of device the plan is for (runtime overhead, kernels).")
    max_batch_tokens: int | None = Field(
        None, gt=0, description="peftkit path: a batch of more tokens runs in row slices of at most this many, one "
                                "backward each (`peftkit train` logs its budget as metrics' long_batch_tokens); a "
                                "single row longer than it is checkpointed. None: the whole batch at once.")
    path: Literal["stock", "peftkit"] = Field(
        "stock", description="stock: a plain transformers/peft training loop (full logits, peft's LoRA layers); "
                             "peftkit: `peftkit train`'s own (LM head only at labelled positions in chunks, adapter "
                             "inputs not copied to fp32 under autocast, LoRA dropout fused into lora_A).")
    kbit_upcast: bool | None = Field(
        None, description="QLoRA: peft's prepare_model_for_kbit_training casts the layers left unquantized "
                          "(embeddings, head, norms) to float32, as `peftkit train` and stock peft/TRL loops do. "
                          "None: yes, except where FSDP / ZeRO-3 shard the model (one storage dtype for all).")
    bnb_saves_inputs: bool = Field(
        False, description="bitsandbytes before 0.42 kept each 4-bit matmul's input for backward (ctx.tensors = "
                           "(A, B)); 0.42 and later do not. For comparisons with measurements made then.")
    gpus: int = Field(1, gt=0, description="Data-parallel processes (GPUs), all nodes together.")
    strategy: Literal["ddp", "fsdp", "zero2", "zero3"] = Field(
        "ddp", description="What is sharded over the GPUs: ddp nothing; zero2 gradients and optimizer states; "
                           "fsdp (FULL_SHARD) and zero3 weights, gradients and optimizer states.")
    cpu_offload: bool = Field(
        False, description="fsdp / zero3: weights, gradients and optimizer states live in host memory; zero2: "
                           "gradients and optimizer states (DeepSpeed offload_optimizer).")
    activation_offload: bool = Field(
        False, description="With gradient checkpointing: the checkpointed layer inputs wait in host memory "
                           "(two layers' worth stay on the device: the one in use and the one being copied).")

    @field_validator("targets")
    @classmethod
    def _targets(cls, v):
        if isinstance(v, str) and v not in ("all-linear", "attention", "attention-all"):
            return [t.strip() for t in v.split(",") if t.strip()]
        return v


@dataclass
class MemoryPlan:
    """Bytes per component, the two candidate peaks, and the predicted peak."""

    spec: dict
    architecture: dict
    params: dict  # total / trainable / quantized parameter counts
    weights: dict[str, int]  # storage type -> bytes
    components: dict[str, int]
    phases: dict[str, int]  # "start of backward", "optimizer step"
    peak_bytes: int
    pageable_bytes: int = 0  # paged optimizer states: can move to host memory under pressure
    allocated_bytes: int = 0  # the peak as torch.cuda.max_memory_allocated counts it: no runtime, no allocator reserve
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def human(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _architecture(spec: TrainPlanSpec) -> Architecture:
    return load_architecture(spec.model, spec.task, spec.num_labels, spec.attention)


def adapter_targets(arch: Architecture, method: str, rank: int, targets) -> list[str]:
    """Names of the linear layers peft would wrap (peft itself decides, on the meta model)."""
    key = (id(arch), rank, targets if isinstance(targets, str) else tuple(targets))
    if key not in _TARGETS:
        _TARGETS[key] = _adapter_targets(arch, rank, targets)
    return _TARGETS[key]


_TARGETS: dict[tuple, list[str]] = {}


def resolved_targets(arch: Architecture, targets) -> str | tuple[str, ...]:
    """`all-linear`, or the module names a preset or list stands for in this model (checked)."""
    from peftkit.methods.lora import resolve_targets
    from peftkit.recipe import LoraSpec

    resolved = resolve_targets(arch.meta_model(), LoraSpec(target_modules=targets))
    return resolved if isinstance(resolved, str) else tuple(resolved)


def _adapter_targets(arch: Architecture, rank: int, targets) -> list[str]:
    import copy

    from peft import LoraConfig, TaskType, get_peft_model

    model = copy.deepcopy(arch.meta_model())
    resolved = resolved_targets(arch, targets)
    resolved = resolved if isinstance(resolved, str) else list(resolved)
    task = TaskType.CAUSAL_LM if arch.task == "causal-lm" else TaskType.SEQ_CLS
    peft_model = get_peft_model(model, LoraConfig(r=rank, target_modules=resolved, task_type=task),
                                low_cpu_mem_usage=True)
    return sorted(peft_model.targeted_module_names)


def lora_params(shapes: dict[str, tuple[int, int]], names: list[str], rank: int, dora: bool = False) -> int:
    """r·(d+k) per targeted d×k linear (A: r×k, B: d×r), plus d magnitudes each for DoRA."""
    return sum(rank * (shapes[n][0] + shapes[n][1]) + (shapes[n][0] if dora else 0) for n in names)


def head_params(arch: Architecture) -> int:
    """A classifier's head (peft trains a copy of it: modules_to_save `classifier` / `score`)."""
    if arch.task != "sequence-classification":
        return 0
    model = arch.meta_model()
    return sum(p.numel() for n, m in model.named_children() if n in ("classifier", "score") for p in m.parameters())


def quantized_linears(arch: Architecture) -> dict[str, tuple[int, int]]:
    """The linear layers bitsandbytes 4-bit replaces (transformers keeps the head etc. unquantized)."""
    from transformers.quantizers.base import get_keys_to_not_convert

    skip = get_keys_to_not_convert(arch.meta_model())
    return {n: s for n, s in arch.linear_shapes().items() if not any(n == k or n.endswith("." + k) or
                                                                     n.startswith(k + ".") for k in skip)}


def nf4_bytes(numel: int, double_quant: bool) -> int:
    """Packed NF4 weights plus their block constants (bitsandbytes layout)."""
    blocks = -(-numel // NF4_BLOCK)
    packed = (numel + 1) // 2
    if double_quant:
        constants = blocks + 4 * -(-blocks // DQ_BLOCK) + 4 + 4 * 256  # uint8 absmax, fp32 scales, offset, code
    else:
        constants = 4 * blocks
    return packed + constants + 4 * 16  # the 16-value NF4 code


def optimizer_bytes(sizes: list[tuple[int, int]], optimizer: str) -> int:
    """Optimizer states for trainable tensors given as (numel, bytes per element)."""
    if optimizer in ("adamw", "paged-adamw"):
        return sum(2 * n * b for n, b in sizes)
    total = 0
    for n, _ in sizes:
        total += 2 * (n + 4 * -(-n // ADAM8_BLOCK)) if n >= ADAM8_MIN_SIZE else 2 * 4 * n
    return total


def weight_bytes(arch: Architecture, spec: TrainPlanSpec) -> tuple[dict[str, int], int, list[str]]:
    """Bytes of the base weights by storage type, the quantized parameter count, and notes."""
    dbytes = DTYPE_BYTES[spec.dtype]
    buffers = sum(b.numel() * b.element_size() for b in arch.meta_model().buffers())
    weights: dict[str, int] = {}
    notes: list[str] = []
    quantized = quantized_linears(arch) if spec.method == "qlora" else {}
    q_numel = sum(d * k for d, k in quantized.values())
    if quantized:
        weights["nf4 (4-bit + block constants)"] = sum(nf4_bytes(d * k, spec.double_quant) for d, k in quantized.values())
    if quantized and dbytes < 4 and kbit_upcast(spec):  # incl. biases of quantized layers
        weights["float32 (unquantized layers, kbit upcast)"] = (arch.total_params - q_numel) * 4 + buffers
        notes.append(f"peft's prepare_model_for_kbit_training casts the unquantized layers (embeddings, head, "
                     f"norms) from {spec.dtype} to float32: +{(arch.total_params - q_numel) * (4 - dbytes) / 2**30:.2f} GiB")
    else:
        weights[spec.dtype] = (arch.total_params - q_numel) * dbytes + buffers
    return weights, q_numel, notes


def kbit_upcast(spec: TrainPlanSpec) -> bool:
    """Whether QLoRA's unquantized layers are float32 (prepare_model_for_kbit_training): yes unless FSDP /
    ZeRO-3 shard the model, which needs one storage dtype (bnb_4bit_quant_storage = the model's dtype)."""
    if spec.kbit_upcast is not None:
        return spec.kbit_upcast
    return not (spec.gpus > 1 and spec.strategy in ("fsdp", "zero3"))


def trainable_tensors(arch: Architecture, spec: TrainPlanSpec) -> tuple[list[tuple[int, int]], list[str]]:
    """(numel, bytes per element) of every trainable tensor of the method, and notes."""
    dbytes = DTYPE_BYTES[spec.dtype]
    if spec.method == "full":
        return [(p.numel(), dbytes) for p in arch.meta_model().parameters()], []
    if spec.method in ("lora", "qlora", "dora"):
        shapes = arch.linear_shapes()
        tensors: list[tuple[int, int]] = []
        for name in adapter_targets(arch, spec.method, spec.rank, spec.targets):
            d, k = shapes[name]
            tensors += [(spec.rank * k, 4), (d * spec.rank, 4)] + ([(d, 4)] if spec.method == "dora" else [])
        head = head_params(arch)  # a trained copy in the model's dtype
        return tensors + ([(head, dbytes)] if head else []), []
    # prompt / prefix tuning (rough: the virtual tokens' embeddings)
    per_token = arch.hidden if spec.method == "prompt" else 2 * arch.layers * arch.kv_heads * arch.head_dim
    return [(spec.virtual_tokens * per_token, 4)], [
        f"{spec.method} tuning is planned roughly: activations of seq + {spec.virtual_tokens} tokens"]


def adapter_shape(spec: TrainPlanSpec, kind: str, targets, compute: str) -> AdapterShape:
    """What the activation trace applies for the method on `spec.path`.

    On peftkit's path LoRA dropout is fused into lora_A and its mask redrawn in backward, which keeps
    what no dropout keeps (1.54 vs 1.55 GiB on smollm2, benchmarks/lora_activation_memory.py), so it
    is traced without dropout; DoRA layers keep theirs. Under autocast (compute below fp32) adapters
    take their inputs uncast.
    """
    if kind not in ("lora", "dora"):
        return AdapterShape(kind)
    saves = spec.method == "qlora" and spec.bnb_saves_inputs
    if spec.path != "peftkit":
        return AdapterShape(kind, spec.rank, targets, spec.lora_dropout, base_saves_input=saves)
    return AdapterShape(kind, spec.rank, targets, spec.lora_dropout if kind == "dora" else 0.0,
                        adapter_dtype=compute if compute != "float32" else None, base_saves_input=saves)


def row_slice(spec: TrainPlanSpec, seqs: int, seq_len: int) -> tuple[int, bool]:
    """Rows one forward/backward holds, and whether they are checkpointed (peftkit.train.long_batches):
    on peftkit's path a batch above `max_batch_tokens` runs in slices of that many tokens, one row at least,
    and a row longer than the budget is checkpointed."""
    budget = spec.max_batch_tokens if spec.path == "peftkit" else None
    if budget is None or seqs * seq_len <= budget:
        return seqs, spec.gradient_checkpointing
    return max(1, budget // seq_len), spec.gradient_checkpointing or seq_len > budget


def plan_training(spec: TrainPlanSpec) -> MemoryPlan:
    """Predict the peak memory of one training step of `spec` (see the module docstring)."""
    arch = _architecture(spec)
    model = arch.meta_model()
    dbytes = DTYPE_BYTES[spec.dtype]
    total_params = arch.total_params
    weights, q_numel, notes = weight_bytes(arch, spec)
    quantized = quantized_linears(arch) if q_numel else {}

    trainable, more_notes = trainable_tensors(arch, spec)
    notes += more_notes
    adapter_bytes = 0 if spec.method == "full" else sum(n * b for n, b in trainable)
    trainable_params = sum(n for n, _ in trainable)
    grads = sum(n * b for n, b in trainable)
    states = optimizer_bytes(trainable, spec.optimizer)
    if spec.optimizer in ("adamw", "paged-adamw"):
        # multi-tensor (CUDA): sqrt of all second moments at once; per-tensor (CPU): the largest one
        step_scratch = grads if spec.device == "cuda" else max(n * b for n, b in trainable)
    else:
        step_scratch = 0

    # ---- activations (traced), logits, transients
    compute = spec.dtype
    kind = {"full": "full", "lora": "lora", "qlora": "lora", "dora": "dora"}.get(spec.method, "frozen")
    seqs = spec.batch * (2 if spec.objective == "dpo" else 1)
    seq_len = spec.seq + (spec.virtual_tokens if kind == "frozen" else 0)
    targets = resolved_targets(arch, spec.targets) if kind in ("lora", "dora") else ""
    piece, checkpointed = row_slice(spec, seqs, seq_len)
    if piece < seqs:
        notes.append(f"row slices: the {seqs} x {seq_len}-token batch is above max_batch_tokens={spec.max_batch_tokens} "
                     f"and runs {piece} row{'s' if piece > 1 else ''} at a time"
                     + (", each row checkpointed (longer than the budget)" if checkpointed else ""))
    trace = trace_activations(arch, adapter_shape(spec, kind, targets, compute), piece, seq_len, compute, spec.device)
    activations = trace.saved_bytes(checkpointed)
    if arch.task == "causal-lm":
        rows = piece * seq_len
        if spec.path == "peftkit" and kind != "frozen":  # labelled positions only, LOSS_CHUNK rows of logits at once
            rows = min(rows, LOSS_CHUNK)
        logits = rows * arch.vocab * (12 if compute == "float32" else 14)
    else:
        logits = seqs * arch.num_labels * 12
    recompute = trace.recompute_bytes(checkpointed)
    dequant = max((d * k for d, k in quantized.values()), default=0) * dbytes
    if spec.method == "dora":
        shapes = arch.linear_shapes()
        dora_scratch = 2 * max(shapes[n][0] * shapes[n][1] for n in adapter_targets(arch, "dora", spec.rank, spec.targets)) * 4
    else:
        dora_scratch = 0
    transient = max(logits, recompute, dequant, dora_scratch)
    head_grad = 0
    if spec.method == "full" and arch.task == "causal-lm":
        head_grad = model.get_output_embeddings().weight.numel() * dbytes
    reference = total_params * dbytes if (spec.objective == "dpo" and spec.method == "full") else 0
    if spec.objective == "dpo" and spec.method != "full":
        notes.append("DPO with an adapter: the reference is the base model with adapters disabled (no copy)")
    runtime = RUNTIME_BYTES[spec.device]

    # ---- QLoRA with float32 unquantized layers (prepare_model_for_kbit_training) under 16-bit autocast
    upcast = bool(quantized) and dbytes < 4 and kbit_upcast(spec)
    # the float32 head is cast to the compute dtype for its matmul and that copy is kept for its backward
    head_cast = model.get_output_embeddings().weight.numel() * dbytes if (upcast and arch.task == "causal-lm") else 0
    # float32 embeddings make the residual stream float32, so each checkpointed layer input is too
    residual = trace.layers * trace.layer_input * (4 - dbytes) // dbytes if (upcast and checkpointed) else 0
    if spec.activation_offload:
        if not checkpointed:
            raise PlanError("--activation-offload moves checkpointed layer inputs to host memory: it needs "
                            "gradient checkpointing (--gradient-checkpointing)")
        kept = trace.outside + 2 * trace.layer_input * (1 + (residual > 0) * (4 - dbytes) // dbytes)
        notes.append(f"activation offload: {human(activations + residual - kept)} of checkpointed layer inputs in host memory")
        activations, residual = kept, 0
    # CUDA's caching allocator keeps freed blocks reserved; the blocks of the largest transient (one fp32 copy of
    # the logits, or a dequantized weight) are not reused by the differently sized allocations after them
    allocator = 0
    if spec.device == "cuda":
        allocator = max(logits * 4 // (12 if compute == "float32" else 14) if arch.task == "causal-lm" else 0, dequant)

    # ---- what one GPU holds under the multi-GPU strategy
    layers_numel = sum(p.numel() for p in _decoder_layers(model).parameters())
    outside = (total_params - layers_numel) * (4 if upcast else dbytes)
    layer_bytes = (sum(weights.values()) - outside + grads) // arch.layers
    state, added, more_notes = shard(spec, {"weights": sum(weights.values()), "adapter / trainable copy": adapter_bytes,
                                            "gradients": grads, "optimizer states": states,
                                            "optimizer step temporary": step_scratch}, layer_bytes, outside)
    notes += more_notes
    if state["weights"] != sum(weights.values()):
        total_w = sum(weights.values())
        weights = {k: v * state["weights"] // total_w for k, v in weights.items()}
    adapter_bytes, grads, states, step_scratch = (state["adapter / trainable copy"], state["gradients"],
                                                  state["optimizer states"], state["optimizer step temporary"])
    gathered = added.get("unsharded layers (all-gather)", 0)
    buckets = added.get("gradient buckets (DDP)", 0)

    weights_total = sum(weights.values())
    static = weights_total + adapter_bytes + states + reference
    backward = static + activations + residual + transient + head_grad + head_cast + gathered
    step = static + grads + step_scratch + buckets
    allocator += stream_reserve(spec, max(backward, step))
    backward, step = backward + allocator, step + allocator
    components = {
        **{f"weights {k}": v for k, v in weights.items()},
        "adapter / trainable copy": adapter_bytes,
        "gradients": grads,
        "optimizer states": states,
        "optimizer step temporary": step_scratch,
        "activations": activations,
        "float32 residual stream (checkpoints)": residual,
        "logits (loss, fp32)": logits,
        "checkpoint recompute": recompute,
        "4-bit dequantized weight": dequant,
        "DoRA weight norm": dora_scratch,
        "output head gradient": head_grad,
        "output head cast (kept for backward)": head_cast,
        "reference model (DPO)": reference,
        "unsharded layers (all-gather)": gathered,
        "gradient buckets (DDP)": buckets,
        "CUDA allocator reserve": allocator,
        "runtime": runtime,
    }
    arch_info = {"name": arch.name, "source": arch.source, "task": arch.task, "model_type": arch.config.model_type,
                 "layers": arch.layers, "hidden": arch.hidden, "vocab": arch.vocab, "kv_heads": arch.kv_heads,
                 "head_dim": arch.head_dim, "attention": arch.config._attn_implementation}
    return MemoryPlan(
        spec=spec.model_dump(), architecture=arch_info,
        params={"total": total_params, "trainable": trainable_params, "quantized": q_numel,
                "trainable_percent": 100.0 * trainable_params / total_params},
        weights=weights, components=components,
        phases={"start of backward": backward + runtime, "optimizer step": step + runtime},
        peak_bytes=max(backward, step) + runtime,
        pageable_bytes=states if spec.optimizer.startswith("paged") else 0,
        allocated_bytes=max(backward, step) - allocator,
        notes=notes,
    )


# ----------------------------------------------------------------- serving
class ServePlanSpec(Spec):
    """Serving: one base model, KV cache for concurrent sequences, adapter slots."""

    model: str
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    quantized: bool = Field(False, description="Serve the base in NF4 (4-bit).")
    double_quant: bool = Field(True, description="NF4: quantize the absmax constants too.")
    context: int = Field(4096, gt=0, description="Tokens per sequence (prompt + generated).")
    concurrent: int = Field(8, gt=0, description="Sequences in flight at once.")
    adapters: int = Field(4, ge=0, description="Adapter slots resident on the device.")
    rank: int = Field(16, gt=0)
    targets: str | list[str] = "all-linear"
    device: Literal["cuda", "cpu"] = "cuda"


def plan_serving(spec: ServePlanSpec) -> MemoryPlan:
    """Weights + KV cache per token × concurrent sequences + adapter slots + runtime."""
    arch = load_architecture(spec.model, "causal-lm")
    dbytes = DTYPE_BYTES[spec.dtype]
    total = arch.total_params
    weights: dict[str, int] = {}
    q = quantized_linears(arch) if spec.quantized else {}
    q_numel = sum(d * k for d, k in q.values())
    if q:
        weights["nf4 (4-bit + block constants)"] = sum(nf4_bytes(d * k, spec.double_quant) for d, k in q.values())
    weights[spec.dtype] = (total - q_numel) * dbytes
    kv_per_token = 2 * arch.layers * arch.kv_heads * arch.head_dim * dbytes
    kv = kv_per_token * spec.context * spec.concurrent
    names = adapter_targets(arch, "lora", spec.rank, spec.targets)
    adapter = lora_params(arch.linear_shapes(), names, spec.rank) * dbytes
    logits = spec.concurrent * arch.vocab * 4  # last position per sequence, fp32 sampling
    runtime = RUNTIME_BYTES[spec.device]
    components = {**{f"weights {k}": v for k, v in weights.items()}, "KV cache": kv,
                  "adapter slots": adapter * spec.adapters, "sampling logits": logits, "runtime": runtime}
    peak = sum(components.values())
    return MemoryPlan(
        spec=spec.model_dump(),
        architecture={"name": arch.name, "source": arch.source, "layers": arch.layers, "kv_heads": arch.kv_heads,
                      "head_dim": arch.head_dim, "vocab": arch.vocab},
        params={"total": total, "adapter": adapter // dbytes, "kv_bytes_per_token": kv_per_token},
        weights=weights, components=components, phases={"serving": peak}, peak_bytes=peak,
    )
