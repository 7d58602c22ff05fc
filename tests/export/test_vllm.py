"""Export for vLLM: a clean LoRA adapter is copied as vLLM loads it with the exact `vllm serve` command;
every setting vLLM refuses (vllm/lora/peft_helper.py, vllm/config/lora.py, vllm/lora/utils.py) is named;
`--merge` serves the parity-checked merged model instead.

Each run directory is written here directly: recipe.yaml from a Recipe, RUN/adapter saved by peft on the
tiny Llama (no training: peft's `init_lora_weights=False` gives non-zero B matrices, so a merge changes weights)."""

import json
import os
import shlex
import shutil

import pytest
import torch
from typer.testing import CliRunner

from peftkit.cli import app
from peftkit.errors import ExportError
from peftkit.export.vllm import VLLM_MAX_LORA_RANKS, export_for_vllm, max_lora_rank_for, serve_base
from peftkit.recipe import DataSpec, FullSpec, IA3Spec, LoraSpec, ModelSpec, PrefixSpec, QLoraSpec, Recipe, dump_recipe

runner = CliRunner()


def make_run(root, tiny_llama_dir, method, peft_config=None, model_name=None, classifier=False):
    """A run directory: recipe.yaml (model.name = the tiny model folder unless given) and RUN/adapter from peft."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    run = root / "run"
    run.mkdir(parents=True)
    data = DataSpec(dataset="bbc-news" if classifier else "shipping-emails", size=16)
    recipe = Recipe(name="exp", model=ModelSpec(name=model_name or str(tiny_llama_dir)), data=data, method=method)
    (run / "recipe.yaml").write_text(dump_recipe(recipe), encoding="utf-8")
    if peft_config is not None:
        torch.manual_seed(0)
        base = (AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir, num_labels=3) if classifier
                else AutoModelForCausalLM.from_pretrained(tiny_llama_dir))
        get_peft_model(base, peft_config).save_pretrained(run / "adapter")
    return run


def lora(**kwargs):
    from peft import LoraConfig

    return LoraConfig(**{"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": False,
                         "task_type": "CAUSAL_LM", **kwargs})


def refusal(run, **kwargs) -> ExportError:
    with pytest.raises(ExportError) as exc:
        export_for_vllm(run, **kwargs)
    assert not (run / "export-vllm").exists()  # nothing written when vLLM would refuse
    assert "\n" not in str(exc.value)  # the CLI prints it as one red line
    return exc.value


# ------------------------------------------------------------------------------------- clean exports


def test_clean_lora_is_copied_as_vllm_loads_it(tiny_llama_dir, tmp_path):
    run = make_run(tmp_path, tiny_llama_dir, LoraSpec(r=16), lora(r=16))
    result = export_for_vllm(run, name="shipping", max_loras=3)
    out = run.resolve() / "export-vllm" / "shipping"
    assert result.out == out and result.rank == 16 and result.max_lora_rank == 16 and result.problems == []

    source = json.loads((run / "adapter" / "adapter_config.json").read_text())
    exported = json.loads((out / "adapter_config.json").read_text())
    assert exported.pop("base_model_name_or_path") == str(tiny_llama_dir.resolve()) == result.base
    assert {k: v for k, v in source.items() if k != "base_model_name_or_path"} == exported  # nothing else changed
    assert (out / "adapter_model.safetensors").read_bytes() == (run / "adapter" / "adapter_model.safetensors").read_bytes()

    assert result.command == (f"vllm serve {shlex.quote(result.base)} --enable-lora --lora-modules "
                              f"{shlex.quote(f'shipping={out}')} --max-lora-rank 16 --max-loras 3")
    serve = (out / "serve.sh").read_text()
    assert f"exec {result.command}\n" in serve and os.access(out / "serve.sh", os.X_OK)
    import hashlib

    assert hashlib.sha256((out / "adapter_model.safetensors").read_bytes()).hexdigest() in serve


def test_builtin_base_becomes_its_hub_id_not_a_local_path(tiny_llama_dir, tmp_path):
    """The adapter's config names the folder it was trained from; vLLM gets the built-in's hub id instead."""
    run = make_run(tmp_path, tiny_llama_dir, LoraSpec(r=16), lora(), model_name="smollm2-135m")
    saved = json.loads((run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert saved == str(tiny_llama_dir)  # what peft wrote: this machine's folder
    result = export_for_vllm(run)
    config = json.loads((result.out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == result.base == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert result.command.startswith("vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --enable-lora")
    assert any("Q4_1" in n and "--merge" in n for n in result.notes)  # trained on dequantized GGUF weights: said
    assert result.out == run.resolve() / "export-vllm" / "exp"  # default name: the recipe's


def test_serve_base_never_names_a_package_folder(tiny_llama_dir):
    from peftkit.catalog.models import BUILTIN_MODELS

    for name, model in BUILTIN_MODELS.items():
        assert serve_base(name) == model.hub_id and model.hub_id.count("/") == 1
    assert serve_base("meta-llama/Llama-3.2-1B") == "meta-llama/Llama-3.2-1B"
    assert serve_base(str(tiny_llama_dir)) == str(tiny_llama_dir.resolve())


@pytest.mark.parametrize("rank, expected", [(1, 1), (4, 8), (8, 8), (12, 16), (17, 32), (300, 320), (321, 512),
                                            (512, 512), (513, None)])
def test_max_lora_rank_rounds_up_to_an_allowed_value(rank, expected):
    assert max_lora_rank_for(rank) == expected
    assert expected is None or expected in VLLM_MAX_LORA_RANKS


def test_rank_12_is_served_under_max_lora_rank_16(tiny_llama_dir, tmp_path):
    """vLLM's rule is adapter rank <= --max-lora-rank, and --max-lora-rank is one of a fixed set: round up."""
    run = make_run(tmp_path, tiny_llama_dir, LoraSpec(r=12), lora(r=12))
    result = export_for_vllm(run)
    assert result.rank == 12 and result.max_lora_rank == 16
    assert "--max-lora-rank 16 " in result.command


