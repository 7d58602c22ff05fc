"""Configuration of bottleneck adapters (Houlsby 2019, Pfeiffer 2020) in peft's config shape.

    config = BottleneckConfig(placement="houlsby", reduction_factor=16, task="sequence-classification")

A peft `PeftConfig` dataclass: every field carries `metadata={"help": ...}` and is checked in
`__post_init__`, so a bad value fails when the config is built, naming the field. `peft_type` is the
plain string "BOTTLENECK": peft 0.21's `PeftType` enum has no such member and we do not patch it
(see the package docstring).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from peft.config import PeftConfig
from peft.utils import TaskType

from peftkit.errors import RecipeError

PEFT_TYPE = "BOTTLENECK"
PLACEMENTS = ("houlsby", "pfeiffer")
NON_LINEARITIES = ("relu", "gelu", "silu", "tanh")
TASKS = {"causal-lm": TaskType.CAUSAL_LM, "sequence-classification": TaskType.SEQ_CLS}


@dataclass
class BottleneckConfig(PeftConfig):
    """Where bottleneck adapters go, how wide they are, and what else trains with them."""

    placement: str = field(
        default="pfeiffer",
        metadata={
            "help": "'houlsby': an adapter after the attention output projection and one after the feed-forward "
            "block of every layer; 'pfeiffer': only the one after the feed-forward block."
        },
    )
    reduction_factor: int = field(
        default=16,
        metadata={"help": "Hidden width d is reduced to d // reduction_factor inside each adapter."},
    )
    non_linearity: str = field(
        default="relu",
        metadata={"help": "Activation between the down and up projections: relu, gelu, silu or tanh."},
    )
    dropout: float = field(
        default=0.0,
        metadata={"help": "Dropout on the adapter's input (the wrapped sublayer's output), in [0, 1)."},
    )
    target_modules: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Explicit module names (suffixes, as in peft) whose outputs get an adapter; "
            "overrides `placement`. Each must match at least one linear layer."
        },
    )
    modules_to_save: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Modules trained fully and saved with the adapter, e.g. a classifier head. For "
            "task='sequence-classification' the head (BERT `classifier`, Llama `score`) is added when empty."
        },
    )
    task: str = field(
        default="causal-lm",
        metadata={"help": "'causal-lm' or 'sequence-classification' (sets peft's task_type)."},
    )

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise RecipeError(f"method.task: expected one of {', '.join(TASKS)}, got {self.task!r}")
        self.task_type = TASKS[self.task]
        super().__post_init__()
        self.peft_type = PEFT_TYPE
        if self.placement not in PLACEMENTS:
            raise RecipeError(f"method.placement: expected one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        if isinstance(self.reduction_factor, bool) or not isinstance(self.reduction_factor, int) or self.reduction_factor < 1:
            raise RecipeError(f"method.reduction_factor: expected an integer >= 1, got {self.reduction_factor!r}")
        if self.non_linearity not in NON_LINEARITIES:
            raise RecipeError(
                f"method.non_linearity: expected one of {', '.join(NON_LINEARITIES)}, got {self.non_linearity!r}"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise RecipeError(f"method.dropout: expected a number in [0, 1), got {self.dropout!r}")
        for name in ("target_modules", "modules_to_save"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str) or not all(isinstance(v, str) and v for v in value) or not value:
                raise RecipeError(f"method.{name}: expected a non-empty list of module names, got {value!r}")
            setattr(self, name, list(value))
