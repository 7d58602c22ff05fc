"""Tenants and API keys for `peftkit serve`: who is calling, and which models they may use.

    ring = load_keys("keys.yaml")             # or load_keys(None): the open ring, local use only
    principal = ring.authenticate(bearer_key(request.headers.get("authorization")))
    if principal is None: ...                 # 401
    if not principal.may_use(model): ...      # 404, so another tenant's adapter names don't leak

The keys file stores only the sha256 of each key, never the key itself, so a leaked file does not
leak access. A presented key is hashed and compared with every entry by `hmac.compare_digest`,
without stopping at the first match, so the time taken does not tell an attacker which entry (or
how much of a hash) they hit. `peftkit serve keygen` makes a key and prints it once, with the
entry to paste into the file:

    keys:
      - tenant: acme
        sha256: 5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8
        adapters: [extract, chat]    # model names this key may use; "*" = every model
      - tenant: ops
        sha256: ...
        admin: true                  # may call /admin/*; without `adapters` it may use no model

A non-admin entry must say which models it may use (`adapters`): there is no silent "everything".
Without a keys file the ring is open (every caller is the admin tenant "local"); the server then
binds to 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from fastapi.security.utils import get_authorization_scheme_param

from peftkit.errors import KeysFileError

ALL = "*"  # `adapters: "*"`: every model the server has
OPEN_TENANT = "local"  # who every caller is when the server runs without a keys file
KEY_PREFIX = "pk-"

ENTRY_FIELDS = ("tenant", "sha256", "adapters", "admin")
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# a model name as the OpenAI API's `model` field carries it: no spaces, no commas (keygen splits
# `--adapters a,b` on them), no "*" (that means every model and stands alone)
MODEL_NAME_RE = re.compile(r"^[^\s,*]{1,256}$")
# what a key may contain: printable ASCII without spaces (generated keys are "pk-" + base64url)
KEY_RE = re.compile(r"^[\x21-\x7e]{1,512}$")

KEYGEN_HINT = "run `peftkit serve keygen --tenant NAME` and paste the entry it prints"


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: the tenant, the models it may use, and whether it may call /admin."""

    tenant: str
    adapters: frozenset[str] | None  # None = every model ("*")
    admin: bool

    def may_use(self, model: str) -> bool:
        """True when this key is granted `model` (an adapter name, or the base model's name)."""
        return self.adapters is None or model in self.adapters


@dataclass(frozen=True)
class KeyEntry:
    """One `keys:` item: the hash of a key and the principal that key stands for."""

    sha256: str = field(repr=False)  # 64 lowercase hex characters
    principal: Principal


@dataclass(frozen=True)
class KeyRing:
    """The keys a server accepts.

    With no entries and no source file the ring is *open*: every caller, with or without a key,
    is the admin tenant "local" with every model (for a server bound to 127.0.0.1).
    """

    entries: tuple[KeyEntry, ...]
    source: Path | None
    warnings: tuple[str, ...] = ()  # e.g. the file is readable by others; for the server to print

    @property
    def open(self) -> bool:
        return self.source is None and not self.entries

    def authenticate(self, key: str | None) -> Principal | None:
        """The principal whose key this is, or None (no key, or no entry has its hash).

        The key's sha256 is compared with every entry by `hmac.compare_digest`, also after a match,
        so the time taken does not depend on which entry matched.
        """
        if self.open:
            return Principal(OPEN_TENANT, None, admin=True)
        if not key:
            return None
        digest = hash_key(key).encode("ascii")
        found: Principal | None = None
        for entry in self.entries:
            if hmac.compare_digest(digest, entry.sha256.encode("ascii")):
                found = entry.principal  # hashes are unique (load_keys checks), so at most one
        return found


