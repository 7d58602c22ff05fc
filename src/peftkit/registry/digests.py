"""sha256 of files and folders, canonical JSON, and the base model's weight digests (cached).

    sha256_file(path)                        -> hex digest of the file's bytes
    folder_digests(folder)                   -> {relative posix path: sha256} of every file under it
    base_weight_digests("smollm2-135m")      -> {file: sha256} of the base's weights and config, cached
    canonical(obj)                           -> RFC 8785 bytes (what every hash over JSON is taken of)

A base model's weights are hundreds of MB; hashing them on every `registry add` and every load would
cost seconds, so a digest is cached in `$PEFTKIT_HOME/sha256-cache.json` keyed by the file's resolved
path, size and mtime (nanoseconds): a file that changes gets a new size or mtime and is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import rfc8785

CHUNK = 1 << 20
# What identifies a model folder's weights: the tensors and the config that shapes them.
WEIGHT_SUFFIXES = (".safetensors",)
WEIGHT_NAMES = ("config.json",)


def canonical(obj) -> bytes:
    """RFC 8785 canonical JSON: the same object gives the same bytes on any machine."""
    return rfc8785.dumps(obj)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj) -> str:
    return sha256_bytes(canonical(obj))


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def folder_digests(folder: str | Path) -> dict[str, str]:
    """{relative posix path: sha256} of every regular file under `folder` (links are not followed)."""
    folder = Path(folder)
    out = {}
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if path.is_file() and not path.is_symlink():
                out[path.relative_to(folder).as_posix()] = sha256_file(path)
    return out


def cached_sha256(path: Path, cache_file: Path | None = None) -> str:
    """sha256 of `path`, read from the cache when its resolved path, size and mtime are unchanged."""
    from peftkit.catalog.models import peftkit_home

    cache_file = cache_file or peftkit_home() / "sha256-cache.json"
    real = Path(path).resolve()
    stat = real.stat()
    key = str(real)
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    hit = cache.get(key)
    if isinstance(hit, dict) and hit.get("size") == stat.st_size and hit.get("mtime_ns") == stat.st_mtime_ns:
        return hit["sha256"]
    digest = sha256_file(real)
    cache[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cache, indent=1), encoding="utf-8")
    os.replace(tmp, cache_file)
    return digest


def base_weight_files(folder: Path) -> list[Path]:
    """The files that define a model folder's weights: every *.safetensors and config.json, sorted."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name in WEIGHT_NAMES))


def base_weight_digests(model_name: str) -> dict[str, str]:
    """{file name: sha256} of a base model's weight files (built-in name or folder); {} for a hub id
    (its identity is the hub id and revision, which the provenance records instead)."""
    from peftkit.catalog.models import resolve_model

    source = Path(resolve_model(model_name))
    if not source.is_dir():
        return {}
    return {p.name: cached_sha256(p) for p in base_weight_files(source)}
