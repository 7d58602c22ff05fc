"""Verdicts (does the plan fit a device, with how much headroom) and advice (what to change so it does).

    verdicts(plan, gpus)                    # [{"device", "memory_bytes", "fits", "headroom_bytes", ...}]
    advise(spec, memory_bytes)              # the cheapest changes that make it fit, each with its new total

Advice tries the changes in the order of what they cost the user, each on its own against the
original plan, and then all of them cumulatively in that order until the plan fits:
1. QLoRA (4-bit base) instead of full / LoRA / DoRA;
2. gradient checkpointing (about a third more compute, far fewer saved activations);
3. a smaller micro-batch with gradient accumulation (same effective batch, more steps);
4. a shorter sequence (changes what the model sees: last resort among the shape changes);
5. an 8-bit or paged optimizer;
6. a lower rank;
7. fewer target modules (attention only).
"""

from __future__ import annotations

from dataclasses import dataclass

from peftkit.plan.hardware import Device
from peftkit.plan.memory import MemoryPlan, TrainPlanSpec, plan_training


def must_fit(plan: MemoryPlan) -> int:
    """Bytes that must be on the device: the peak less paged optimizer states (they can spill to host)."""
    return plan.peak_bytes - plan.pageable_bytes


def verdict(plan: MemoryPlan, device: Device) -> dict:
    need = must_fit(plan)
    return {
        "device": device.name,
        "memory_bytes": device.memory_bytes,
        "needed_bytes": need,
        "fits": need <= device.memory_bytes,
        "headroom_bytes": device.memory_bytes - need,
        "headroom_percent": 100.0 * (device.memory_bytes - need) / device.memory_bytes,
    }


def verdicts(plan: MemoryPlan, devices: list[Device]) -> list[dict]:
    return [verdict(plan, d) for d in devices]


@dataclass
class Change:
    what: str
    spec: TrainPlanSpec
    peak_bytes: int
    fits: bool

    def to_dict(self) -> dict:
        return {"change": self.what, "peak_bytes": self.peak_bytes, "fits": self.fits,
                "spec": self.spec.model_dump()}


def candidate_changes(spec: TrainPlanSpec) -> list[tuple[str, dict]]:
    """(description, field updates) in the order of the module docstring; only those that apply."""
    out: list[tuple[str, dict]] = []
    if spec.method in ("full", "lora", "dora"):
        out.append(("QLoRA: 4-bit NF4 base, LoRA adapters", {"method": "qlora"}))
    if not spec.gradient_checkpointing and spec.method not in ("prompt", "prefix"):
        out.append(("gradient checkpointing", {"gradient_checkpointing": True}))
    if spec.batch > 1:
        b = spec.batch // 2 if spec.batch > 2 else 1
        accum = -(-spec.batch // b)
        out.append((f"micro-batch {b} with gradient accumulation {accum} (same effective batch)", {"batch": b}))
        if b > 1:
            out.append((f"micro-batch 1 with gradient accumulation {spec.batch}", {"batch": 1}))
    if spec.seq > 256:
        out.append((f"sequence {spec.seq // 2} tokens instead of {spec.seq}", {"seq": spec.seq // 2}))
    if spec.optimizer == "adamw":
        out.append(("8-bit AdamW (bitsandbytes)", {"optimizer": "adamw-8bit"}))
        out.append(("paged AdamW (states spill to host memory under pressure)", {"optimizer": "paged-adamw"}))
    if spec.method in ("lora", "qlora", "dora") and spec.rank > 4:
        out.append((f"rank {spec.rank // 2} instead of {spec.rank}", {"rank": spec.rank // 2}))
    if spec.method in ("lora", "qlora", "dora") and spec.targets != "attention":
        out.append(("target attention projections only", {"targets": "attention"}))
    return out


def advise(spec: TrainPlanSpec, memory_bytes: int) -> dict:
    """Each applicable change alone with its new total, and the cumulative path until the plan fits."""
    singles = []
    for what, update in candidate_changes(spec):
        new = spec.model_copy(update=update)
        plan = plan_training(new)
        singles.append(Change(what, new, plan.peak_bytes, must_fit(plan) <= memory_bytes))
    path = []
    current = spec
    for what, update in candidate_changes(spec):
        if path and path[-1].fits:
            break
        if update.get("optimizer") == "paged-adamw" and current.optimizer == "adamw-8bit":
            update = {"optimizer": "paged-adamw-8bit"}
        current = current.model_copy(update=update)
        plan = plan_training(current)
        path.append(Change(what, current, plan.peak_bytes, must_fit(plan) <= memory_bytes))
    return {"memory_bytes": memory_bytes, "single_changes": [c.to_dict() for c in singles],
            "cumulative": [c.to_dict() for c in path],
            "fits_after_all": bool(path) and path[-1].fits}
