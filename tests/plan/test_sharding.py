"""Per-GPU plans for DDP / ZeRO-2 / FSDP / ZeRO-3 / CPU and activation offload, the QLoRA terms found on CUDA,
and the planner against published figures it was not built from (benchmarks/plan_vs_published.py)."""

import json

import pytest
from typer.testing import CliRunner

from peftkit.plan.hardware import PlanError
from peftkit.plan.memory import TrainPlanSpec, plan_training
from peftkit.plan.sharding import PREFETCHED_LAYERS, STREAM_RESERVE

@pytest.fixture()
def full(tiny_llama_dir):
    return TrainPlanSpec(model=str(tiny_llama_dir), method="full", batch=2, seq=64, gradient_checkpointing=True)


def _plan(spec, **update):
    return plan_training(spec.model_copy(update=update))


def test_each_strategy_shards_what_it_should(full):
    one = plan_training(full)
    ddp, zero2, fsdp = (_plan(full, gpus=4, strategy=s) for s in ("ddp", "zero2", "fsdp"))
    c1 = one.components
    # DDP: everything replicated, plus the all-reduce buckets (a copy of the gradients)
    assert ddp.components["gradient buckets (DDP)"] == c1["gradients"]
    assert ddp.components["optimizer states"] == c1["optimizer states"]
    # ZeRO-2: gradients and optimizer states split four ways, weights whole
    assert zero2.components["optimizer states"] == -(-c1["optimizer states"] // 4)
    assert zero2.components["gradients"] == -(-c1["gradients"] // 4)
    assert zero2.components["weights bfloat16"] == c1["weights bfloat16"]
    # FSDP: the weights too, plus the layers gathered unsharded and the allocator's second stream
    assert abs(fsdp.components["weights bfloat16"] - c1["weights bfloat16"] / 4) <= 1
    assert fsdp.components["unsharded layers (all-gather)"] > 0
    assert fsdp.components["CUDA allocator reserve"] > STREAM_RESERVE * 0.9 * (fsdp.peak_bytes - fsdp.components["runtime"]) / (1 + STREAM_RESERVE)
    step = lambda plan: plan.phases["optimizer step"]  # noqa: E731 (the tiny model peaks at its logits otherwise)
    assert step(ddp) > step(one) > step(zero2) > step(_plan(full, gpus=8, strategy="zero2"))
    assert step(_plan(full, gpus=8, strategy="fsdp")) < step(fsdp)
    # activations belong to the per-GPU micro-batch: sharding leaves them alone
    assert fsdp.components["activations"] == ddp.components["activations"] == c1["activations"]


def test_cpu_offload_moves_the_state_off_the_gpu(full):
    zero2 = _plan(full, gpus=2, strategy="zero2", cpu_offload=True)
    assert zero2.components["optimizer states"] == zero2.components["gradients"] == 0
    assert zero2.components["weights bfloat16"] > 0  # ZeRO-2 keeps the weights
    fsdp = _plan(full, gpus=2, strategy="fsdp", cpu_offload=True)
    assert not any(v for k, v in fsdp.components.items() if k.startswith("weights"))
    assert any("optimistically" in n for n in fsdp.notes)
    with pytest.raises(PlanError, match="DDP keeps everything"):
        _plan(full, gpus=2, strategy="ddp", cpu_offload=True)


def test_activation_offload_keeps_two_layer_inputs():
    spec = TrainPlanSpec(model="llama-3.2-1b", method="lora", batch=1, seq=256, gradient_checkpointing=True)
    on, off = _plan(spec, activation_offload=True), plan_training(spec)
    assert on.components["activations"] < off.components["activations"]
    assert on.peak_bytes < off.peak_bytes
    with pytest.raises(PlanError, match="gradient checkpointing"):
        _plan(spec, activation_offload=True, gradient_checkpointing=False)


def test_qlora_terms_found_on_cuda():
    """prepare_model_for_kbit_training's fp32 upcast, the head's cast copy, the fp32 residual stream, and the
    allocator reserve; FSDP/ZeRO-3 plan one storage dtype (no upcast)."""
    spec = TrainPlanSpec(model="llama-3.2-1b", method="qlora", batch=1, seq=1024, gradient_checkpointing=True)
    plan = plan_training(spec)
    unquantized = plan.params["total"] - plan.params["quantized"]
    weights = plan.components["weights float32 (unquantized layers, kbit upcast)"]
    assert unquantized * 4 <= weights < unquantized * 4 + 2**20  # + buffers (rotary tables)
    assert plan.components["output head cast (kept for backward)"] == 128256 * 2048 * 2
    assert plan.components["float32 residual stream (checkpoints)"] == 16 * 1024 * 2048 * 2
    assert plan.components["CUDA allocator reserve"] == 1024 * 128256 * 4  # one fp32 copy of the logits
    assert plan.peak_bytes - plan.allocated_bytes == plan.components["CUDA allocator reserve"] + plan.components["runtime"]
    stock = _plan(spec, kbit_upcast=False)
    assert stock.peak_bytes < plan.peak_bytes and "weights bfloat16" in stock.components
    sharded = _plan(spec, gpus=2, strategy="fsdp")
    assert "weights bfloat16" in sharded.components  # bnb_4bit_quant_storage bf16: no fp32 layers to shard
    # bitsandbytes < 0.42 kept every 4-bit matmul's input: more activations without checkpointing
    legacy = _plan(spec, gradient_checkpointing=False, bnb_saves_inputs=True)
    assert legacy.components["activations"] > _plan(spec, gradient_checkpointing=False).components["activations"]


def test_against_published_single_and_multi_gpu_figures():
    """Two rows of benchmarks/plan_vs_published.py: Unsloth's README (Llama-3.1-8B QLoRA r=32 with HF + FA2
    fits 5,789 tokens on a 24 GB GPU) and PEFT's FSDP-QLoRA docs (Llama-2-70B, 2 GPUs: 35.6 GB per GPU)."""
    single = plan_training(TrainPlanSpec(model="llama-3.1-8b", method="qlora", rank=32, batch=1, seq=5789,
                                         gradient_checkpointing=True, optimizer="adamw-8bit", lora_dropout=0.0))
    assert -0.10 <= single.peak_bytes / 2**30 / 24 - 1 <= 0.15
    fsdp = plan_training(TrainPlanSpec(model="llama-2-70b", method="qlora", rank=8, batch=2, seq=2048, lora_dropout=0.1,
                                       gradient_checkpointing=True, gpus=2, strategy="fsdp"))
    assert -0.10 <= fsdp.peak_bytes / 35.6e9 - 1 <= 0.15
    assert fsdp.components["unsharded layers (all-gather)"] > PREFETCHED_LAYERS * 0.4e9  # two 4-bit 70B layers


def test_plan_cli_per_gpu():
    from peftkit.cli import app

    args = ["plan", "--model", "qwen2.5-0.5b", "--method", "full", "--gpu", "rtx-3090", "--json", "--seq", "64"]
    one = json.loads(CliRunner().invoke(app, args).output)
    four = CliRunner().invoke(app, args + ["--gpus", "4", "--strategy", "zero3"])
    assert four.exit_code == 0, four.output
    spec = json.loads(four.output)["plans"][0]["memory"]["spec"]
    assert (spec["gpus"], spec["strategy"]) == (4, "zero3")
    assert json.loads(four.output)["plans"][0]["memory"]["peak_bytes"] < one["plans"][0]["memory"]["peak_bytes"]
    bad = CliRunner().invoke(app, args + ["--gpus", "2", "--cpu-offload"])
    assert bad.exit_code != 0 and "DDP keeps everything" in str(bad.exception)
