"""Verification at use: `registry:NAME@vN` / `registry:NAME@ALIAS` sources for serve (and other loaders).

    folder = load_registered("registry:extract@production", base="smollm2-135m", served_as="extract")

The version is resolved in the registry folder named by $PEFTKIT_REGISTRY (default runs/registry) and
its MLflow store, verified (`verify.resolve_verified`: the audit chain, every stored file, the
signature, the alias against the audit log, the base's weight hashes against the provenance), and the
use is recorded as a `load` entry in the audit log. The version folder has a run directory's layout,
so the caller then reads it as it reads a run.
"""

from __future__ import annotations

import os

from peftkit.errors import AdapterRefused, RegistryError
from peftkit.registry.mlflow_registry import Registry
from peftkit.registry.verify import resolve_verified

REGISTRY_ENV = "PEFTKIT_REGISTRY"
SOURCE_PREFIX = "registry:"


def is_registry_source(source: str) -> bool:
    return isinstance(source, str) and source.startswith(SOURCE_PREFIX)


def load_registered(source: str, base: str, served_as: str, action: str = "load") -> str:
    """For `serve --adapter NAME=registry:REF`: the verified version folder (a run-directory layout), with a
    `load` entry in the audit log; refusals are AdapterRefused naming the file and both hashes."""
    registry = Registry(os.environ.get(REGISTRY_ENV) or "runs/registry")
    try:
        verified = resolve_verified(registry, source.removeprefix(SOURCE_PREFIX), base=base)
    except RegistryError as exc:
        raise AdapterRefused(served_as, str(exc)) from None
    registry.audit.append(action, verified.ref, digests={"provenance.json": verified.provenance_sha256},
                          details={"served_as": served_as, "base": base, "signed": verified.signed})
    return str(verified.path)
