"""Planner vs measured peak training memory on this machine (issue 6, validation).

    flock /tmp/peftkit-measure.lock env PYTHONPATH=src .venv/bin/python benchmarks/plan_vs_measured.py
    ... --only 0,3 --steps 3 --json a.json     # a subset (keeps each hold of the lock short)
    ... --table a.json b.json                  # one table from the saved subsets

Trains each configuration below (methods × batch × sequence × checkpointing, on the built-in
`smollm2-135m` and `minilm-l6`) for a few optimizer steps, each in a fresh subprocess, and prints
the planner's prediction next to the measured peak, their ratio, and the median and worst error.
Most rows are a plain transformers/peft loop in fp32 (the planner's `path: stock`); the rows marked
"peftkit path" train as `peftkit train` does on a bf16 CPU (bf16 base under autocast, fp32 LoRA with
uncast inputs and fused dropout, chunked loss at labelled positions), planned with `path: peftkit`.

How "measured" is defined (CPU). Peak memory of a training run on CPU is the peak resident set
size of the process, but the process also holds the Python interpreter and the code of torch,
transformers, peft and bitsandbytes (about 0.5-1 GiB of RSS that no GPU would hold). So each worker
1. imports every library it will use, collects garbage, returns freed heap to the OS
   (`malloc_trim`) and reads RSS: the *baseline*;
2. loads the model, copies weights still backed by the checkpoint's memory map into its own memory
   (`peftkit.loading.own_memory_in_place`: a 4-bit load otherwise keeps the whole fp32 file
   resident as page cache), wraps
   it, builds the optimizer, trims the heap again, and resets the kernel's
   peak-RSS counter (`echo 5 > /proc/self/clear_refs`, Linux ≥ 4.0), so the transient of loading
   (file pages plus the copy being built) is not counted - it is not part of training, and on a GPU
   the load happens on the host;
3. trains `--steps` steps (the optimizer states appear at the first step, so from the second step
   on everything a long run holds is there) and reads the peak RSS (`VmHWM`).
measured = VmHWM − baseline: every byte the training run made resident, the analogue of
`torch.cuda.max_memory_allocated` plus what the runtime keeps.

One allocator effect is switched off: glibc's *dynamic* mmap threshold. By default, once a large
block (a tensor) is freed, glibc raises its mmap threshold to that size, so later tensors of up to
32 MiB come from the heap, which is not returned to the OS and fragments; the peak RSS then
depends on allocation order (a minilm-l6 LoRA run at batch 32 × 128 peaked at 2.7 and 3.7 GiB in
two identical runs, against 1.7 GiB with a fixed threshold). The workers run with
`MALLOC_MMAP_THRESHOLD_=65536`, so every tensor above 64 KiB is its own mapping and is returned
when freed - what PyTorch's CUDA caching allocator reports as allocated. `--default-malloc` measures
with glibc's default instead. The planner's
"runtime" term for a CPU is one constant measured once (see peftkit.plan.memory.CPU_RUNTIME_BYTES),
not fitted per configuration.

On a CUDA machine (`--device cuda`) the worker reports `torch.cuda.max_memory_allocated` after
`reset_peak_memory_stats` at the same point, and the planner is asked for the same device.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# (model, method, batch, seq, gradient checkpointing, optimizer, extra) — methods × batch × seq × GC.
CONFIGS: list[dict] = [
    {"model": "smollm2-135m", "method": "full", "batch": 2, "seq": 128, "gc": False},
    {"model": "smollm2-135m", "method": "full", "batch": 2, "seq": 128, "gc": True},
    {"model": "smollm2-135m", "method": "lora", "batch": 2, "seq": 256, "gc": False},
    {"model": "smollm2-135m", "method": "lora", "batch": 4, "seq": 256, "gc": True},
    {"model": "smollm2-135m", "method": "lora", "batch": 1, "seq": 512, "gc": False, "targets": "attention"},
    {"model": "smollm2-135m", "method": "qlora", "batch": 2, "seq": 256, "gc": False},
    {"model": "smollm2-135m", "method": "qlora", "batch": 1, "seq": 512, "gc": True},
    {"model": "smollm2-135m", "method": "dora", "batch": 1, "seq": 256, "gc": False},
    {"model": "minilm-l6", "method": "full", "batch": 16, "seq": 128, "gc": False},
    {"model": "minilm-l6", "method": "lora", "batch": 32, "seq": 128, "gc": False},
    {"model": "minilm-l6", "method": "lora", "batch": 32, "seq": 256, "gc": True},
    {"model": "minilm-l6", "method": "qlora", "batch": 16, "seq": 256, "gc": False},
    # peftkit train's own path: bf16 base under autocast, LoRA inputs uncast, dropout fused, chunked loss
    {"model": "smollm2-135m", "method": "lora", "batch": 8, "seq": 256, "gc": False, "path": "peftkit"},
    {"model": "smollm2-135m", "method": "lora", "batch": 4, "seq": 512, "gc": False, "path": "peftkit"},
    {"model": "minilm-l6", "method": "lora", "batch": 32, "seq": 256, "gc": False, "path": "peftkit"},
]
# glibc serves allocations above this from mmap and returns them on free (see the module docstring).
MMAP_THRESHOLD = 65536
DEFAULTS = {"rank": 16, "targets": "all-linear", "dropout": 0.05, "optimizer": "adamw", "num_labels": 5, "path": "stock"}


# ---------------------------------------------------------------- worker: one measured run ----
def _status_bytes(field: str) -> int:
    """A memory line of /proc/self/status (VmRSS: now, VmHWM: peak since the last reset) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _rss() -> int:
    return _status_bytes("VmRSS")