def hash_key(key: str) -> str:
    """The sha256 hex digest stored in the keys file for `key`."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def bearer_key(authorization_header: str | None, x_api_key: str | None = None) -> str | None:
    """The API key of a request: `Authorization: Bearer <key>` (as the openai client sends it), else `X-API-Key`.

    The scheme is case-insensitive, as HTTP says. A header with another scheme, no key, or a key
    with spaces in it gives no key from that header. Returns None when neither header gives one.
    """
    scheme, credentials = get_authorization_scheme_param(authorization_header)
    if scheme.lower() == "bearer" and KEY_RE.match(credentials):
        return credentials
    if x_api_key is not None and KEY_RE.match(x_api_key.strip()):
        return x_api_key.strip()
    return None


def load_keys(path: str | Path | None) -> KeyRing:
    """Read and check a keys file; `None` gives the open ring (no keys: local use only).

    Raises:
        KeysFileError: the file is missing or unreadable, not YAML, or an entry is malformed; the
            message names the file, the entry (`keys[2]`) and the field, never a hash or a key.
    """
    if path is None:
        return KeyRing(entries=(), source=None)
    path = Path(path)
    raw = _read_yaml(path)
    if not isinstance(raw, dict) or "keys" not in raw:
        raise KeysFileError(f"{path}: expected a mapping with a `keys:` list at the top; {KEYGEN_HINT}")
    unknown = sorted(str(k) for k in raw if k != "keys")
    if unknown:
        raise KeysFileError(f"{path}: unknown top-level field(s) {', '.join(unknown)}; the only one is `keys`")
    items = raw["keys"]
    if items is None:
        items = []
    if not isinstance(items, list):
        raise KeysFileError(f"{path}: `keys` must be a list of entries (`- tenant: ...`), got {type(items).__name__}")

    entries: list[KeyEntry] = []
    first_index: dict[str, int] = {}  # hash -> index of the entry that has it
    for i, item in enumerate(items):
        entry = _parse_entry(item, f"{path}: keys[{i}]")
        if entry.sha256 in first_index:
            raise KeysFileError(
                f"{path}: keys[{i}].sha256 is the same hash as keys[{first_index[entry.sha256]}]; "
                "each key is listed once (give a tenant another key with `peftkit serve keygen`)"
            )
        first_index[entry.sha256] = i
        entries.append(entry)

    warnings = []
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        warnings.append(f"{path} can be read or written by others (mode {mode:04o}); run `chmod 600 {path}`")
    if not entries:
        warnings.append(f"{path} has no keys: every request will be refused; {KEYGEN_HINT}")
    return KeyRing(entries=tuple(entries), source=path, warnings=tuple(warnings))


def _read_yaml(path: Path) -> object:
    """The parsed file; errors name only a position, since the file holds hashes."""
    if not path.exists():
        raise KeysFileError(f"{path}: keys file not found; {KEYGEN_HINT}")
    if not path.is_file():
        raise KeysFileError(f"{path}: not a file (expected a YAML keys file)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeysFileError(f"{path}: cannot read the keys file ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KeysFileError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KeysFileError(f"{path}: not valid YAML{_yaml_position(exc)}") from None


def _yaml_position(exc: yaml.YAMLError) -> str:
    """' at line L, column C' (1-based) and a hint for a bare `*`; never the problem text, which may quote the file."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context = f"{getattr(exc, 'context', '') or ''} {getattr(exc, 'problem', '') or ''}"
    if "alias" in context:  # `adapters: *` reads as a YAML alias
        where += ' (a bare * is YAML syntax: write adapters: "*")'
    return where


def _parse_entry(item: object, where: str) -> KeyEntry:
    """One `keys:` item checked field by field; `where` is "<file>: keys[i]"."""
    if not isinstance(item, dict):
        raise KeysFileError(f"{where}: expected a mapping (tenant, sha256, adapters, admin), got {type(item).__name__}")
    unknown = [str(k) for k in item if k not in ENTRY_FIELDS]
    if unknown:
        hint = " (store the key's sha256, never the key)" if any(k in ("key", "api_key", "token") for k in unknown) else ""
        raise KeysFileError(
            f"{where}: unknown field(s) {', '.join(sorted(unknown))}{hint}; expected {', '.join(ENTRY_FIELDS)}"
        )

    tenant = item.get("tenant")
    if not isinstance(tenant, str) or not TENANT_RE.match(tenant):
        got = "missing" if tenant in (None, "") else f"{tenant!r}"
        raise KeysFileError(
            f"{where}.tenant: {got}; expected a simple name (letters, digits, . _ -, up to 64, starting with a letter or digit)"
        )

    digest = item.get("sha256")
    if not isinstance(digest, str) or not SHA256_RE.match(digest):
        # never echo the value: a pasted key is a secret
        what = "missing" if digest in (None, "") else "not 64 lowercase hex characters"
        if isinstance(digest, str) and digest.startswith(KEY_PREFIX):
            what = "looks like the key itself"
        raise KeysFileError(f"{where}.sha256: {what}; store the key's sha256 hash, never the key: {KEYGEN_HINT}")

    admin = item.get("admin", False)
    if not isinstance(admin, bool):
        raise KeysFileError(f"{where}.admin: expected true or false, got {admin!r}")

    if "adapters" not in item:
        if not admin:
            raise KeysFileError(f'{where}.adapters: missing; list the models this key may use, or "*" for every model')
        adapters: frozenset[str] | None = frozenset()  # an admin key without adapters manages but uses none
    else:
        adapters = _parse_adapters(item["adapters"], f"{where}.adapters")
    return KeyEntry(sha256=digest, principal=Principal(tenant=tenant, adapters=adapters, admin=admin))


