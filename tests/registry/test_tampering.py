"""Tampering with a registered version, its base, or a run is detected, with a message naming the file.

Each case changes a private copy of a registry holding tiny@v1 (signed) and checks the refusal at use
(`verify_version`, what serve and reproduce call) and in `peftkit audit verify` (`verify_registry`).
"""

from __future__ import annotations

import json
import shutil

import pytest

from peftkit.errors import TamperError
from peftkit.registry.verify import check_trained_files, verify_registry, verify_version


def _flip_byte(path, offset=-1):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_an_untouched_version_verifies(registry):
    verified = verify_version(registry, registry.resolve("tiny@v1"))
    assert verified.signed and verified.base_checked
    assert verify_registry(registry).problems == []


def test_one_byte_of_the_adapter_changed(registry):
    version = registry.resolve("tiny@v1")
    recorded = json.loads((version.path / "provenance.json").read_text())["subject"]
    _flip_byte(version.path / "adapter" / "adapter_model.safetensors")
    with pytest.raises(TamperError) as exc:
        verify_version(registry, version)
    message = str(exc.value)
    assert f"{version.path}/adapter/adapter_model.safetensors: changed: sha256 " in message
    assert next(s["digest"]["sha256"] for s in recorded if s["name"].endswith(".safetensors")) in message
    assert "restore the version from a trusted copy" in message
    assert any("adapter/adapter_model.safetensors: changed" in p for p in verify_registry(registry).problems)


def test_a_file_added_to_the_adapter(registry):
    version = registry.resolve("tiny@v1")
    (version.path / "adapter" / "extra.py").write_text("print('hi')\n")
    with pytest.raises(TamperError, match=r"adapter/extra.py: extra file, not recorded at registration"):
        verify_version(registry, version)


def test_a_provenance_file_edited(registry):
    version = registry.resolve("tiny@v1")
    statement = json.loads((version.path / "provenance.json").read_text())
    statement["predicate"]["buildDefinition"]["internalParameters"]["seed"] = 7
    (version.path / "provenance.json").write_text(json.dumps(statement))
    with pytest.raises(TamperError, match=r"v1/provenance.json: changed: sha256 [0-9a-f]{64}, [0-9a-f]{64} recorded"):
        verify_version(registry, version)


def test_the_adapter_and_its_recorded_digest_changed_together_still_fail_the_signature(registry):
    """Someone who edits a file *and* the audit entry (rehashing the chain) is stopped by the checkpoint;
    the model-signing signature names the file independently of the log."""
    from peftkit.registry.signing import verify_folder

    version = registry.resolve("tiny@v1")
    _flip_byte(version.path / "adapter" / "adapter_model.safetensors")
    with pytest.raises(TamperError, match=r"adapter_model.safetensors changed \(signed [0-9a-f]{64}, found [0-9a-f]{64}\)"):
        verify_folder(version.path / "adapter", version.path / "adapter.sig", registry.trusted_key_path())


def test_a_base_model_file_changed_after_registration(registry, tiny_llama_dir, tmp_path):
    version = registry.resolve("tiny@v1")
    base = tmp_path / "base"
    shutil.copytree(tiny_llama_dir, base)
    _flip_byte(base / "model.safetensors", offset=-4)
    with pytest.raises(TamperError) as exc:
        verify_version(registry, version, base=str(base))
    message = str(exc.value)
    assert f"tiny@v1: the base model {base} is not the one it was trained on" in message
    assert "model.safetensors: sha256 " in message and "recorded at training" in message


def test_an_audit_line_edited_makes_every_version_untrusted(registry):
    lines = registry.audit.path.read_text().splitlines()
    entry = json.loads(lines[0])
    entry["actor"] = "mallory"
    registry.audit.path.write_text(json.dumps(entry, sort_keys=True) + "\n")
    with pytest.raises(TamperError, match=r"the audit log does not verify.*audit.jsonl line 1 \(seq 1, add tiny@v1\): edited"):
        verify_version(registry, registry.resolve("tiny@v1"))


def test_a_version_folder_removed_or_inserted_outside_peftkit(registry):
    shutil.copytree(registry.root / "tiny" / "v1", registry.root / "tiny" / "v7")
    problems = verify_registry(registry).problems
    assert problems == [f"{registry.root}/tiny/v7: a version folder with no 'add' entry in the audit log "
                        "(inserted outside peftkit, or its entry was deleted)"]


def test_a_replaced_test_split_is_refused_by_eval(tiny_run, tmp_path):
    from rich.console import Console

    from peftkit.evaluate.run import evaluate

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    check_trained_files(run, ("test",))  # untouched: passes
    rows = (run / "data" / "test.jsonl").read_text().splitlines()
    (run / "data" / "test.jsonl").write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(TamperError, match=r"data/test.jsonl: sha256 [0-9a-f]{64}, but data/manifest.json recorded "
                                          r"[0-9a-f]{64} when the data was prepared"):
        evaluate(run, console=Console(quiet=True), gate=False, report=False)


def test_an_adapter_changed_since_training_is_refused_by_eval(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    _flip_byte(run / "adapter" / "adapter_model.safetensors")
    with pytest.raises(TamperError, match=r"adapter/adapter_model.safetensors: changed: .* recorded in lineage.json"):
        check_trained_files(run, ("test",))
