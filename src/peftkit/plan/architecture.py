"""Model architectures from configuration only: built-ins, local `config.json`, and a catalog of families.

    arch = load_architecture("llama-3.1-8b")          # or "smollm2-135m", "./my-model", "org/name"
    arch.total_params, arch.linear_shapes()            # exact, from a model built on the meta device

No weights are read or downloaded. The model is instantiated with transformers' own classes on
PyTorch's meta device (shapes and dtypes, no storage), so parameter counts are those of the real
model, not of a formula that might drift from it.

The catalog holds the published `config.json` values of common families (hidden size,
intermediate size, layers, attention and key/value heads, head size, vocabulary, tied embeddings),
written from the families' model cards; `peftkit plan --list-models` prints them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from peftkit.errors import CatalogError

# Published config.json values (no download needed). Parameter counts these give are checked
# against the families' published totals in tests/plan/test_architecture.py.
_LLAMA2 = {"model_type": "llama", "vocab_size": 32000, "tie_word_embeddings": False, "max_position_embeddings": 4096}
_LLAMA3 = {"model_type": "llama", "vocab_size": 128256, "max_position_embeddings": 131072, "rope_theta": 500000.0}
_QWEN25 = {"model_type": "qwen2", "vocab_size": 151936, "tie_word_embeddings": True, "max_position_embeddings": 32768}
_GEMMA2 = {"model_type": "gemma2", "vocab_size": 256000, "tie_word_embeddings": True, "head_dim": 256}
FAMILIES: dict[str, dict] = {
    "llama-2-7b": {**_LLAMA2, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 32},
    "llama-2-13b": {**_LLAMA2, "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
                    "num_attention_heads": 40, "num_key_value_heads": 40},
    "llama-2-70b": {**_LLAMA2, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                    "num_attention_heads": 64, "num_key_value_heads": 8},
    "llama-3.1-8b": {**_LLAMA3, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False},
    "llama-3.1-70b": {**_LLAMA3, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                      "num_attention_heads": 64, "num_key_value_heads": 8, "tie_word_embeddings": False},
    "llama-3.2-1b": {**_LLAMA3, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "tie_word_embeddings": True},
    "llama-3.2-3b": {**_LLAMA3, "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
                     "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": True},
    # LLaMA-1 65B: the model of the QLoRA paper's "65B on one 48 GB GPU" (benchmarks/plan_vs_published.py)
    "llama-65b": {"model_type": "llama", "vocab_size": 32000, "hidden_size": 8192, "intermediate_size": 22016,
                  "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 64,
                  "tie_word_embeddings": False, "max_position_embeddings": 2048},
    "mistral-7b": {"model_type": "mistral", "vocab_size": 32768, "hidden_size": 4096, "intermediate_size": 14336,
                   "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                   "tie_word_embeddings": False, "max_position_embeddings": 32768},  # v0.3
    "qwen2.5-0.5b": {**_QWEN25, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2},
    "qwen2.5-1.5b": {**_QWEN25, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                     "num_attention_heads": 12, "num_key_value_heads": 2},
    "qwen2.5-7b": {**_QWEN25, "vocab_size": 152064, "tie_word_embeddings": False, "hidden_size": 3584,
                   "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                   "num_key_value_heads": 4},
    "gemma-2-2b": {**_GEMMA2, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
                   "num_attention_heads": 8, "num_key_value_heads": 4},
    "gemma-2-9b": {**_GEMMA2, "hidden_size": 3584, "intermediate_size": 14336, "num_hidden_layers": 42,
                   "num_attention_heads": 16, "num_key_value_heads": 8},
    "phi-3-mini": {"model_type": "phi3", "vocab_size": 32064, "hidden_size": 3072, "intermediate_size": 8192,
                   "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                   "tie_word_embeddings": False, "max_position_embeddings": 4096},  # 4k-instruct
    "bert-base": {"model_type": "bert", "vocab_size": 30522, "hidden_size": 768, "intermediate_size": 3072,
                  "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 512,
                  "type_vocab_size": 2},  # bert-base-uncased
    # Fallback for the built-in smollm2-135m before its GGUF file has been converted (same values).
    "smollm2-135m": {"model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
                     "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
                     "tie_word_embeddings": True, "max_position_embeddings": 8192, "rope_theta": 100000.0},
}
ALIASES = {"mistral-7b-v0.3": "mistral-7b", "bert-base-uncased": "bert-base", "phi-3-mini-4k": "phi-3-mini"}
# Encoder families: planned as sequence classifiers by default; everything else as a causal LM.
ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta-v2", "mpnet"}
TASKS = ("causal-lm", "sequence-classification")


@dataclass
class Architecture:
    """A model's configuration and what the planner needs from it (all exact, from the meta model)."""

    name: str
    source: str  # "catalog", "built-in", or the config.json path / hub id
    config: object  # transformers.PretrainedConfig
    task: str
    num_labels: int = 2
    _meta: object = field(default=None, repr=False)

    @property
    def hidden(self) -> int:
        return self.config.hidden_size

    @property
    def layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def vocab(self) -> int:
        return self.config.vocab_size

    @property
    def head_dim(self) -> int:
        return getattr(self.config, "head_dim", None) or self.hidden // self.config.num_attention_heads

    @property
    def kv_heads(self) -> int:
        return getattr(self.config, "num_key_value_heads", None) or self.config.num_attention_heads

    def meta_model(self):
        """The full model on the meta device (built once per Architecture)."""
        if self._meta is None:
            self._meta = build_meta_model(self.config, self.task, self.num_labels)
        return self._meta

    @property
    def total_params(self) -> int:
        return sum(p.numel() for p in self.meta_model().parameters())

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """{module name: (out_features d, in_features k)} of every nn.Linear in the model."""
        from torch import nn

        return {n: (m.out_features, m.in_features) for n, m in self.meta_model().named_modules()
                if isinstance(m, nn.Linear)}


