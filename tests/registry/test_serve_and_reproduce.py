"""A registry alias served through the OpenAI client with the network blocked, and `reproduce`."""

from __future__ import annotations

import json
import shutil

import openai
import pytest
from rich.console import Console

from peftkit.errors import RegistryError
from peftkit.registry.digests import sha256_file
from peftkit.registry.reproduce import check_inputs, reproduce
from peftkit.serve.server import ServeOptions
from tests.registry.conftest import as_if_evaluation_passed, no_network
from tests.serve.test_server import Running


def test_a_promoted_alias_is_verified_served_and_audited_offline(registry, tiny_run, tiny_llama_dir, keys, tmp_path,
                                                                   monkeypatch, network_attempts):
    monkeypatch.setenv("PEFTKIT_REGISTRY", str(registry.root))
    run = tmp_path / "passed"
    shutil.copytree(tiny_run, run)
    as_if_evaluation_passed(run)
    with no_network(network_attempts):
        registry.add(run, "tiny", key=keys[0])
        registry.promote("tiny@v2", "production", key=keys[0])
        tampered = registry.resolve("tiny@v1").path / "adapter" / "adapter_model.safetensors"
        tampered.write_bytes(tampered.read_bytes()[:-1] + bytes([tampered.read_bytes()[-1] ^ 1]))
        server = Running(ServeOptions(base=str(tiny_llama_dir), context=256, max_batch=2,
                                      adapters={"extract": "registry:tiny@production", "direct": str(run),
                                                "old": "registry:tiny@v1"}))
        try:
            client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=60)
            assert {m.id for m in client.models.list().data} == {str(tiny_llama_dir), "extract", "direct"}
            ask = dict(messages=[{"role": "user", "content": "Booking: 2 containers from Rotterdam."}],
                       temperature=0, max_tokens=8)
            via_registry = client.chat.completions.create(model="extract", **ask).choices[0].message.content
            via_run = client.chat.completions.create(model="direct", **ask).choices[0].message.content
        finally:
            server.close()
    assert via_registry == via_run  # the registered bytes are the run's
    assert "adapter_model.safetensors: changed" in server.server.refused["old"]
    load = [e for e in registry.audit.entries() if e["action"] == "load"]
    assert [(e["object"], e["details"]["served_as"]) for e in load] == [("tiny@v2", "extract")]
    assert network_attempts == []  # training, evaluation, registering and serving reached nothing but 127.0.0.1


def test_reproduce_retrains_bit_for_bit_on_cpu(registry, tmp_path):
    result = reproduce(registry, "tiny@v1", runs_dir=tmp_path / "runs", console=Console(quiet=True))
    rows = {r["what"]: r for r in result.rows}
    weights = rows["adapter/adapter_model.safetensors"]
    assert weights["same"] and weights["recorded"] == weights["reproduced"], weights
    assert result.equal_adapter and result.metrics_within_tolerance
    assert rows["train.train_loss"]["recorded"] == rows["train.train_loss"]["reproduced"]
    last = registry.audit.entries()[-1]
    assert (last["action"], last["object"], last["details"]["equal_adapter"]) == ("reproduce", "tiny@v1", True)


def test_reproduce_refuses_an_input_file_that_changed_since_training(registry, tmp_path):
    data = tmp_path / "emails.jsonl"
    data.write_text('{"input": "a", "output": "b"}\n')
    statement = json.loads((registry.resolve("tiny@v1").path / "provenance.json").read_text())
    statement["predicate"]["buildDefinition"]["resolvedDependencies"].append(
        {"name": "input/emails.jsonl", "uri": str(data), "digest": {"sha256": sha256_file(data)},
         "annotations": {"role": "input-data"}})
    check_inputs(statement)  # unchanged: accepted
    data.write_text('{"input": "a", "output": "c"}\n')
    with pytest.raises(RegistryError, match=rf"{data}: sha256 [0-9a-f]{{64}} now, [0-9a-f]{{64}} recorded when the "
                                            "version was trained: the input changed"):
        check_inputs(statement)
