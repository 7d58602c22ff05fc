"""The audit log: an append-only, hash-chained JSONL of every registry action, with signed checkpoints.

    log = AuditLog(Path("runs/registry"))
    log.append("add", "booking-extractor@v1", digests={"provenance.json": "…"}, actor="ana", key=private_key)
    log.verify(public_key)     # -> [problems], each naming the line; [] when the chain is intact

Each line of `audit.jsonl` is one entry:

    {"seq": 7, "time": "…Z", "actor": "ana", "action": "promote", "object": "booking-extractor@v2",
     "digests": {…}, "details": {…}, "prev": "<hash of entry 6>", "hash": "<sha256 of this entry>"}

`hash` is sha256 over the RFC 8785 canonical JSON of the entry without `hash`, so editing any field of
any entry breaks it, and `prev` ties it to the entry before, so deleting, inserting or reordering
breaks the next link. A chain alone does not stop someone who rewrites every entry and rehashes, nor
shows a cut-off tail; so at every signed add, promote and demote, and every CHECKPOINT_EVERY entries
when a private key is at hand, a checkpoint (entry count + head hash) signed with it goes to
`audit.checkpoints.jsonl`.
Verification needs the public key; without the private key nobody can write a checkpoint that
verifies, so a rewritten chain no longer matches the signed head, and a truncated one has fewer
entries than a checkpoint covers. Entries after the last checkpoint are chained but not yet signed:
`verify` reports how many.

Writers hold an exclusive lock on the log (fcntl) while they read the head and append.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from peftkit.registry.digests import canonical, sha256_json
from peftkit.registry.signing import key_id, sign_bytes, verify_bytes

LOG_FILE = "audit.jsonl"
CHECKPOINT_FILE = "audit.checkpoints.jsonl"
CHECKPOINT_EVERY = 16
GENESIS = "0" * 64
ACTIONS = ("add", "promote", "demote", "remove", "load", "serve", "merge", "export", "reproduce", "keys")


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def current_actor(actor: str | None = None) -> str:
    """Who acts: `--actor` when given, else the OS user."""
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def entry_hash(entry: dict) -> str:
    return sha256_json({k: v for k, v in entry.items() if k != "hash"})


@dataclass
class Verification:
    """What `AuditLog.verify` found: problems (each names a line), entry count, signed coverage."""

    entries: int
    checkpoints: int
    signed_entries: int  # entries covered by the last valid checkpoint
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class AuditLog:
    """The audit log of one registry folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.path = self.root / LOG_FILE
        self.checkpoints_path = self.root / CHECKPOINT_FILE

    @contextmanager
    def _locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".audit.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def append(self, action: str, obj: str, digests: dict | None = None, details: dict | None = None,
               actor: str | None = None, key=None, checkpoint: bool = False) -> dict:
        """Append one entry (and a signed checkpoint every CHECKPOINT_EVERY entries, or when `checkpoint`,
        if `key`, a private key, is given); returns the entry."""
        if action not in ACTIONS:
            raise ValueError(f"audit action {action!r}: expected one of {', '.join(ACTIONS)}")
        with self._locked():
            lines = self._lines()
            head = json.loads(lines[-1])["hash"] if lines else GENESIS
            entry = {"seq": len(lines) + 1, "time": now(), "actor": current_actor(actor), "action": action,
                     "object": obj, "digests": digests or {}, "details": details or {}, "prev": head}
            entry["hash"] = entry_hash(entry)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            if key is not None and (checkpoint or entry["seq"] % CHECKPOINT_EVERY == 0):
                self._write_checkpoint(entry["seq"], entry["hash"], key)
        return entry

    def checkpoint(self, key) -> dict | None:
        """Sign the current head now (e.g. after `peftkit keys generate --registry`); None for an empty log."""
        with self._locked():
            lines = self._lines()
            if not lines:
                return None
            return self._write_checkpoint(len(lines), json.loads(lines[-1])["hash"], key)

    def _write_checkpoint(self, count: int, head: str, key) -> dict:
        body = {"count": count, "head": head, "time": now(), "key_id": key_id(key.public_key())}
        record = body | {"signature": sign_bytes(canonical(body), key)}
        with open(self.checkpoints_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        return record

    def _lines(self) -> list[str]:
        if not self.path.is_file():
            return []
        return [line for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def entries(self) -> list[dict]:
        """The parsed entries (unverified; `verify` says whether to trust them)."""
        out = []
        for line in self._lines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    # ------------------------------------------------------------------ verification
    def verify(self, public_key=None) -> Verification:
        """Check every link of the chain and every checkpoint; problems name the line (1-based)."""
        lines = self._lines()
        problems: list[str] = []
        hashes: list[str | None] = []
        prev_hash = GENESIS
        for i, line in enumerate(lines, start=1):
            where = f"{self.path.name} line {i}"
            try:
                entry = json.loads(line)
                if not isinstance(entry, dict):
                    raise ValueError
            except ValueError:
                problems.append(f"{where}: not a JSON object (the line was edited or corrupted)")
                hashes.append(None)
                prev_hash = None
                continue
            recorded = entry.get("hash")
            if entry_hash(entry) != recorded:
                problems.append(f"{where} (seq {entry.get('seq')}, {entry.get('action')} {entry.get('object')}): "
                                f"edited: its content hashes to {entry_hash(entry)}, the entry records {recorded}")
            if entry.get("seq") != i:
                what = ("an entry before it was deleted" if isinstance(entry.get("seq"), int) and entry["seq"] > i
                        else "an entry was inserted or moved before it")
                if isinstance(entry.get("seq"), int) and entry["seq"] == i + 1 and i < len(lines) \
                        and _seq(lines[i]) == i:
                    what = f"it was swapped with line {i + 1}"
                problems.append(f"{where}: holds entry seq {entry.get('seq')}, expected seq {i}: {what}")
            if prev_hash is not None and entry.get("prev") != prev_hash:
                problems.append(f"{where}: its prev hash {entry.get('prev')} is not the hash of line {i - 1} "
                                f"({prev_hash}): the chain is broken here")
            hashes.append(recorded)
            prev_hash = recorded
        checkpoints, signed = self._verify_checkpoints(hashes, public_key, problems)
        return Verification(entries=len(lines), checkpoints=checkpoints, signed_entries=signed, problems=problems)

    def _verify_checkpoints(self, hashes: list[str | None], public_key, problems: list[str]) -> tuple[int, int]:
        if not self.checkpoints_path.is_file():
            if public_key is not None and hashes:
                problems.append(f"{CHECKPOINT_FILE}: missing, but the registry has a signing key: expected a signed "
                                "checkpoint (it was deleted, or every entry was written without the key)")
            return 0, 0
        records = [line for line in self.checkpoints_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        signed = 0
        for i, line in enumerate(records, start=1):
            where = f"{CHECKPOINT_FILE} line {i}"
            try:
                record = json.loads(line)
                body = {k: record[k] for k in ("count", "head", "time", "key_id")}
            except (ValueError, KeyError, TypeError):
                problems.append(f"{where}: not a checkpoint record (edited or corrupted)")
                continue
            if public_key is not None:
                if record["key_id"] != key_id(public_key):
                    problems.append(f"{where}: signed by key {record['key_id'][:16]}…, not by the trusted key "
                                    f"{key_id(public_key)[:16]}…")
                    continue
                if not verify_bytes(canonical(body), record.get("signature", ""), public_key):
                    problems.append(f"{where}: its signature does not verify: the checkpoint was forged or edited")
                    continue
            count = record["count"]
            if not isinstance(count, int) or count < 1:
                problems.append(f"{where}: count {count!r} is not a positive entry count")
                continue
            if count > len(hashes):
                removed = f"entry {count}" if count == len(hashes) + 1 else f"entries {len(hashes) + 1}-{count}"
                problems.append(f"{LOG_FILE}: truncated: signed checkpoint {i} covers {count} entries, the log "
                                f"holds {len(hashes)} ({removed} removed)")
                continue
            if hashes[count - 1] != record["head"]:
                problems.append(f"{LOG_FILE} line {count}: its hash {hashes[count - 1]} is not the signed head "
                                f"{record['head']} of checkpoint {i}: the chain up to it was rewritten")
                continue
            signed = max(signed, count)
        return len(records), signed


def _seq(line: str):
    try:
        return json.loads(line).get("seq")
    except (ValueError, AttributeError):
        return None
