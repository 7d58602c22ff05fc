"""Verification: a run's files against what training recorded, a registered version against what
registration recorded, and the whole registry (`peftkit audit verify`).

    check_trained_files(run_dir, ("test",))           # before eval: the test split and adapter unchanged
    check_run_files(run_dir, recipe)                  # before registering: every split and the adapter
    verify_version(registry, version, base="smollm2-135m")   # before a version is used
    verify_registry(registry)                          # the chain, every stored file, every alias

What is trusted, and why: the audit log's `add` entry records the sha256 of every file stored for a
version (provenance.json and adapter.sig included); the entry is hash-chained and, with a key,
covered by a signed checkpoint. So a stored file is checked against the entry, the entry against
the chain, the chain against the signature, and the adapter files also against the model-signing
signature. Every mismatch raises TamperError naming the file, both hashes, and what to do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from peftkit.errors import PeftkitError, TamperError
from peftkit.registry.digests import base_weight_digests, folder_digests, sha256_file
from peftkit.registry.lineage import build_lineage
from peftkit.registry.provenance import dependency_digests, subject_digests
from peftkit.registry.refs import VERSION_RE, Version, parse_ref
from peftkit.registry.signing import load_public, verify_folder



@dataclass
class Verified:
    """A version whose files, signature and (if checked) base passed."""

    ref: str
    path: Path
    provenance_sha256: str
    statement: dict
    signed: bool
    base_checked: bool


@dataclass
class RegistryReport:
    """What `verify_registry` found; `problems` is empty when everything verifies."""

    entries: int
    checkpoints: int
    signed_entries: int
    versions: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    trusted_key: str | None = None


# ---------------------------------------------------------------------------------------------- run directories


def check_split(run_dir: Path, split: str) -> None:
    """Refuse a prepared split whose bytes are not the ones its manifest recorded (it was replaced or edited)."""
    manifest = json.loads((Path(run_dir) / "data" / "manifest.json").read_text(encoding="utf-8"))
    recorded = manifest.get("splits", {}).get(split, {}).get("sha256")
    path = Path(run_dir) / "data" / f"{split}.jsonl"
    if recorded is None or not path.is_file():
        return
    actual = sha256_file(path)
    if actual != recorded:
        raise TamperError(f"{path}: sha256 {actual}, but data/manifest.json recorded {recorded} when the data was "
                          f"prepared: the {split} split was replaced or edited since; restore it, or score another "
                          "file with --data FILE")


def check_trained_files(run_dir: Path, splits: tuple[str, ...]) -> None:
    """Before a run is used (eval): these splits against the manifest, and the adapter (or model) against
    lineage.json when the run has one."""
    for split in splits:
        check_split(run_dir, split)
    lineage_file = Path(run_dir) / "lineage.json"
    if lineage_file.is_file():
        lineage = json.loads(lineage_file.read_text(encoding="utf-8"))
        artifact = lineage.get("artifact", "adapter")
        _compare(str(Path(run_dir) / artifact), lineage.get(artifact, {}), folder_digests(Path(run_dir) / artifact),
                 "recorded in lineage.json at training", "restore the trained files, or train again")


def check_run_files(run_dir: Path, recipe) -> dict:
    """Every split against the manifest, and the adapter against lineage.json; returns the lineage
    (built now, with the base hashed now, for a run trained before lineage.json was written)."""
    manifest = json.loads((run_dir / "data" / "manifest.json").read_text(encoding="utf-8"))
    for split in manifest.get("splits", {}):
        check_split(run_dir, split)
    lineage_file = run_dir / "lineage.json"
    if not lineage_file.is_file():
        return build_lineage(run_dir, recipe)
    lineage = json.loads(lineage_file.read_text(encoding="utf-8"))
    artifact = lineage.get("artifact", "adapter")
    _compare(f"{run_dir / artifact}", lineage.get(artifact, {}), folder_digests(run_dir / artifact),
             "recorded in lineage.json at training", "restore the trained files, or train again")
    return lineage


def _compare(where: str, recorded: dict[str, str], actual: dict[str, str], when: str, todo: str) -> None:
    """Raise TamperError listing each changed, missing and extra file of `where`."""
    problems = []
    for rel in sorted(recorded.keys() | actual.keys()):
        if rel not in actual:
            problems.append(f"{where}/{rel}: missing (sha256 {recorded[rel]} {when})")
        elif rel not in recorded:
            problems.append(f"{where}/{rel}: extra file, not {when} (sha256 {actual[rel]})")
        elif recorded[rel] != actual[rel]:
            problems.append(f"{where}/{rel}: changed: sha256 {actual[rel]}, {recorded[rel]} {when}")
    if problems:
        raise TamperError("; ".join(problems) + f"; {todo}")


# ---------------------------------------------------------------------------------------------- registered versions


def add_entry(registry, ref: str) -> dict:
    """The audit log's `add` entry of `ref` (the last one: a removed and re-added version has two)."""
    entries = [e for e in registry.audit.entries() if e.get("action") == "add" and e.get("object") == ref]
    if not entries:
        raise TamperError(f"{registry.audit.path}: no 'add' entry for {ref}: the version was not registered "
                          "through peftkit, or its entry was deleted; `peftkit audit verify` shows the chain")
    return entries[-1]


