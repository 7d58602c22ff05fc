"""peftkit: parameter-efficient fine-tuning that proves it helped.

The stages are plain functions that hand off through a run directory:

    import peftkit
    run = peftkit.train("recipes/quickstart.yaml").run_dir
    peftkit.evaluate(run)
    peftkit.merge(run)

Imports are lazy so that `peftkit --help` does not load torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

# name -> module holding the function; train, evaluate and quickstart are also module names, so those
# modules are callable (peftkit._stages) and are what the attribute returns
_EXPORTS = {
    "train": "peftkit.train.run",
    "evaluate": "peftkit.evaluate.run",
    "merge": "peftkit.export.merge",
    "quickstart": "peftkit.quickstart",
    "load_recipe": "peftkit.recipe",
    "prepare_data": "peftkit.data.prepare",
}


_CALLABLE_MODULES = {"train": "peftkit.train", "evaluate": "peftkit.evaluate", "quickstart": "peftkit.quickstart"}


def __getattr__(name: str):
    if name in _CALLABLE_MODULES:
        import importlib

        return importlib.import_module(_CALLABLE_MODULES[name])
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'peftkit' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
