"""PEFT methods: each module turns its spec into a peft model."""

from peftkit.methods.lora import linear_module_names, resolve_targets, wrap_with_lora

__all__ = ["linear_module_names", "resolve_targets", "wrap_with_lora"]
