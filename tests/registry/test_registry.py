"""`peftkit registry`: versions in MLflow's Model Registry with provenance, signatures, gated aliases."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from peftkit.cli import app
from peftkit.errors import RegistryError, TamperError
from peftkit.registry.digests import sha256_file
from peftkit.registry.verify import verify_registry


def test_training_writes_lineage_and_names_the_base_portably(tiny_run, tiny_llama_dir):
    lineage = json.loads((tiny_run / "lineage.json").read_text())
    manifest = json.loads((tiny_run / "data" / "manifest.json").read_text())
    assert lineage["adapter"]["adapter_model.safetensors"] == sha256_file(tiny_run / "adapter" / "adapter_model.safetensors")
    assert lineage["base"]["weights"]["model.safetensors"] == sha256_file(tiny_llama_dir / "model.safetensors")
    assert lineage["base"]["identity"].startswith("sha256:")  # a local folder: named by its weights, not its path
    assert lineage["data"]["splits"] == {k: v["sha256"] for k, v in manifest["splits"].items()}
    assert lineage["threads"] == 1 and lineage["seed"] == 42
    assert {"torch", "transformers", "peft"} <= set(lineage["libraries"])
    # peft keeps target_modules as a set; written sorted, the file's sha256 is the same in every process
    targets = json.loads((tiny_run / "adapter" / "adapter_config.json").read_text())["target_modules"]
    assert len(targets) > 1 and targets == sorted(targets)
    assert lineage["adapter"]["adapter_config.json"] == sha256_file(tiny_run / "adapter" / "adapter_config.json")


def test_a_builtin_base_is_named_by_its_catalog_name_in_the_adapter_config():
    from peftkit.registry.lineage import portable_base_name

    assert portable_base_name("smollm2-135m") == "smollm2-135m"
    assert portable_base_name("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert portable_base_name("/no/such/folder/model") is None


def test_add_stores_the_version_with_provenance_and_links_it_in_mlflow(registry, tiny_run):
    version = registry.resolve("tiny@v1")
    statement = json.loads((version.path / "provenance.json").read_text())
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    subject = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    assert subject["adapter/adapter_model.safetensors"] == sha256_file(tiny_run / "adapter" / "adapter_model.safetensors")
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    roles = {d["annotations"]["role"] for d in deps}
    assert roles == {"base-weights", "input-data", "prepared-split", "data-manifest", "code"}
    assert statement["predicate"]["buildDefinition"]["externalParameters"]["recipe"]["train"]["max_steps"] == 2
    registration = statement["predicate"]["runDetails"]["byproducts"][1]["annotations"]
    assert registration["actor"] == "tester"

    mv = registry.client.get_model_version("tiny", "1")
    assert mv.tags["peftkit.adapter_sha256"] == subject["adapter/adapter_model.safetensors"]
    assert mv.tags["peftkit.provenance_sha256"] == sha256_file(version.path / "provenance.json")
    inputs = registry.client.get_run(mv.run_id).inputs.dataset_inputs
    logged = {i.dataset.name: ({t.key: t.value for t in i.tags}["sha256"], i.dataset.digest) for i in inputs}
    manifest = json.loads((tiny_run / "data" / "manifest.json").read_text())
    for split, info in manifest["splits"].items():  # our full sha256, never MLflow's 8-character digest
        assert logged[f"data/{split}.jsonl"] == (info["sha256"], "sha256:" + info["sha256"][:29])


def test_a_signed_version_verifies_with_the_upstream_model_signing_cli(registry, keys):
    version = registry.resolve("tiny@v1")
    cli = Path(sys.executable).with_name("model_signing")
    done = subprocess.run([str(cli), "verify", "key", str(version.path / "adapter"), "--signature",
                           str(version.path / "adapter.sig"), "--public_key", str(keys[1])],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Verification succeeded" in done.stdout, done.stdout + done.stderr


def test_the_next_add_is_v2_and_list_show_diff_describe_them(registry, tiny_run, keys):
    v2 = registry.add(tiny_run, "tiny", key=keys[0], actor="tester", parent="tiny@v1")
    assert v2.ref == "tiny@v2"
    rows = registry.list()
    assert [(r["name"], r["version"]) for r in rows] == [("tiny", 1), ("tiny", 2)]
    runner = CliRunner()
    root = ["--registry", str(registry.root)]
    shown = runner.invoke(app, ["registry", "show", "tiny@v2", *root, "--tracking-uri", registry.tracking_uri])
    assert shown.exit_code == 0, shown.output
    assert "tiny@v1" in shown.output and "gate: evaluation" in shown.output  # the parent, the gates
    from peftkit.registry.inspect import diff

    assert diff(registry, "tiny@v1", "tiny@v2") == []  # the same run: nothing but the registration differs
    assert verify_registry(registry).problems == []


def test_promote_is_refused_naming_the_gate_that_did_not_pass(registry):
    with pytest.raises(RegistryError, match=r"tiny@v1: not promoted to production: the evaluation gate failed"):
        registry.promote("tiny@v1", "production")
    assert registry.aliases("tiny") == {}


def test_promote_points_the_alias_audits_it_and_a_move_outside_peftkit_is_refused(registry, passing_run, keys):
    from peftkit.registry.verify import resolve_verified

    assert json.loads((passing_run / "metrics.json").read_text())["verdict"]["answer"] == "yes"  # evaluated for real
    registry.add(passing_run, "tiny", key=keys[0])
    registry.promote("tiny@v2", "production", key=keys[0], actor="release-manager")
    assert registry.resolve("tiny@production").version == 2
    last = registry.audit.entries()[-1]
    assert (last["action"], last["object"], last["actor"], last["details"]["alias"]) == \
        ("promote", "tiny@v2", "release-manager", "production")
    assert registry.audit.verify(None).signed_entries == len(registry.audit.entries())  # promote is checkpointed
    assert resolve_verified(registry, "tiny@production").ref == "tiny@v2"
    registry.client.set_registered_model_alias("tiny", "production", "1")  # someone with MLflow access
    with pytest.raises(TamperError, match=r"tiny@production: MLflow points it at v1, the audit log's last "
                                          r"promote/demote at v2"):
        resolve_verified(registry, "tiny@production")


def test_a_key_other_than_the_registry_s_is_refused(registry, tmp_path):
    from peftkit.registry.signing import generate_keys

    other = generate_keys(tmp_path / "other")[0]
    with pytest.raises(RegistryError, match="not this registry's signing key"):
        registry.promote("tiny@v1", "staging", key=other)


def test_unknown_references_name_what_exists(registry):
    with pytest.raises(RegistryError, match="tiny@v9: no such version or alias"):
        registry.resolve("tiny@v9")
    with pytest.raises(RegistryError, match="expected NAME@vN or NAME@ALIAS"):
        registry.resolve("../etc@v1")


def test_cli_keys_add_promote_and_audit_verify(registry, tiny_run, keys, tmp_path):
    runner = CliRunner()
    root = ["--registry", str(registry.root)]
    out = runner.invoke(app, ["keys", "generate", "--out", str(tmp_path / "keys")])
    assert out.exit_code == 0 and (tmp_path / "keys" / "private.pem").stat().st_mode & 0o077 == 0
    out = runner.invoke(app, ["registry", "add", str(tiny_run), "--name", "tiny", "--sign", str(keys[0]), *root])
    assert out.exit_code == 0 and "tiny@v2" in out.output, out.output
    out = runner.invoke(app, ["registry", "promote", "tiny@v2", "--alias", "production", *root])
    assert out.exit_code == 1 and "the evaluation gate failed" in str(out.exception)
    out = runner.invoke(app, ["audit", "verify", *root])
    assert out.exit_code == 0 and "2 audit entries (2 covered by a signed checkpoint" in out.output, out.output
    assert "2 versions checked" in out.output
    out = runner.invoke(app, ["audit", "show", "--object", "tiny@v2", *root])
    assert out.exit_code == 0 and "add" in out.output and "tiny@v1" not in out.output
