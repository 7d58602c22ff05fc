"""Stage functions that share their name with a module: `peftkit.train` is both.

`peftkit.train(recipe)` is the documented call, and `peftkit.train` is also the training package.
Python binds the package attribute to the submodule whenever it (or anything under it, e.g.
`peftkit.train.speed`) is imported, so a plain function export works once and then turns into the
module ("'module' object is not callable"). These modules are made callable instead: calling the
module calls the stage function, and attribute access, imports and patching work as before.
"""

from __future__ import annotations

import importlib
import sys
import types


def make_callable(module_name: str, target: str, function: str) -> None:
    """Calling the module `module_name` calls `target.function` (imported on the first call)."""

    class StageModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(importlib.import_module(target), function)(*args, **kwargs)

    StageModule.__call__.__doc__ = f"Call {target}.{function}."
    sys.modules[module_name].__class__ = StageModule