def _parse_adapters(value: object, where: str) -> frozenset[str] | None:
    """`"*"` (or `["*"]`) -> None (every model); a list of model names -> their set."""
    if value == ALL or value == [ALL]:
        return None
    expected = 'expected a list of model names ([extract, chat]) or "*" for every model'
    if not isinstance(value, list):
        raise KeysFileError(f"{where}: {expected}, got {type(value).__name__}")
    for j, name in enumerate(value):
        if name == ALL:
            raise KeysFileError(f'{where}[{j}]: "*" means every model and stands alone (adapters: "*")')
        if not isinstance(name, str) or not MODEL_NAME_RE.match(name):
            raise KeysFileError(f"{where}[{j}]: {name!r}; {expected} (no spaces or commas)")
    return frozenset(value)


def new_key(tenant: str, adapters: list[str] | None = None, admin: bool = False) -> tuple[str, str]:
    """A fresh key and the YAML entry (its hash, never the key) to paste under `keys:`.

    Args:
        tenant: the tenant the key belongs to (a simple name).
        adapters: the models the key may use; ["*"] for every model. Required unless `admin`.
        admin: whether the key may call /admin/*.
    Returns:
        ("pk-…", the entry text, indented to sit under `keys:`).
    Raises:
        KeysFileError: the tenant or an adapter name would make an entry load_keys rejects.
    """
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    entry: dict[str, object] = {"tenant": tenant, "sha256": hash_key(key)}
    if adapters is not None:
        entry["adapters"] = ALL if list(adapters) == [ALL] else list(adapters)
    if admin:
        entry["admin"] = True
    _parse_entry(entry, "peftkit serve keygen")  # the same checks the server applies when it loads the file

    lines = [f"- tenant: {_yaml_scalar(tenant)}", f"  sha256: {entry['sha256']}"]
    if adapters is not None:
        names = entry["adapters"]
        listed = '"*"' if names == ALL else "[" + ", ".join(_yaml_scalar(n) for n in names) + "]"
        lines.append(f"  adapters: {listed}")
    if admin:
        lines.append("  admin: true")
    return key, "".join(f"  {line}\n" for line in lines)


def _yaml_scalar(name: str) -> str:
    """`name` as YAML that reads back as that string: bare when it does (acme), else JSON-quoted ("true")."""
    try:
        if yaml.safe_load(f"[{name}]") == [name]:
            return name
    except yaml.YAMLError:
        pass
    return json.dumps(name)  # a JSON string is a YAML double-quoted scalar


def keygen_command(tenant: str, adapters: str | list[str] | None, admin: bool) -> str:
    """The text `peftkit serve keygen` prints: the key on its own line, once, then the entry to add.

    `adapters` may be the CLI's comma-separated string ("extract,chat", or "*").
    """
    if isinstance(adapters, str):
        adapters = [name.strip() for name in adapters.split(",") if name.strip()]
    key, entry = new_key(tenant, adapters, admin)
    return (
        f"{key}\n"
        "shown once: store it now (the keys file keeps only its sha256; a lost key cannot be recovered, only replaced)\n"
        "\n"
        "add this entry under `keys:` in the file you pass to `peftkit serve --keys`:\n"
        f"{entry}"
    )
