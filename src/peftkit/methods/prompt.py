"""Prefix tuning and prompt tuning through peft, for causal LMs and sequence classifiers.

    model = wrap(base, PromptSpec(num_virtual_tokens=20), task="causal-lm")
    model.generate(**enc)         # peft prepends the virtual tokens / prefix keys at generation too

- prompt tuning (`kind: prompt`): `num_virtual_tokens` trained input embeddings are prepended to
  every input; `init_text` starts them from that text's token embeddings (tokenizer of the base
  model's folder).
- prefix tuning (`kind: prefix`): trained key/value vectors for `num_virtual_tokens` positions in
  every attention layer (peft passes them as past_key_values); `projection` reparameterises them
  through a small MLP.

Neither changes a base weight, so neither can be merged. The model must accept
`inputs_embeds` (prompt) or `past_key_values` (prefix); a model whose backbone takes no cache
(e.g. DistilBERT) cannot take a prefix, and that is a RecipeError saying so.
"""

from __future__ import annotations

import inspect

from torch import nn

from peftkit.errors import RecipeError
from peftkit.methods.lora import peft_task_type
from peftkit.recipe import PrefixSpec, PromptSpec


def wrap(model: nn.Module, spec: PrefixSpec | PromptSpec, task: str):
    """Wrap `model` in a prompt-learning PeftModel (the base is frozen in place)."""
    from peft import get_peft_model

    if spec.kind == "prefix":
        _check_prefix_supported(model)
        from peft import PrefixTuningConfig

        config = PrefixTuningConfig(task_type=peft_task_type(task), num_virtual_tokens=spec.num_virtual_tokens,
                                    prefix_projection=spec.projection)
    else:
        from peft import PromptTuningConfig, PromptTuningInit

        text = {}
        if spec.init_text is not None:
            text = {"prompt_tuning_init": PromptTuningInit.TEXT, "prompt_tuning_init_text": spec.init_text,
                    "tokenizer_name_or_path": model.config._name_or_path}
        # token_dim from the input embeddings: peft reads config.hidden_size, which some configs name otherwise
        config = PromptTuningConfig(task_type=peft_task_type(task), num_virtual_tokens=spec.num_virtual_tokens,
                                    token_dim=model.get_input_embeddings().embedding_dim, **text)
    try:
        return get_peft_model(model, config)
    except (OSError, ValueError) as exc:
        raise RecipeError(f"method: {spec.kind} tuning cannot wrap {type(model).__name__}: {exc}") from None


def _takes(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def _passes_kwargs(fn) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())


def _check_prefix_supported(model: nn.Module) -> None:
    """A prefix reaches attention as past_key_values; the model (or the backbone it passes **kwargs to) must take them.

    BertForSequenceClassification names no past_key_values but forwards **kwargs to BertModel, which
    does; DistilBERT's backbone takes none, so a prefix would be silently dropped there.
    """
    backbone = getattr(model, "base_model", model)
    reaches = _takes(model.forward, "past_key_values") or (
        _passes_kwargs(model.forward) and backbone is not model and _takes(backbone.forward, "past_key_values"))
    if not reaches:
        raise RecipeError(
            f"method.kind: prefix tuning passes its trained keys/values as past_key_values, and "
            f"{type(model).__name__} ({model.config.model_type}) takes no past_key_values; "
            f"use kind: prompt (virtual input tokens) or a LoRA-family method for this model"
        )