def _hwm() -> int:
    return _status_bytes("VmHWM")


def _settle() -> None:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure(cfg: dict, steps: int, device: str) -> dict:
    """Train `cfg` for `steps` steps in this (fresh) process; return measured bytes and timings."""
    import torch
    import transformers
    import peft  # noqa: F401  (imported before the baseline on purpose)

    if cfg["method"] == "qlora" or cfg["optimizer"] != "adamw":
        import bitsandbytes  # noqa: F401
    from peftkit.catalog.models import BUILTIN_MODELS, resolve_model

    torch.set_num_threads(cfg.get("threads", 2))
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    source = resolve_model(cfg["model"])
    causal = BUILTIN_MODELS[cfg["model"]].task == "causal-lm" if cfg["model"] in BUILTIN_MODELS else True
    _settle()
    baseline = _rss()

    peftkit_path = cfg["path"] == "peftkit"  # what peftkit.train does on the bf16 path (lora only here)
    kwargs: dict = {"dtype": torch.bfloat16 if peftkit_path else torch.float32}
    if cfg["method"] == "qlora":
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
            # a classifier's fresh head stays unquantized (peft trains a copy of it)
            llm_int8_skip_modules=None if causal else ["classifier"])
    if causal:
        model = transformers.AutoModelForCausalLM.from_pretrained(source, **kwargs)
    else:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=cfg["num_labels"], **kwargs)
    if device == "cuda":
        model.to("cuda")
    else:
        from peftkit.loading import own_memory_in_place

        own_memory_in_place(model)  # a 4-bit load otherwise keeps the whole fp32 file resident
    if cfg["method"] in ("lora", "qlora", "dora"):
        from peft import LoraConfig, TaskType, get_peft_model

        from peftkit.methods.lora import resolve_targets
        from peftkit.recipe import LoraSpec

        targets = resolve_targets(model, LoraSpec(r=cfg["rank"], target_modules=cfg["targets"]))
        model = get_peft_model(model, LoraConfig(
            r=cfg["rank"], lora_alpha=2 * cfg["rank"], lora_dropout=cfg["dropout"], target_modules=targets,
            use_dora=cfg["method"] == "dora", task_type=TaskType.CAUSAL_LM if causal else TaskType.SEQ_CLS))
    if peftkit_path:
        from peftkit.train.adapter_memory import fuse_lora_dropout_in_place
        from peftkit.train.speed import keep_trainable_fp32

        keep_trainable_fp32(model)
        fuse_lora_dropout_in_place(model)
    if cfg["gc"]:
        model.gradient_checkpointing_enable()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg["optimizer"] == "adamw":
        opt = torch.optim.AdamW(params, lr=1e-4)
    else:
        import bitsandbytes as bnb

        opt = {"adamw-8bit": bnb.optim.AdamW8bit, "paged-adamw": bnb.optim.PagedAdamW,
               "paged-adamw-8bit": bnb.optim.PagedAdamW8bit}[cfg["optimizer"]](params, lr=1e-4)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(3, vocab, (cfg["batch"], cfg["seq"]), generator=gen) for _ in range(steps)]
    labels = [torch.randint(0, cfg["num_labels"], (cfg["batch"],), generator=gen) for _ in range(steps)]
    _settle()
    loaded = _rss()
    open("/proc/self/clear_refs", "w").write("5")  # peak RSS := current RSS
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps):
        t = time.perf_counter()
        ids = batches[i].to(device)
        if peftkit_path:
            loss = _peftkit_loss(model, ids, labels[i], causal, device)
        else:
            loss = model(input_ids=ids, labels=ids if causal else labels[i].to(device)).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    out = {"peak_bytes": _hwm() - baseline, "loaded_bytes": loaded - baseline, "baseline_rss": baseline,
           "step_seconds": times, "loss": float(loss)}
    if device == "cuda":
        out["peak_bytes"] = torch.cuda.max_memory_allocated()
    return out


