"""Activation memory of a training step, counted exactly by tracing the model on the meta device.

    trace = trace_activations(arch, adapter, batch=4, seq=2048, dtype="bfloat16", device="cuda")
    trace.saved_bytes(gradient_checkpointing=False)

What autograd keeps between forward and backward is whatever the operators save for backward.
Instead of a hand formula per architecture (which drifts with every attention or MLP variant), the
planner runs the real transformers forward on the meta device (shapes only, no compute, no memory)
inside `torch.autograd.graph.saved_tensors_hooks` and adds up the distinct storages saved, leaving
out parameters. The model is built with 3 layers; the last two give the bytes per layer (covering
models that alternate two layer kinds, like Gemma-2), and everything outside the layers (embeddings,
final norm, rotary tables, the first layer's extra shared tensors) is counted once.

One thing cannot be traced on the meta device: which fused attention kernel PyTorch would pick on
a real device (the meta device always takes the "math" path, which materialises batch × heads ×
seq² probabilities). So `scaled_dot_product_attention` is intercepted during the trace and replaced
by a stand-in that saves what the fused kernels save (query, key, value, output, log-sum-exp, the
mask if any) whenever the real device would use one: on CUDA always; on CPU only without dropout
(PyTorch's CPU flash kernel has no dropout, so e.g. BERT with attention dropout falls back to math).
`attention="eager"` is traced as is. Likewise dropout: the meta device runs CPU's dropout, which
keeps a float mask the size of its input; on CUDA the fused kernel keeps a bool mask, so for CUDA
plans `dropout` is replaced by a stand-in that saves a bool mask.

Gradient checkpointing (transformers' per-layer checkpointing) is derived from the same trace:
each layer then keeps only its input, and the backward pass recomputes one layer at a time.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from peftkit.plan.architecture import Architecture, build_meta_model

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
TRACE_LAYERS = 3


@dataclass(frozen=True)
class AdapterShape:
    """What of the method changes the traced graph: LoRA-style adapters or none (full / prompt)."""

    kind: str  # "full" | "lora" | "dora" | "frozen" (prompt/prefix tuning: base frozen, input needs grad)
    rank: int = 16
    targets: str | tuple[str, ...] = "all-linear"
    dropout: float = 0.0
    # None: peft's own layers (fp32 adapter weights; each layer copies its input to fp32 first).
    # A dtype: adapters computing in that dtype on their input as it comes, as under peftkit's autocast
    # (peftkit.train.adapter_memory.adapter_inputs_uncast).
    adapter_dtype: str | None = None
    # True: the frozen base linears keep their input for backward, as bitsandbytes' 4-bit matmul did before
    # 0.42 (traced by letting those weights require grad, so F.linear saves its input).
    base_saves_input: bool = False


@dataclass(frozen=True)
class ActivationTrace:
    """Bytes saved for backward by the traced small model, and how they extend to all layers.

    The first layer can save less than the others (with a frozen embedding its input needs no
    gradient, so e.g. its first norm saves nothing), hence: all layers = traced model + each
    untraced layer at the bytes of a later layer.
    """

    traced: int  # saved by the whole traced model (TRACE_LAYERS layers)
    traced_layers: int
    per_layer: int  # saved by one layer (mean over the traced layers after the first)
    outside: int  # saved outside the layers: embeddings, final norm, head input, shared tables
    layer_input: int  # one layer's input hidden states (what checkpointing keeps per layer)
    layers: int  # layers of the real model

    def saved_bytes(self, gradient_checkpointing: bool) -> int:
        if gradient_checkpointing:
            return self.outside + self.layers * self.layer_input
        return self.traced + (self.layers - self.traced_layers) * self.per_layer

    def recompute_bytes(self, gradient_checkpointing: bool) -> int:
        """Extra peak while backward recomputes one checkpointed layer."""
        return self.per_layer if gradient_checkpointing else 0


def trace_activations(arch: Architecture, adapter: AdapterShape, batch: int, seq: int, dtype: str,
                      device: str = "cuda") -> ActivationTrace:
    """Trace one training forward of `arch` with `adapter` at batch × seq in `dtype` (see module doc)."""
    targets = adapter.targets if isinstance(adapter.targets, str) else tuple(adapter.targets)
    key = (id(arch), AdapterShape(adapter.kind, adapter.rank, targets, adapter.dropout, adapter.adapter_dtype,
                                  adapter.base_saves_input), batch, seq, dtype, device)
    if key not in _TRACES:
        _TRACES[key] = _trace(arch, *key[1:])
    return _TRACES[key]


_TRACES: dict[tuple, ActivationTrace] = {}  # architectures are cached for the process, so ids are stable


def _trace(arch: Architecture, adapter: AdapterShape, batch: int, seq: int, dtype: str,
           device: str) -> ActivationTrace:
    import torch

    model = _small_model(arch, adapter, dtype)
    model.train()
    layers = _decoder_layers(model)
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    params |= {b.untyped_storage()._cdata for b in model.buffers()}
    saved: dict[int, int] = {}
    marks: list[tuple[int, int]] = []  # (saved bytes at layer start, at layer end)
    inputs: list[int] = []

    def pack(t):
        storage = t.untyped_storage()
        if storage._cdata not in params:
            saved.setdefault(storage._cdata, storage.nbytes())
        return t

    def pre(_module, args, kwargs):
        hidden = args[0] if args else kwargs.get("hidden_states")
        inputs.append(hidden.numel() * hidden.element_size())
        marks.append((sum(saved.values()), 0))

    def post(_module, _args, _out):
        marks[-1] = (marks[-1][0], sum(saved.values()))

    handles = [layer.register_forward_pre_hook(pre, with_kwargs=True) for layer in layers]
    handles += [layer.register_forward_hook(post) for layer in layers]
    compute_dtype = getattr(torch, dtype)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _FusedAttentionSaves(device):
            if adapter.kind == "frozen":
                embeds = torch.empty(batch, seq, arch.hidden, device="meta", dtype=compute_dtype, requires_grad=True)
                model(inputs_embeds=embeds)
            else:
                model(input_ids=torch.zeros(batch, seq, dtype=torch.long, device="meta"))
    finally:
        for h in handles:
            h.remove()
    per_layer_all = [end - start for start, end in marks]
    per_layer = sum(per_layer_all[1:]) // max(len(per_layer_all) - 1, 1)
    total = sum(saved.values())
    return ActivationTrace(traced=total, traced_layers=len(layers), per_layer=per_layer,
                           outside=total - sum(per_layer_all), layer_input=inputs[-1], layers=arch.layers)


def _small_model(arch: Architecture, adapter: AdapterShape, dtype: str):
    """`arch` with TRACE_LAYERS layers on the meta device, in `dtype`, with the adapter applied."""
    import torch

    values = arch.config.to_dict()
    values["num_hidden_layers"] = min(TRACE_LAYERS, arch.layers)
    values.pop("layer_types", None)  # recomputed for the new layer count
    config = type(arch.config).from_dict(values)
    config._attn_implementation = arch.config._attn_implementation
    model = build_meta_model(config, arch.task, arch.num_labels).to(getattr(torch, dtype))
    if adapter.kind in ("lora", "dora"):
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=adapter.rank, lora_alpha=2 * adapter.rank, lora_dropout=adapter.dropout,
            target_modules=list(adapter.targets) if isinstance(adapter.targets, tuple) else adapter.targets,
            use_dora=adapter.kind == "dora",
            task_type=TaskType.CAUSAL_LM if arch.task == "causal-lm" else TaskType.SEQ_CLS,
        ), low_cpu_mem_usage=True)
        if adapter.adapter_dtype:  # autocast runs the adapter matmuls in the compute dtype on uncast inputs
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.data = param.data.to(getattr(torch, adapter.adapter_dtype))
        if adapter.base_saves_input:
            for name, module in _decoder_layers(model).named_modules():
                if isinstance(module, torch.nn.Linear) and "lora_" not in name:
                    module.weight.requires_grad_(True)
    elif adapter.kind == "frozen":
        model.requires_grad_(False)
    return model


def _decoder_layers(model):
    """The ModuleList of transformer blocks (the longest ModuleList in the model)."""
    from torch import nn

    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    return max(lists, key=len)


class _FusedAttentionSaves:
    """During a meta trace, make attention (and on CUDA, dropout) save what the real kernels would."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        from torch.overrides import TorchFunctionMode

        device = self.device

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                import torch.nn.functional as F

                kwargs = kwargs or {}
                if func is F.dropout and device == "cuda":
                    p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
                    training = kwargs.get("training", args[2] if len(args) > 2 else True)
                    if training and p > 0:
                        return _fused_saves()[1].apply(args[0] if args else kwargs["input"])
                if func is F.scaled_dot_product_attention:
                    dropout = kwargs.get("dropout_p", args[4] if len(args) > 4 else 0.0)
                    if device == "cuda" or not dropout:
                        q, k, v = args[:3]
                        mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
                        return _fused_saves()[0].apply(q, k, v, mask)
                return func(*args, **kwargs)

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)


@functools.cache
def _fused_saves():
    import torch

    class FusedSaves(torch.autograd.Function):
        """Forward-only stand-in: output shape of attention; saves q, k, v, out, lse (and mask)."""

        @staticmethod
        def forward(ctx, q, k, v, mask):
            # The fused kernels write the output as [batch, seq, heads, dim] and return a transposed
            # view, so the model's `.transpose(1, 2).contiguous()` afterwards is free (no new storage).
            b, h, s, _ = q.shape
            out = q.new_empty(b, s, h, v.shape[-1]).transpose(1, 2)
            lse = q.new_empty(q.shape[:-1], dtype=torch.float32)  # [batch, heads, seq]
            ctx.save_for_backward(q, k, v, out, lse, *([mask] if mask is not None else []))
            return out

        @staticmethod
        def backward(ctx, grad):  # never run: the trace only does a forward
            raise NotImplementedError

    class FusedDropoutSaves(torch.autograd.Function):
        """CUDA's fused dropout keeps a bool mask for backward (CPU's keeps a scaled float mask)."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x.new_empty(x.shape, dtype=torch.bool))
            return torch.empty_like(x)

        @staticmethod
        def backward(ctx, grad):
            raise NotImplementedError

    return FusedSaves, FusedDropoutSaves
