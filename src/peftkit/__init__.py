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

_EXPORTS = {
    "train": "peftkit.train.run",
    "evaluate": "peftkit.evaluate.run",
    "merge": "peftkit.export.merge",
    "quickstart": "peftkit.quickstart",
    "load_recipe": "peftkit.recipe",
    "prepare_data": "peftkit.data.prepare",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'peftkit' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
