"""Many GPUs and machines on existing engines: an accelerate config (FSDP or DeepSpeed) and its launch command.

    launch = plan_launch(recipe, DistributedSpec(engine="fsdp", gpus=8, nodes=2), "recipes/x.yaml", ["train.lr=1e-4"])
    launch.config                 # the accelerate config (a dict accelerate's ClusterConfig loads)
    write_launch(launch, path)    # the YAML file; launch.command is the exact `accelerate launch ...`

`peftkit train RECIPE --distributed fsdp|deepspeed --gpus N --nodes M --print-launch` writes the
config next to the runs and prints the command; every node runs the same command with its own
NODE_RANK and the first node's address in MAIN_IP. Each process runs `peftkit train` (transformers'
Trainer, which reads the engine from the environment `accelerate launch` sets), and all of them use
the run directory in PEFTKIT_RUN_DIR, which rank 0 alone writes (peftkit.train.processes).

What the configs hold, and why:
- FSDP (PyTorch FullyShardedDataParallel, FULL_SHARD, one unit per transformer layer): the settings
  PEFT documents for LoRA and QLoRA with FSDP (huggingface.co/docs/peft/accelerate/fsdp):
  `use_orig_params: false` (frozen and trainable weights in separate flat parameters, so only the
  adapter's gradients are kept), `cpu_ram_efficient_loading` + `sync_module_states` (rank 0 reads
  the checkpoint, the others receive it), sharded state dicts. With QLoRA, FSDP can only shard
  floating-point tensors, so the 4-bit weights must be packed in the compute dtype
  (`bnb_4bit_quant_storage: bfloat16`, the recipe's `method.quant_storage`).
- DeepSpeed ZeRO-2 (gradients and optimizer states sharded) or ZeRO-3 (weights too; `zero3_init_flag`
  so the model is built sharded). ZeRO-3 with QLoRA needs the same 16-bit quant storage; ZeRO-2 does
  not (weights are not sharded).
- `--cpu-offload`: FSDP `offload_params`; ZeRO `offload_optimizer_device: cpu` (+ `offload_param_device:
  cpu` for ZeRO-3). `peftkit plan --gpus N --strategy ... --cpu-offload` plans what is left per GPU.
- mixed precision: bf16 unless the recipe trains in fp32 (`train.precision: fp32`).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, model_validator

from peftkit.errors import PeftkitError
from peftkit.recipe import Spec

MAIN_PORT = 29500
# fsdp and zero3 shard the weights: 4-bit weights must then be packed in a float dtype
SHARDS_WEIGHTS = ("fsdp", "zero3")


class DistributedError(PeftkitError):
    """A multi-GPU launch that cannot be set up as asked (engine, sizes, method)."""


class DistributedSpec(Spec):
    """Where and how to run one training over many GPUs."""

    engine: Literal["fsdp", "deepspeed"] = Field(description="fsdp (PyTorch FSDP) or deepspeed (ZeRO).")
    gpus: int = Field(gt=0, description="GPUs (processes) per machine.")
    nodes: int = Field(1, gt=0, description="Machines; each runs the same command with its NODE_RANK.")
    zero_stage: Literal[2, 3] = Field(2, description="deepspeed: 2 shards gradients and optimizer states, 3 weights too.")
    cpu_offload: bool = Field(False, description="Offload to host memory what the engine can (see the module doc).")
    port: int = Field(MAIN_PORT, gt=0, lt=65536, description="Rendezvous port on the first machine.")

    @model_validator(mode="after")
    def _size(self) -> "DistributedSpec":
        if self.gpus * self.nodes < 2:
            raise ValueError(f"--gpus {self.gpus} --nodes {self.nodes}: one process in all; `peftkit train` alone "
                             "trains on one GPU")
        return self

    @property
    def strategy(self) -> str:
        """The planner's name for what is sharded (peftkit.plan.sharding)."""
        return "fsdp" if self.engine == "fsdp" else f"zero{self.zero_stage}"

    @property
    def processes(self) -> int:
        return self.gpus * self.nodes


@dataclass
class Launch:
    spec: DistributedSpec
    config: dict  # accelerate's config file, as ClusterConfig reads it
    config_path: Path
    command: str  # the exact command every node runs
    notes: list[str]


