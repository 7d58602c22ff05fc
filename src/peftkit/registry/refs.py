"""Registry references: `NAME@vN` (a version), `NAME@ALIAS` (production, staging, …) or `NAME` (the latest).

    parse_ref("booking-extractor@v2")        -> ("booking-extractor", "v2")
    parse_ref("registry:extract@production") -> ("extract", "production")
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from peftkit.errors import RegistryError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ALIAS_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
VERSION_RE = re.compile(r"v(\d+)")


@dataclass(frozen=True)
class Version:
    """One registered version: `name@v<version>`, stored in `path`."""

    name: str
    version: int
    path: Path

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"


def parse_ref(ref: str) -> tuple[str, str | None]:
    """'NAME@v3' -> ('NAME', 'v3'); 'NAME@production' -> ('NAME', 'production'); 'NAME' -> ('NAME', None)."""
    name, _, which = ref.removeprefix("registry:").partition("@")
    if not NAME_RE.fullmatch(name) or ".." in name:
        raise RegistryError(f"{ref!r}: expected NAME@vN or NAME@ALIAS, NAME of 1-64 letters, digits, '.', '_', '-'")
    if which and not (VERSION_RE.fullmatch(which) or ALIAS_RE.fullmatch(which)):
        raise RegistryError(f"{ref!r}: after '@' expected vN (a version) or an alias such as production")
    return name, which or None
