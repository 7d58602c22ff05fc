"""Accelerate configs for FSDP / DeepSpeed, checked by accelerate itself: ClusterConfig loads them, `accelerate
launch` validates them with the printed arguments and turns them into the environment its workers read."""

import shlex

import pytest
import yaml
from typer.testing import CliRunner

from peftkit.distributed import DistributedError, DistributedSpec, plan_launch, write_launch
from peftkit.recipe import load_recipe

RECIPE = "recipes/bbc-news-lora.yaml"


def _launch(tmp_path, method: str = "lora", extra: tuple[str, ...] = (), **spec):
    recipe = load_recipe(RECIPE, [f"method.kind={method}", f"output.runs_dir={tmp_path}", *extra])
    launch = plan_launch(recipe, DistributedSpec(**spec), RECIPE, ["train.lr=1e-4"])
    write_launch(launch)
    return launch


def _accelerate_env(launch) -> tuple[object, dict]:
    """What `accelerate launch` makes of the printed command: validated arguments and the workers' environment."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    words = shlex.split(launch.command.replace('"$NODE_RANK"', "0").replace('"$MAIN_IP"', "10.0.0.1"))
    args = launch_command_parser().parse_args(words[words.index("launch") + 1:])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate's launch_command does before building the DeepSpeed environment
        args.deepspeed_fields_from_accelerate_config = list(defaults.deepspeed_config.keys()) if defaults else []
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return args, env


def test_fsdp_config_is_accepted_by_accelerate(tmp_path):
    from accelerate.commands.config.config_args import ClusterConfig

    launch = _launch(tmp_path, engine="fsdp", gpus=8, nodes=2)
    loaded = ClusterConfig.from_yaml_file(str(launch.config_path))
    assert loaded.distributed_type.value == "FSDP"
    assert (loaded.num_processes, loaded.num_machines) == (16, 2)
    args, env = _accelerate_env(launch)
    assert args.use_fsdp and not args.use_deepspeed
    assert env["FSDP_SHARDING_STRATEGY"] == "FULL_SHARD"
    assert env["FSDP_USE_ORIG_PARAMS"] == "false" and env["FSDP_OFFLOAD_PARAMS"] == "false"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    words = shlex.split(launch.command)
    assert words[words.index("--processes") + 1] == "16"  # each worker knows the world size
    assert "--machine_rank" in words and words[words.index("--main_process_port") + 1] == "29500"
    assert words[-2:] == ["--set", "train.lr=1e-4"]
    assert words[0].startswith("PEFTKIT_RUN_DIR=") and str(tmp_path) in words[0]


@pytest.mark.parametrize("stage,offload", [(2, False), (3, True)])
def test_deepspeed_configs_are_accepted_by_accelerate(tmp_path, stage, offload):
    from accelerate.commands.config.config_args import ClusterConfig

    storage = ("method.quant_storage=bfloat16",) if stage == 3 else ()  # ZeRO-3 shards the weights: float storage
    launch = _launch(tmp_path, method="qlora", extra=storage, engine="deepspeed", gpus=2, zero_stage=stage,
                     cpu_offload=offload)
    loaded = ClusterConfig.from_yaml_file(str(launch.config_path))
    assert loaded.distributed_type.value == "DEEPSPEED"
    assert loaded.deepspeed_config["zero_stage"] == stage
    args, env = _accelerate_env(launch)
    assert args.use_deepspeed
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == str(stage)
    assert env["ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"] == ("cpu" if offload else "none")
    if stage == 3:
        assert env["ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"] == "cpu"
        assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "true"
    # one machine: no rendezvous address to fill in
    assert "--main_process_ip" not in launch.command and "main_process_port" not in loaded.to_dict()


def test_sharding_qlora_weights_needs_a_float_quant_storage(tmp_path):
    from peftkit.methods.qlora import quantization_config

    with pytest.raises(DistributedError, match="method.quant_storage: uint8: zero3 shards only floating-point"):
        _launch(tmp_path, method="qlora", engine="deepspeed", gpus=2, zero_stage=3)
    launch = _launch(tmp_path, method="qlora", extra=("method.quant_storage=bfloat16",), engine="fsdp", gpus=2)
    assert launch.config_path.is_file()
    recipe = load_recipe(RECIPE, ["method.kind=qlora", "method.quant_storage=bfloat16"])
    import torch
    assert quantization_config(recipe.method, precision="bf16").bnb_4bit_quant_storage == torch.bfloat16


def test_fsdp_offload_and_fp32_precision(tmp_path):
    recipe = load_recipe(RECIPE, [f"output.runs_dir={tmp_path}", "train.precision=fp32"])
    launch = plan_launch(recipe, DistributedSpec(engine="fsdp", gpus=2, cpu_offload=True), RECIPE, [])
    assert launch.config["fsdp_config"]["fsdp_offload_params"] is True
    assert launch.config["mixed_precision"] == "no"
    assert launch.notes == []  # LoRA: nothing to warn about


def test_one_process_is_refused():
    with pytest.raises(ValueError, match="one process"):
        DistributedSpec(engine="fsdp", gpus=1, nodes=1)


def test_cli_print_launch_writes_the_config_and_starts_nothing(tmp_path):
    from peftkit.cli import app

    result = CliRunner().invoke(app, ["train", RECIPE, "--distributed", "deepspeed", "--zero-stage", "3", "--gpus", "4",
                                      "--print-launch", "--set", f"output.runs_dir={tmp_path}"])
    assert result.exit_code == 0, result.output
    written = list(tmp_path.glob("*-accelerate-zero3-1x4.yaml"))
    assert len(written) == 1
    assert yaml.safe_load(written[0].read_text())["deepspeed_config"]["zero_stage"] == 3
    assert "accelerate launch --config_file" in result.output and "--num_processes 4" in result.output
    assert not list(tmp_path.glob("bbc-news-lora-2*"))  # no run directory: nothing was started


def test_cli_rejects_an_unknown_engine(tmp_path):
    from peftkit.cli import app

    result = CliRunner().invoke(app, ["train", RECIPE, "--distributed", "horovod", "--gpus", "2", "--print-launch",
                                      "--set", f"output.runs_dir={tmp_path}"])
    assert result.exit_code != 0
    assert isinstance(result.exception, DistributedError) and "engine" in str(result.exception)
