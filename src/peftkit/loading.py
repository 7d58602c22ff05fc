"""Load tokenizers and base models for a ModelSpec: built-ins, local folders and hub ids alike.

All three go through `catalog.resolve_model` and then the same `from_pretrained` calls, so a
built-in model is never special-cased past the catalog. A hub id that cannot be fetched (no
network, unknown id) becomes one CatalogError line instead of a page of traceback.
"""

from __future__ import annotations

import torch

from peftkit.catalog.models import resolve_model
from peftkit.errors import CatalogError
from peftkit.recipe import ModelSpec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(spec: ModelSpec):
    from transformers import AutoTokenizer

    source = resolve_model(spec.name)
    tokenizer = _from_pretrained(AutoTokenizer, source, spec.name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(spec: ModelSpec, quantization=None):
    from transformers import AutoModelForCausalLM

    source = resolve_model(spec.name)
    return _from_pretrained(AutoModelForCausalLM, source, spec.name, dtype=DTYPES[spec.dtype],
                            **_quantized(quantization))


def _quantized(quantization) -> dict:
    """from_pretrained arguments that load the linear layers in 4 bits (bitsandbytes), or none."""
    if quantization is None:
        return {}
    # bitsandbytes 4-bit works on CPU as well as CUDA; device_map puts the model where training runs.
    return {"quantization_config": quantization, "device_map": {"": "cuda:0" if torch.cuda.is_available() else "cpu"}}


def load_classifier(spec: ModelSpec, labels: list[str], quantization=None):
    """A sequence classifier with a fresh head sized for `labels` (trained as part of the adapter)."""
    from transformers import AutoModelForSequenceClassification

    source = resolve_model(spec.name)
    return _from_pretrained(
        AutoModelForSequenceClassification,
        source,
        spec.name,
        dtype=DTYPES[spec.dtype],
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        **_quantized(quantization),
    )


def _from_pretrained(auto_cls, source: str, name: str, **kwargs):
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized head" notices are expected here
    try:
        return auto_cls.from_pretrained(source, **kwargs)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if source == name and "/" in name:
            raise CatalogError(f"model '{name}': cannot load it from the Hugging Face Hub ({first})") from None
        raise CatalogError(f"model '{name}' ({source}): {first}") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def load_base_model(spec: ModelSpec, data_task: str, labels: list[str] | None, seed: int, quantization=None):
    """The base model a task trains on: a causal LM, or a classifier for `labels`.

    The seed is set first so that a classifier's fresh head starts identically in train, eval
    and merge (its trained copy is saved with the adapter).

    Args:
        quantization: a transformers BitsAndBytesConfig to load the linear layers in 4 bits (QLoRA;
            `peftkit.methods.base_quantization(recipe.method)`), or None for `spec.dtype` weights.
            The head and the layers transformers keeps unquantized stay in `spec.dtype`. A 4-bit
            model is never merged into: merge reloads the base unquantized.
    """
    from transformers import set_seed

    set_seed(seed)
    if data_task == "classification":
        model = load_classifier(spec, labels or [], quantization)
    else:
        model = load_causal_lm(spec, quantization)
    if quantization is not None:
        own_memory_in_place(model)
    return model


def own_memory_in_place(model) -> None:
    """Copy the unquantized weights of a 4-bit load out of the checkpoint's memory map.

    transformers keeps weights it can use as they are (e.g. an fp32 embedding of an fp32 checkpoint)
    as views of the file's memory map, which then stays mapped, and with it every page that
    quantizing the other weights read: for smollm2-135m, 524 MiB of the file resident against
    177 MiB of weights in use (benchmarks/plan_vs_measured.py, stop 11). A copy releases the map.
    """
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.dtype.is_floating_point and tensor.device.type == "cpu":
                tensor.data = tensor.data.clone()
    from peftkit.train.allocator import trim_heap

    trim_heap()  # and the heap pages of the full-precision weights quantizing freed