def trusted_key(registry, public_key: str | Path | None = None):
    """The public key to verify with: `--key` when given, else the registry's trusted_key.pem, else None."""
    path = Path(public_key) if public_key else registry.trusted_key_path()
    return (load_public(path), path) if path.is_file() or public_key else (None, None)


def verify_version(registry, version, public_key: str | Path | None = None, check_base: bool = True,
                   base: str | None = None) -> Verified:
    """Check a stored version: the audit chain, every stored file against its `add` entry, the adapter
    against provenance.json and its signature, and (check_base) the base's weights against the provenance.

    Args:
        base: the base model it will run on (default: the base recorded in its provenance).
    """
    key, key_path = trusted_key(registry, public_key)
    chain = registry.audit.verify(key)
    if chain.problems:
        raise TamperError(f"{version.ref}: the audit log does not verify, so nothing it records is trusted: "
                          f"{chain.problems[0]}; run `peftkit audit verify` for every problem")
    entry = add_entry(registry, version.ref)
    _compare(str(version.path), entry["digests"], folder_digests(version.path), "recorded at registration",
             "restore the version from a trusted copy, or register the run again as a new version")
    provenance_sha = sha256_file(version.path / "provenance.json")
    statement = json.loads((version.path / "provenance.json").read_text(encoding="utf-8"))
    adapter_files = {f"adapter/{rel}": d for rel, d in folder_digests(version.path / "adapter").items()}
    _compare(str(version.path), subject_digests(statement), adapter_files, "named in provenance.json",
             "the adapter is not the one its provenance describes; register the run again")
    signed = bool(entry.get("details", {}).get("signed"))
    if signed:
        if key is None:
            raise TamperError(f"{version.ref} was signed, but there is no public key to verify it: "
                              f"{registry.trusted_key_path()} is missing; pass --key PUBLIC.pem")
        verify_folder(version.path / "adapter", version.path / "adapter.sig", key_path)
    if check_base:
        _check_base(version.ref, statement, base)
    return Verified(version.ref, version.path, provenance_sha, statement, signed, check_base)


def _check_base(ref: str, statement: dict, base: str | None) -> None:
    recorded = {k.removeprefix("base/"): v for k, v in dependency_digests(statement, "base-weights").items()}
    recorded_name = statement["predicate"]["buildDefinition"]["internalParameters"]["base"]["name"]
    name = base or recorded_name
    try:
        actual = base_weight_digests(name)
    except PeftkitError as exc:
        raise TamperError(f"{ref}: its base {name} cannot be hashed ({exc})") from None
    problems = []
    for rel in sorted(recorded.keys() | actual.keys()):
        if recorded.get(rel) != actual.get(rel):
            problems.append(f"{rel}: sha256 {actual.get(rel, 'missing')} now, {recorded.get(rel, 'absent')} "
                            "recorded at training")
    if problems:
        raise TamperError(f"{ref}: the base model {name} is not the one it was trained on (provenance.json): "
                          + "; ".join(problems) + f"; use the base {recorded_name} it was trained on, or retrain on "
                          "this one and register the new run")