def test_rank_above_512_is_refused(tiny_llama_dir, tmp_path):
    run = make_run(tmp_path, tiny_llama_dir, LoraSpec(r=600), lora(r=600, target_modules=["q_proj"]))
    message = str(refusal(run))
    assert "rank 600" in message and "up to 512" in message


def test_qlora_adapter_is_served_on_a_4bit_base(tiny_llama_dir, tmp_path):
    run = make_run(tmp_path, tiny_llama_dir, QLoraSpec(r=8), lora(r=8))
    result = export_for_vllm(run)
    assert result.command.endswith("--max-lora-rank 8 --max-loras 1 --quantization bitsandbytes")
    assert any("bitsandbytes" in n for n in result.notes)


def test_full_run_serves_its_model_folder(tiny_llama_dir, tmp_path):
    run = make_run(tmp_path, tiny_llama_dir, FullSpec())
    shutil.copytree(tiny_llama_dir, run / "model")
    result = export_for_vllm(run, name="full-exp")
    model = run.resolve() / "model"
    assert result.command == shlex.join(["vllm", "serve", str(model), "--served-model-name", "full-exp"])
    assert result.base == str(model) and result.rank is None
    assert sorted(p.name for p in result.out.iterdir()) == ["serve.sh"]


# ------------------------------------------------------------------------------------- refusals


def test_dora_is_refused_with_the_merge_way_out(tiny_llama_dir, tmp_path):
    run = make_run(tmp_path, tiny_llama_dir, LoraSpec(dora=True), lora(use_dora=True))
    error = refusal(run)
    assert "DoRA (use_dora: true)" in str(error) and f"`peftkit export {run.resolve()} --for vllm --merge`" in str(error)
    assert len(error.problems) == 1 and error.problems[0].endswith("--merge` folds it into the base exactly (parity-checked)")


def test_classifier_head_in_modules_to_save_is_refused(tiny_llama_dir, tmp_path):
    config = lora(task_type="SEQ_CLS")  # peft keeps the fresh head (score) trainable and saves it: modules_to_save
    run = make_run(tmp_path, tiny_llama_dir, LoraSpec(), config, classifier=True)
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["modules_to_save"]
    message = str(refusal(run))
    assert "modules_to_save: [" in message and "'score'" in message and "--merge" in message


def test_lora_only_bias_is_refused(tiny_llama_dir, tmp_path):
    run = make_run(tmp_path, tiny_llama_dir, LoraSpec(), lora(bias="lora_only"))
    assert "bias: 'lora_only'" in str(refusal(run))


@pytest.mark.parametrize("target", ["lm_head", "embed_tokens"])
def test_output_head_and_embedding_targets_are_refused(tiny_llama_dir, tmp_path, target):
    run = make_run(tmp_path, tiny_llama_dir, LoraSpec(), lora(target_modules=["q_proj", target]))
    message = str(refusal(run))
    assert f"target modules {target}:" in message and "q_proj" not in message


