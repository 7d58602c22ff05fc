"""Find the files of a data or model package without importing it (imports pull heavy dependencies)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from peftkit.errors import CatalogError


def package_dir(requirement: str, needed_for: str) -> Path:
    """The folder of an installed package, given as `name==version` (the PyPI name)."""
    name = requirement.split("==")[0]
    spec = importlib.util.find_spec(name.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise CatalogError(f"{needed_for} needs the package {requirement}: pip install --no-deps {requirement}")
    return Path(next(iter(spec.submodule_search_locations)))
