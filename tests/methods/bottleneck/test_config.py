"""BottleneckConfig: defaults, the task -> peft task_type mapping, and bad values naming their field."""

from __future__ import annotations

import pytest
from peft.utils import TaskType

from peftkit.errors import RecipeError
from peftkit.methods.bottleneck import BottleneckConfig


def test_defaults_and_peft_fields():
    config = BottleneckConfig()
    assert (config.placement, config.reduction_factor, config.non_linearity, config.dropout) == ("pfeiffer", 16, "relu", 0.0)
    assert config.peft_type == "BOTTLENECK"
    assert config.task_type == TaskType.CAUSAL_LM
    assert BottleneckConfig(task="sequence-classification").task_type == TaskType.SEQ_CLS


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("placement", "parallel"),
        ("reduction_factor", 0),
        ("reduction_factor", 2.5),
        ("reduction_factor", True),
        ("non_linearity", "swish"),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("target_modules", "o_proj"),
        ("target_modules", []),
        ("modules_to_save", [""]),
        ("task", "seq2seq"),
    ],
)
def test_bad_value_names_the_field(field, value):
    with pytest.raises(RecipeError, match=rf"method\.{field}: expected"):
        BottleneckConfig(**{field: value})


def test_every_field_has_help():
    import dataclasses

    own = {"placement", "reduction_factor", "non_linearity", "dropout", "target_modules", "modules_to_save", "task"}
    helps = {f.name: f.metadata.get("help") for f in dataclasses.fields(BottleneckConfig) if f.name in own}
    assert set(helps) == own and all(helps.values())
