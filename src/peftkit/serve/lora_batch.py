"""The mixed-adapter LoRA step: every row of a batch adds its own adapter's LoRA delta in one gather + matmul per layer.

    lora = LoraBatch()
    lora.sync(group.model, group.version)            # worker thread, before a forward: (re)builds the stacks
    index = lora.index(["served1", None, "served2"], tokens_per_row=1)   # None: the row takes the base path
    with lora.step(index):
        out = group.model(input_ids=ids, ...)         # every LoRA layer adds x @ A[slot]ᵀ · scale[slot] @ B[slot]ᵀ

Why: peft's `adapter_names` loops over the distinct adapters of a batch in every LoRA layer, so a decode
step's cost grows with the number of adapters in it. Here, as in vLLM's CPU path (punica's bgmv
shrink/expand in torch ops) and S-LoRA, the resident adapters' A and B are stacked per layer, padded to
the largest rank, and each token picks its slot:

    shrink  h[n] = (x[n] @ A[slot[n]]ᵀ) · scale[slot[n]]     A: [slots, r_max, in]   h: [tokens, r_max]
    expand  y[n] += h[n] @ B[slot[n]]ᵀ                       B: [slots, out, r_max]  y: [tokens, out]

A decode step (one token per row, rows of different adapters) gathers each token's A and B and runs one
batched matmul; a prefill chunk (many tokens of one adapter) runs a plain matmul per segment on views
of the stack, so nothing is gathered per token there. Rows whose slot is -1 take the base path only.

peft's `LoraLayer`s stay the storage: their `lora_A` / `lora_B` weights are made views into the stacks,
so a resident adapter costs its weights once (plus padding to the largest rank), and the base weights
are never copied. While serving, each layer's own LoRA path is switched off (peft's `enable_adapters(False)`:
its forward is then the base layer's) and a forward hook adds the batched delta. Dropout is the identity
at eval, so it is not applied. Loading, unloading or evicting an adapter bumps the group's version; the
next `sync` writes the new adapter into a free slot (or rebuilds the stacks when the rank or the number
of slots grows) between two steps, without stopping the server.

Only plain LoRA on `nn.Linear` layers is stacked. DoRA (its magnitude vector rescales each row's whole
weight), LoRA on embeddings or convolutions, `lora_bias`, 4-bit (QLoRA) layers and non-LoRA kinds keep
peft's own forward: `supported(model)` says False and the engine steps such a group with peft's
`adapter_names` (DoRA and non-LoRA kinds already run on models of their own; see serve/adapters.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

SEGMENT_MIN_TOKENS = 4  # a segment at least this long (on average) runs as a plain matmul, not a gather


@dataclass
class StepIndex:
    """Which adapter slot each token of a forward uses (batch metadata, as vLLM's punica wrapper keeps it)."""

    slots: torch.Tensor  # [tokens] long: the slot of each token's adapter, -1 = no adapter (base path)
    segments: list[tuple[int, int, int]]  # (start, end, slot): runs of consecutive tokens of one slot
    any_base: bool  # some token has no adapter


@dataclass
class _Stack:
    """One LoRA layer's adapters, stacked: slot s holds adapter s (zeros where it does not target this layer)."""

    a: torch.Tensor  # [slots, r_max, in]
    b: torch.Tensor  # [slots, out, r_max]
    scale: torch.Tensor  # [slots]: lora_alpha / r (or / sqrt(r) for rsLoRA)


class LoraBatch:
    """The stacks of one shared peft model, the hooks that add the batched delta, and the step's index."""

    def __init__(self):
        self.model = None  # the peft model the stacks were built for
        self.version: int | None = None
        self.layers: list = []  # peft lora.Linear modules, in model order
        self.stacks: list[_Stack] = []
        self.slot_of: dict[str, int] = {}  # peft adapter name -> slot
        self.slots = 0
        self.rank = 0
        self.hooks: list = []
        self.current: StepIndex | None = None

    # ------------------------------------------------------------------ which models it can step
    @staticmethod
    def supported(model) -> bool:
        """True when every LoRA layer of `model` is plain LoRA on nn.Linear (no DoRA, no lora_bias, not 4-bit)."""
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.lora import LoraLayer

        layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        if not layers:
            return False
        for m in layers:
            if type(m) is not LoraLinear or m.lora_variant or any(m.lora_bias.values()):
                return False
            if not isinstance(m.get_base_layer(), torch.nn.Linear):
                return False
        return True

    # ------------------------------------------------------------------ keeping the stacks in step with peft
    def sync(self, model, version: int, capacity: int = 0) -> None:
        """Make the stacks hold exactly the adapters in `model` (cheap when `version` is unchanged).

        Args:
            model: the group's peft model (LoRA layers checked with `supported`).
            version: the group's load/unload counter; the stacks are rebuilt lazily when it changes.
            capacity: slots to allocate at least (the server's `max_adapters`), so that loading one
                more adapter writes into a free slot instead of reallocating every stack.
        """
        if model is self.model and version == self.version:
            return
        from peft.tuners.lora import LoraLayer

        layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        names = list(dict.fromkeys(n for m in layers for n in m.lora_A))  # every adapter some layer holds
        rank = max((m.r[n] for m in layers for n in m.lora_A), default=0)
        same_layers = model is self.model and len(layers) == len(self.layers) and all(
            a is b for a, b in zip(layers, self.layers))
        kept = {n: s for n, s in self.slot_of.items() if n in names}
        if same_layers and rank <= self.rank and len(names) <= self.slots:
            for n, s in self.slot_of.items():
                if n not in kept:
                    self._clear(s)
            self.slot_of = kept
            for n in names:
                if n not in self.slot_of:
                    free = next(s for s in range(self.slots) if s not in self.slot_of.values())
                    self.slot_of[n] = free
                    self._write(n, free)
        else:
            self._rebuild(model, layers, names, rank, max(capacity, len(names)))
        for m in self.layers:
            m.enable_adapters(False)  # peft's forward is the base layer's (also for layers peft just created)
        self.version = version

    def release(self) -> None:
        """Give the layers back to peft: remove the hooks and switch their own LoRA path on again."""
        for handle in self.hooks:
            handle.remove()
        for m in self.layers:
            m.enable_adapters(True)
        self.__init__()

    def _rebuild(self, model, layers: list, names: list[str], rank: int, slots: int) -> None:
        """New stacks for every layer (old slots' weights are copied from peft's views before these replace them)."""
        for handle in self.hooks:
            handle.remove()
        self.model, self.layers, self.rank, self.slots = model, layers, rank, slots
        self.slot_of = {n: s for s, n in enumerate(names)}
        self.stacks, self.hooks = [], []
        for m in layers:
            base = m.get_base_layer()
            like = base.weight
            self.stacks.append(_Stack(a=like.new_zeros(slots, rank, m.in_features),
                                      b=like.new_zeros(slots, m.out_features, rank),
                                      scale=torch.zeros(slots, dtype=like.dtype, device=like.device)))
            self.hooks.append(m.register_forward_hook(self._hook(len(self.stacks) - 1)))
        for n, s in self.slot_of.items():
            self._write(n, s)

    def _write(self, name: str, slot: int) -> None:
        """Copy adapter `name` into `slot` of every layer and make peft's weights views of it."""
        for m, st in zip(self.layers, self.stacks):
            st.a[slot].zero_()
            st.b[slot].zero_()
            st.scale[slot] = 0
            if name not in m.lora_A:
                continue  # this adapter does not target this layer: its slot stays zero here
            r = m.r[name]
            a, b = m.lora_A[name].weight, m.lora_B[name].weight  # [r, in], [out, r]
            st.a[slot, :r].copy_(a.detach())
            st.b[slot, :, :r].copy_(b.detach())
            st.scale[slot] = float(m.scaling[name])
            a.data = st.a[slot, :r]
            b.data = st.b[slot, :, :r]

    def _clear(self, slot: int) -> None:
        for st in self.stacks:
            st.a[slot].zero_()
            st.b[slot].zero_()
            st.scale[slot] = 0

    # ------------------------------------------------------------------ one step
    def index(self, adapters: list[str | None], tokens_per_row: int | list[int], device=None) -> StepIndex:
        """The per-token slots of a forward whose row i names `adapters[i]` (a peft adapter name, or None
        for the base) and has `tokens_per_row` tokens (one number for every row, or one per row)."""
        counts = [tokens_per_row] * len(adapters) if isinstance(tokens_per_row, int) else list(tokens_per_row)
        segments: list[tuple[int, int, int]] = []
        flat: list[int] = []
        for name, count in zip(adapters, counts):
            slot = -1 if name is None else self.slot_of[name]
            start = len(flat)
            flat.extend([slot] * count)
            if segments and segments[-1][2] == slot and segments[-1][1] == start:
                segments[-1] = (segments[-1][0], start + count, slot)
            else:
                segments.append((start, start + count, slot))
        slots = torch.tensor(flat, dtype=torch.long, device=device)
        return StepIndex(slots=slots, segments=segments, any_base=-1 in flat)

    @contextmanager
    def step(self, index: StepIndex):
        """Forwards inside this block add each token's adapter delta as `index` says."""
        self.current = index
        try:
            yield
        finally:
            self.current = None

    def _hook(self, position: int):
        def hook(module, args, output):
            index = self.current
            if index is None:
                return output  # outside a step every row is a base row
            return output + _delta(args[0], self.stacks[position], index).to(output.dtype)

        return hook


def _delta(x: torch.Tensor, st: _Stack, index: StepIndex) -> torch.Tensor:
    """Each token's LoRA delta: x [..., in] -> [..., out]; tokens of slot -1 get zeros."""
    shape = x.shape
    flat = x.reshape(-1, shape[-1]).to(st.a.dtype)  # [tokens, in]
    if flat.shape[0] != index.slots.shape[0]:
        raise ValueError(f"LoRA step index covers {index.slots.shape[0]} tokens, the layer got {flat.shape[0]}")
    out = flat.new_zeros(flat.shape[0], st.b.shape[1])  # [tokens, out]
    if len(index.segments) * SEGMENT_MIN_TOKENS <= flat.shape[0]:
        # prefill: long runs of one adapter, a plain matmul per run on views of the stack
        for start, end, slot in index.segments:
            if slot >= 0:
                h = (flat[start:end] @ st.a[slot].T) * st.scale[slot]  # [run, r_max]
                out[start:end] = h @ st.b[slot].T  # [run, out]
        return out.reshape(*shape[:-1], -1)
    # decode: one token per row, rows of many adapters: gather each token's A and B, one batched matmul each
    rows = (index.slots >= 0).nonzero().squeeze(1) if index.any_base else None
    slots = index.slots if rows is None else index.slots[rows]
    xs = flat if rows is None else flat[rows]
    h = torch.bmm(st.a[slots], xs.unsqueeze(2)).squeeze(2) * st.scale[slots].unsqueeze(1)  # [n, r_max]
    y = torch.bmm(st.b[slots], h.unsqueeze(2)).squeeze(2)  # [n, out]
    if rows is None:
        return y.reshape(*shape[:-1], -1)
    out.index_copy_(0, rows, y)
    return out.reshape(*shape[:-1], -1)