@pytest.mark.parametrize("init", ["pissa", "olora", "loftq"])
def test_inits_that_change_the_base_are_refused(tiny_llama_dir, tmp_path, init):
    if init == "loftq":
        # peft computes LoftQ on CUDA only (see methods/qlora.py): write the config field a LoftQ adapter carries
        run = make_run(tmp_path, tiny_llama_dir, LoraSpec(), lora())
        path = run / "adapter" / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "init_lora_weights": "loftq"}))
    else:
        run = make_run(tmp_path, tiny_llama_dir, LoraSpec(init=init), lora(init_lora_weights=init))
    assert f"init_lora_weights: '{init}'" in str(refusal(run))


def test_every_reason_is_listed_not_just_the_first(tiny_llama_dir, tmp_path):
    run = make_run(tmp_path, tiny_llama_dir, LoraSpec(dora=True), lora(use_dora=True, bias="all",
                                                                      target_modules=["q_proj", "lm_head"]))
    error = refusal(run)
    assert len(error.problems) == 3
    for i, setting in enumerate(("DoRA", "bias: 'all'", "target modules lm_head"), 1):
        assert f"({i}) {setting}" in str(error)


def test_ia3_is_refused_as_not_lora(tiny_llama_dir, tmp_path):
    from peft import IA3Config

    config = IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"],
                       task_type="CAUSAL_LM")
    run = make_run(tmp_path, tiny_llama_dir, IA3Spec(), config)
    message = str(refusal(run))
    assert "method.kind: 'ia3'" in message and "LoRA adapters only" in message and "--merge" in message


@pytest.mark.parametrize("merge", [False, True])
def test_prefix_tuning_is_refused_and_cannot_be_merged(tiny_llama_dir, tmp_path, merge):
    from peft import PrefixTuningConfig

    run = make_run(tmp_path, tiny_llama_dir, PrefixSpec(num_virtual_tokens=4),
                   PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"))
    message = str(refusal(run, merge=merge))
    assert "'prefix'" in message and "cannot be merged" in message and "virtual tokens" in message
    assert not (run / "merged").exists()


# ------------------------------------------------------------------------------------- --merge and the CLI


def test_merge_serves_the_parity_checked_merged_model(tiny_llama_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from peftkit.data.prepare import prepare_data
    from peftkit.recipe import load_recipe

    run = make_run(tmp_path, tiny_llama_dir, LoraSpec(dora=True), lora(use_dora=True))
    prepare_data(load_recipe(run / "recipe.yaml").data, run / "data")  # the parity check scores held-out examples
    result = export_for_vllm(run, merge=True)

    merged = run.resolve() / "merged"
    assert result.command == shlex.join(["vllm", "serve", str(merged), "--served-model-name", "exp"])
    assert "--enable-lora" not in result.command and result.max_lora_rank is None
    assert len(result.problems) == 1 and result.problems[0].startswith("DoRA (use_dora: true)")
    assert "merged because vLLM refuses the adapter: DoRA" in (result.out / "serve.sh").read_text()
    assert not (result.out / "adapter_model.safetensors").exists()
    metrics = json.loads((run / "metrics.json").read_text())["merge"]
    assert metrics["passed"] and metrics["max_abs_diff"] <= metrics["atol"]
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).model.layers[0].self_attn.q_proj.weight
    folded = load_file(merged / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    assert not torch.allclose(base, folded)  # the DoRA update is in the served weights


def test_cli_prints_the_command_on_stdout(tiny_llama_dir, tmp_path):
    run = make_run(tmp_path, tiny_llama_dir, LoraSpec(r=8), lora(r=8))
    out = tmp_path / "ship"
    result = runner.invoke(app, ["export", str(run), "--for", "vllm", "--out", str(out), "--name", "a1",
                                 "--max-loras", "4"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    command = result.stdout.strip()
    assert command.startswith("vllm serve ") and f"--lora-modules {shlex.quote(f'a1={out.resolve()}')}" in command
    assert command.endswith("--max-lora-rank 8 --max-loras 4")
    assert (out / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("args, expected", [
    (["--for", "tgi"], "--for 'tgi': expected vllm"),
    (["--for", "vllm", "--name", "a b"], "--name 'a b': expected letters"),
    (["--for", "vllm", "--max-loras", "0"], "--max-loras 0: expected at least 1"),
])
def test_cli_bad_options_are_export_errors(tiny_llama_dir, tmp_path, args, expected):
    run = make_run(tmp_path, tiny_llama_dir, LoraSpec(r=8), lora(r=8))
    result = runner.invoke(app, ["export", str(run), *args])
    assert result.exit_code != 0 and isinstance(result.exception, ExportError)
    assert str(result.exception).startswith(expected)
    assert not (run / "export-vllm").exists()