def _peftkit_loss(model, ids, labels, causal: bool, device: str):
    """One forward as peftkit.train runs it on the bf16 path: autocast, adapter inputs uncast, and for a
    causal LM the labelled-positions loss in chunks (every position labelled: the most logits it makes)."""
    import torch

    from peftkit.plan.memory import LOSS_CHUNK
    from peftkit.train.adapter_memory import adapter_inputs_uncast
    from peftkit.train.loss import labelled_positions_loss

    with adapter_inputs_uncast(model), torch.autocast(device, dtype=torch.bfloat16):
        if causal:
            return labelled_positions_loss(model, {"input_ids": ids, "labels": ids}, chunk=LOSS_CHUNK)
        return model(input_ids=ids, labels=labels.to(device)).loss


# ---------------------------------------------------------------- driver ----
def run_config(cfg: dict, steps: int, device: str, default_malloc: bool = False) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    if not default_malloc:
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg), "--steps", str(steps),
                           "--device", device], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed for {cfg}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plan_spec(cfg: dict, device: str):
    from peftkit.plan.memory import TrainPlanSpec

    return TrainPlanSpec(
        model=cfg["model"], method=cfg["method"], rank=cfg["rank"], targets=cfg["targets"],
        lora_dropout=cfg["dropout"], batch=cfg["batch"], seq=cfg["seq"], gradient_checkpointing=cfg["gc"],
        optimizer=cfg["optimizer"], dtype="bfloat16" if cfg["path"] == "peftkit" else "float32", device=device,
        num_labels=cfg["num_labels"], path=cfg["path"])


def predict(cfg: dict, device: str):
    from peftkit.plan.memory import plan_training

    return plan_training(plan_spec(cfg, device))


def calibrate(steps: int) -> None:
    """Measure the CPU runtime constant: a tiny model's training peak minus its (tiny) tensor terms."""
    import tempfile

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from peftkit.plan.memory import RUNTIME_BYTES

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=1)).save_pretrained(tmp)
        for method in ("full", "lora"):
            cfg = {**DEFAULTS, "model": tmp, "method": method, "batch": 1, "seq": 32, "gc": False}
            got = run_config(cfg, steps, "cpu")
            tensors = predict(cfg, "cpu").peak_bytes - RUNTIME_BYTES["cpu"]
            print(f"tiny {method}: measured {got['peak_bytes'] / 2**20:.1f} MiB, tensor terms {tensors / 2**20:.1f} MiB, "
                  f"runtime = {(got['peak_bytes'] - tensors) / 2**20:.1f} MiB")