def build_meta_model(config, task: str, num_labels: int = 2):
    """Instantiate the transformers model for `task` on the meta device: shapes only, no memory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    auto = AutoModelForSequenceClassification if task == "sequence-classification" else AutoModelForCausalLM
    if task == "sequence-classification":
        config.num_labels = num_labels
    try:
        with torch.device("meta"):
            try:
                return auto.from_config(config)
            except ValueError as exc:  # e.g. Gemma-2: no sdpa support, transformers asks for eager
                if "attention implementation" not in str(exc):
                    raise
                config._attn_implementation = "eager"
                return auto.from_config(config)
    finally:
        hf_logging.set_verbosity(verbosity)


def catalog_names() -> list[str]:
    return list(FAMILIES)


def _config_from_dict(values: dict):
    from transformers import AutoConfig

    values = dict(values)
    return AutoConfig.for_model(values.pop("model_type"), **values)


@functools.lru_cache(maxsize=64)
def _cached(name: str, task: str | None, num_labels: int, attention: str) -> Architecture:
    from peftkit.catalog.models import BUILTIN_MODELS, peftkit_home, resolve_model

    key = ALIASES.get(name.lower(), name.lower())
    builtin = BUILTIN_MODELS.get(name)
    if builtin is not None and builtin.gguf:
        folder = peftkit_home() / "models" / builtin.name  # converted cache; catalog values until then
        config, source = (_read_config(folder), "built-in") if (folder / "config.json").is_file() else (
            _config_from_dict(FAMILIES[key]), "built-in (catalog values)")
    elif builtin is not None:
        config, source = _read_config(Path(resolve_model(name))), "built-in"
    elif key in FAMILIES:
        config, source = _config_from_dict(FAMILIES[key]), "catalog"
    elif Path(name).expanduser().is_dir() or name.endswith("config.json"):
        path = Path(name).expanduser()
        folder = path.parent if path.name == "config.json" else path
        if not (folder / "config.json").is_file():
            raise CatalogError(f"{folder}: no config.json inside (the planner reads only the configuration)")
        config, source = _read_config(folder), str(folder / "config.json")
    elif name.count("/") == 1:
        config, source = _read_config(name), name
    else:
        raise CatalogError(
            f"unknown model '{name}': not a built-in, not a catalog family ({', '.join(FAMILIES)}), "
            "not a folder with a config.json, and not a hub id org/name")
    if task is None:
        builtin_task = builtin.task if builtin is not None else None
        task = builtin_task or ("sequence-classification" if config.model_type in ENCODER_TYPES else "causal-lm")
    if task not in TASKS:
        raise CatalogError(f"task '{task}': expected one of {', '.join(TASKS)}")
    config._attn_implementation = attention
    return Architecture(name=name, source=source, config=config, task=task, num_labels=num_labels)


def _read_config(where):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(where))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CatalogError(f"model '{where}': cannot read its config.json ({first})") from None


def load_architecture(name: str, task: str | None = None, num_labels: int = 2,
                      attention: str = "sdpa") -> Architecture:
    """The Architecture of a built-in, catalog family, local folder / config.json, or hub id (config only).

    Args:
        task: "causal-lm" or "sequence-classification"; default: the built-in's task, else
            classification for encoder families (BERT, RoBERTa, ...) and causal LM for the rest.
        attention: transformers attention implementation to plan for ("sdpa" or "eager").
    """
    if attention not in ("sdpa", "eager", "flash_attention_2"):
        raise CatalogError(f"attention '{attention}': expected sdpa, eager or flash_attention_2")
    # flash_attention_2 keeps the same tensors for backward as sdpa's fused kernels
    return _cached(name, task, num_labels, "sdpa" if attention == "flash_attention_2" else attention)