def accelerate_config(spec: DistributedSpec, mixed_precision: str) -> dict:
    """The accelerate config for `spec` (keys as `accelerate config` writes them)."""
    config = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "downcast_bf16": "no",
        "machine_rank": 0,
        "main_training_function": "main",
        "mixed_precision": mixed_precision,
        "num_machines": spec.nodes,
        "num_processes": spec.processes,  # all machines together
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
    }
    if spec.nodes > 1:
        config["main_process_port"] = spec.port
    if spec.engine == "fsdp":
        config["distributed_type"] = "FSDP"
        config["fsdp_config"] = {
            "fsdp_version": 1,
            "fsdp_sharding_strategy": "FULL_SHARD",
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_backward_prefetch": "BACKWARD_PRE",
            "fsdp_forward_prefetch": False,
            "fsdp_offload_params": spec.cpu_offload,
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_sync_module_states": True,
            "fsdp_use_orig_params": False,
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
        }
    else:
        offload = "cpu" if spec.cpu_offload else "none"
        ds = {"deepspeed_multinode_launcher": "standard", "zero_stage": spec.zero_stage,
              "offload_optimizer_device": offload}
        if spec.zero_stage == 3:
            ds |= {"offload_param_device": offload, "zero3_init_flag": True, "zero3_save_16bit_model": True}
        config["distributed_type"] = "DEEPSPEED"
        config["deepspeed_config"] = ds
    return config


def plan_launch(recipe, spec: DistributedSpec, recipe_arg: str, overrides: list[str],
                runs_dir: Path | None = None) -> Launch:
    """The accelerate config and launch command that train `recipe` (given on the command line as
    `recipe_arg` with `overrides`) on `spec`; nothing is written or started."""
    notes: list[str] = []
    kind = recipe.method.kind
    if kind == "qlora" and spec.strategy in SHARDS_WEIGHTS:
        storage = recipe.method.quant_storage
        if storage not in ("bfloat16", "float16", "float32"):
            raise DistributedError(f"method.quant_storage: {storage}: {spec.strategy} shards only floating-point "
                                   "tensors, and QLoRA packs its 4-bit weights in uint8 by default; set "
                                   "method.quant_storage: bfloat16 (same bits and memory), or use --distributed "
                                   "deepspeed --zero-stage 2, which does not shard the weights")
    if kind == "full" and spec.strategy == "zero2" and spec.cpu_offload:
        notes.append("ZeRO-2 offload keeps the full model on every GPU; only gradients and optimizer states move")
    precision = getattr(recipe.train, "precision", "auto")
    mixed = "no" if precision == "fp32" else "bf16"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    runs = Path(runs_dir if runs_dir is not None else recipe.output.runs_dir)
    config_path = runs / f"{recipe.name}-accelerate-{spec.strategy}-{spec.nodes}x{spec.gpus}.yaml"
    run_dir = runs / f"{recipe.name}-{stamp}"
    return Launch(spec, accelerate_config(spec, mixed), config_path,
                  launch_command(spec, config_path, run_dir, recipe_arg, overrides), notes)


def launch_command(spec: DistributedSpec, config_path: Path, run_dir: Path, recipe_arg: str,
                   overrides: list[str]) -> str:
    """`accelerate launch ... -m peftkit.cli train RECIPE --processes N [--set ...]` for every node.

    `--processes` is the world size, so each `peftkit train` knows it is one worker of a launched job.
    """
    from peftkit.train.processes import RUN_DIR_ENV

    parts = [f"{RUN_DIR_ENV}={shlex.quote(str(run_dir))}", "accelerate", "launch", "--config_file", str(config_path),
             "--num_machines", str(spec.nodes), "--num_processes", str(spec.processes)]
    if spec.nodes > 1:
        parts += ["--machine_rank", '"$NODE_RANK"', "--main_process_ip", '"$MAIN_IP"', "--main_process_port",
                  str(spec.port)]
    parts += ["-m", "peftkit.cli", "train", shlex.quote(recipe_arg), "--processes", str(spec.processes)]
    for item in overrides:
        parts += ["--set", shlex.quote(item)]
    return " ".join(parts)


def write_launch(launch: Launch) -> Path:
    """Write the accelerate config YAML; returns its path."""
    launch.config_path.parent.mkdir(parents=True, exist_ok=True)
    launch.config_path.write_text(yaml.safe_dump(launch.config, sort_keys=True), encoding="utf-8")
    return launch.config_path