def label(cfg: dict) -> str:
    extra = "" if cfg["targets"] == "all-linear" or cfg["method"] == "full" else f" {cfg['targets']}"
    return (f"{cfg['model']} {cfg['method']}{extra} b{cfg['batch']} s{cfg['seq']}"
            f"{' gc' if cfg['gc'] else ''}{'' if cfg['optimizer'] == 'adamw' else ' ' + cfg['optimizer']}"
            f"{' (peftkit path, bf16)' if cfg.get('path') == 'peftkit' else ''}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--only", help="comma-separated config indices")
    ap.add_argument("--json", help="also write the rows to this file (after each configuration)")
    ap.add_argument("--table", nargs="+", help="print the table of rows saved earlier with --json, and exit")
    ap.add_argument("--calibrate", action="store_true", help="measure the CPU runtime constant on a tiny model")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's dynamic mmap threshold on (heap caching counts as measured memory)")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(measure(json.loads(args.worker), args.steps, args.device)))
        return
    if args.calibrate:
        calibrate(args.steps)
        return

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from peftkit.plan.cost import flops_per_token

    console = Console()
    rows = []
    if args.table:  # only print the table of rows measured earlier (runs split to keep each lock short)
        for path in args.table:
            rows += json.loads(Path(path).read_text())
        print_table(rows, console, args.device, args.steps)
        return
    picked = [int(i) for i in args.only.split(",")] if args.only else range(len(CONFIGS))
    configs = [(i, {**DEFAULTS, **CONFIGS[i]}) for i in picked]
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("measuring", total=len(configs))
        for index, cfg in configs:
            bar.update(task, description=label(cfg))
            spec = plan_spec(cfg, args.device)
            plan = predict(cfg, args.device)
            got = run_config(cfg, args.steps, args.device, args.default_malloc)
            step = statistics.median(got["step_seconds"][1:] or got["step_seconds"])
            rows.append({"index": index, "config": cfg, "label": label(cfg), "predicted_bytes": plan.peak_bytes,
                         "predicted_components": plan.components, **got,
                         "ratio": plan.peak_bytes / got["peak_bytes"],
                         "gflops_per_second": flops_per_token(spec) * cfg["batch"] * cfg["seq"] / step / 1e9})
            if args.json:  # written after every configuration: an interrupted run keeps what it measured
                Path(args.json).write_text(json.dumps(rows, indent=1))
            bar.advance(task)
    print_table(rows, console, args.device, args.steps)


def print_table(rows: list[dict], console, device: str, steps: int) -> None:
    from rich.table import Table

    from peftkit.resources import human_bytes

    rows = sorted(rows, key=lambda r: r.get("index", 0))
    table = Table(title=f"planner vs measured peak training memory ({device}, {steps} steps)")
    for col in ("#", "configuration", "predicted", "measured", "pred/meas", "s/step", "GFLOP/s"):
        table.add_column(col, justify="left" if col == "configuration" else "right")
    for r in rows:
        table.add_row(str(r.get("index", "")), r["label"], human_bytes(r["predicted_bytes"]), human_bytes(r["peak_bytes"]),
                      f"{r['ratio']:.3f}", f"{statistics.median(r['step_seconds']):.2f}", f"{r['gflops_per_second']:.0f}")
    console.print(table)
    errors = [abs(r["ratio"] - 1) for r in rows]
    console.print(f"median |error| {100 * statistics.median(errors):.1f}%  worst |error| {100 * max(errors):.1f}% "
                  f"(targets: median <= 10%, worst <= 20%) over {len(rows)} configurations")


if __name__ == "__main__":
    main()