def alias_problems(registry, name: str) -> list[str]:
    """MLflow aliases of `name` that the audit log's last promote or demote does not confirm."""
    audited: dict[str, int | None] = {}
    for e in registry.audit.entries():
        if e.get("action") in ("promote", "demote") and str(e.get("object", "")).startswith(f"{name}@v"):
            alias = e.get("details", {}).get("alias")
            audited[alias] = int(e["object"].rsplit("@v", 1)[1]) if e["action"] == "promote" else None
    actual = registry.aliases(name)
    problems = []
    for alias in sorted(actual.keys() | {a for a, v in audited.items() if v is not None}):
        if actual.get(alias) != audited.get(alias):
            shown = f"v{actual[alias]}" if alias in actual else "nothing"
            expected = f"v{audited[alias]}" if audited.get(alias) is not None else "nothing"
            problems.append(f"{name}@{alias}: MLflow points it at {shown}, the audit log's last promote/demote at "
                            f"{expected}: it was moved outside peftkit; `peftkit registry promote` it again")
    return problems


def resolve_verified(registry, ref: str, base: str | None = None, public_key: str | Path | None = None) -> Verified:
    """Resolve NAME@vN / NAME@ALIAS, refuse an alias the audit log does not confirm, verify the version."""
    name, which = parse_ref(ref)
    verified = verify_version(registry, registry.resolve(ref), public_key=public_key, base=base)
    if which is not None and not VERSION_RE.fullmatch(which):  # the audit log, now verified, confirms the alias
        moved = [p for p in alias_problems(registry, name) if p.startswith(f"{name}@{which}:")]
        if moved:
            raise TamperError(moved[0])
    return verified


# ---------------------------------------------------------------------------------------------- the whole registry


def verify_registry(registry, public_key: str | Path | None = None, check_base: bool = True) -> RegistryReport:
    """`peftkit audit verify`: the chain and checkpoints, every stored file of every version, every alias."""
    key, key_path = trusted_key(registry, public_key)
    chain = registry.audit.verify(key)
    report = RegistryReport(chain.entries, chain.checkpoints, chain.signed_entries, problems=list(chain.problems),
                            trusted_key=str(key_path) if key_path else None)
    added = {e["object"] for e in registry.audit.entries() if e.get("action") == "add"}
    on_disk = {f"{d.parent.name}@{d.name}" for d in registry.root.glob("*/v*") if d.is_dir()}
    for ref in sorted(on_disk - added):
        report.problems.append(f"{registry.root / ref.replace('@', '/')}: a version folder with no 'add' entry in "
                               f"the audit log (inserted outside peftkit, or its entry was deleted)")
    names = sorted({ref.split("@")[0] for ref in added})
    for ref in sorted(added):
        name, number = ref.split("@v")
        version = Version(name, int(number), registry.root / name / f"v{number}")
        report.versions.append(ref)
        if not version.path.is_dir():
            report.problems.append(f"{version.path}: missing; {ref} was registered (audit log) but its folder is gone")
            continue
        try:
            _verify_stored(registry, version, key_path, check_base)
        except TamperError as exc:
            report.problems.append(str(exc))
    for name in names:
        try:
            report.problems.extend(alias_problems(registry, name))
        except Exception as exc:  # MLflow lost the registered model: say so, keep checking the others
            report.problems.append(f"{name}: MLflow store {registry.tracking_uri} has no such model ({type(exc).__name__})")
    return report


def _verify_stored(registry, version, key_path, check_base: bool) -> None:
    """verify_version's file, provenance, signature and base checks, for a chain already verified."""
    entry = add_entry(registry, version.ref)
    _compare(str(version.path), entry["digests"], folder_digests(version.path), "recorded at registration",
             "restore the version from a trusted copy, or register the run again as a new version")
    statement = json.loads((version.path / "provenance.json").read_text(encoding="utf-8"))
    if entry.get("details", {}).get("signed") and key_path is not None:
        verify_folder(version.path / "adapter", version.path / "adapter.sig", key_path)
    if check_base:
        _check_base(version.ref, statement, None)
