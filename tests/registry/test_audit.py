"""The audit log: a hash chain with signed checkpoints; every kind of tampering is reported by its line."""

from __future__ import annotations

import json

import pytest

from peftkit.registry.audit import CHECKPOINT_FILE, AuditLog, entry_hash
from peftkit.registry.signing import generate_keys, load_private, load_public


@pytest.fixture
def signed_log(tmp_path):
    """Six entries; checkpoints (signed) after entries 2 and 6."""
    private, public = generate_keys(tmp_path / "keys")
    key = load_private(private)
    log = AuditLog(tmp_path / "registry")
    for i in range(1, 7):
        log.append("load", f"m@v{i}", digests={"f": f"{i:064x}"}, actor="tester", key=key, checkpoint=i in (2, 6))
    return log, load_public(public), key


def _lines(log):
    return log.path.read_text().splitlines()


def _write(log, lines):
    log.path.write_text("".join(line + "\n" for line in lines))


def test_an_intact_log_verifies_and_every_entry_links_to_the_one_before(signed_log):
    log, public, _ = signed_log
    result = log.verify(public)
    assert result.ok, result.problems
    assert (result.entries, result.checkpoints, result.signed_entries) == (6, 2, 6)
    entries = log.entries()
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5, 6]
    assert all(e["prev"] == p["hash"] for p, e in zip(entries, entries[1:]))
    assert all(entry_hash(e) == e["hash"] for e in entries)
    assert entries[0]["actor"] == "tester" and entries[0]["action"] == "load"


def test_an_edited_line_is_reported_by_its_position(signed_log):
    log, public, _ = signed_log
    lines = _lines(log)
    entry = json.loads(lines[2])
    entry["actor"] = "mallory"
    lines[2] = json.dumps(entry, sort_keys=True)
    _write(log, lines)
    problems = log.verify(public).problems
    assert any(p.startswith("audit.jsonl line 3 (seq 3, load m@v3): edited") for p in problems), problems


def test_a_deleted_line_is_reported_where_the_chain_breaks(signed_log):
    log, public, _ = signed_log
    lines = _lines(log)
    del lines[3]
    _write(log, lines)
    problems = log.verify(public).problems
    assert any("line 4: holds entry seq 5, expected seq 4: an entry before it was deleted" in p for p in problems), problems
    assert any(p.startswith("audit.jsonl line 4: its prev hash") for p in problems)


def test_a_line_swapped_with_the_next_is_reported_as_swapped(signed_log):
    log, public, _ = signed_log
    lines = _lines(log)
    lines[1], lines[2] = lines[2], lines[1]
    _write(log, lines)
    problems = log.verify(public).problems
    assert any("line 2: holds entry seq 3, expected seq 2: it was swapped with line 3" in p for p in problems), problems


def test_truncating_the_tail_is_caught_by_the_signed_checkpoint(signed_log):
    log, public, _ = signed_log
    _write(log, _lines(log)[:4])
    problems = log.verify(public).problems
    assert problems == ["audit.jsonl: truncated: signed checkpoint 2 covers 6 entries, the log holds 4 "
                        "(entries 5-6 removed)"]


def test_a_chain_rewritten_and_rehashed_without_the_key_no_longer_matches_the_signed_head(signed_log):
    log, public, _ = signed_log
    entries = log.entries()
    entries[0]["actor"] = "mallory"  # rewrite the first entry, then rehash and relink every entry after it
    prev = "0" * 64
    for e in entries:
        e["prev"] = prev
        e["hash"] = entry_hash(e)
        prev = e["hash"]
    _write(log, [json.dumps(e, sort_keys=True) for e in entries])
    problems = log.verify(public).problems
    assert [p.split(":")[0] for p in problems] == ["audit.jsonl line 2", "audit.jsonl line 6"]
    assert all("the chain up to it was rewritten" in p for p in problems)


def test_a_forged_checkpoint_does_not_verify(signed_log, tmp_path):
    log, public, _ = signed_log
    other = load_private(generate_keys(tmp_path / "other")[0])
    entries = log.entries()
    entries[0]["actor"] = "mallory"
    prev = "0" * 64
    for e in entries:
        e["prev"], e["hash"] = prev, None
        e["hash"] = entry_hash(e)
        prev = e["hash"]
    _write(log, [json.dumps(e, sort_keys=True) for e in entries])
    log.checkpoints_path.unlink()
    log.checkpoint(other)  # signed, but with a key the verifier does not trust
    problems = log.verify(public).problems
    assert len(problems) == 1 and problems[0].startswith(f"{CHECKPOINT_FILE} line 1: signed by key "), problems


def test_deleting_the_checkpoints_is_reported_when_a_key_is_trusted(signed_log):
    log, public, _ = signed_log
    log.checkpoints_path.unlink()
    assert log.verify(public).problems[0].startswith(f"{CHECKPOINT_FILE}: missing, but the registry has a signing key")
    assert log.verify(None).ok  # without a trusted key there is nothing to demand


def test_entries_after_the_last_checkpoint_are_chained_but_counted_as_unsigned(signed_log):
    log, public, _ = signed_log
    log.append("serve", "m@v1", actor="server")  # the server has no private key
    result = log.verify(public)
    assert result.ok and (result.entries, result.signed_entries) == (7, 6)


def test_an_unknown_action_is_refused(tmp_path):
    with pytest.raises(ValueError, match="audit action 'rename'"):
        AuditLog(tmp_path).append("rename", "m@v1")
