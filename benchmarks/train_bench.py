"""Training speed: the stock trl + peft recipe against peftkit's default, each in its own process.

    python benchmarks/train_bench.py                       # SFT: (a) stock fp32, (b) stock bf16+packing, (c) peftkit
    python benchmarks/train_bench.py --suite classify      # bbc-news on minilm-l6: stock fp32 Trainer vs peftkit
    python benchmarks/train_bench.py --suite qlora         # 4-bit NF4 base: stock QLoRA recipe (bf16 compute as the
                                                           # docs show it, and fp32 compute) vs peftkit's training path

SFT suite (issue 7): same data (built-in `chatterbot`, chat format, peftkit's seeded split), model
(`smollm2-135m`), LoRA (r=16, alpha=32, dropout 0.05, all-linear), batch 8, max length 256, 40
optimizer steps, lr 2e-4, seed 42, 2 threads:
  (a) stock: exactly the trl/peft docs recipe (`SFTTrainer(model, args=SFTConfig(...), peft_config=...)`),
      fp32 (`bf16=False`, the one change a CPU needs), no packing; trl's other defaults kept
      (activation checkpointing on, its fused LM head over every position, entropy/accuracy metrics);
  (b) the same with `bf16=True` (plus `use_cpu=True` on a machine without CUDA, which transformers
      requires for bf16 on CPU)
      and `packing=True`: the best a user can switch on by hand;
  (c) `peftkit.train()` with the recipe's defaults for speed (`train.precision/packing/...: auto`);
  (d) optional (`--configs`): the same with `train.gradient_checkpointing=on`;
  (e) optional: (c) on glibc's malloc with its dynamic mmap threshold (peftkit.train.allocator switched off);
  (f) optional: (c) on glibc's malloc as peftkit tunes it, i.e. on a machine without jemalloc (peftkit.launch).
peftkit's configs start the way `peftkit train` does: re-executed on jemalloc when the machine has it
(`apt-get install libjemalloc2`), on glibc's malloc otherwise; the stock configs keep the system's malloc.
Each reports real (non-padding) tokens per second of training, seconds per optimizer step, peak
resident memory of its process up to the end of training, and the eval loss after training: the
mean next-token cross-entropy over the answer tokens of the validation split, computed the same
way for all three (fp32, full logits, batches of 8). Ratios (c)/(a) and (c)/(b) close the table.

Each run also reports its model-FLOPs utilisation (MFU): model FLOPs per real token
(`peftkit.plan.cost.flops_per_token`: 2N forward + attention, the same again for the input
gradients of the frozen weights, nothing for recomputation) times real tokens per second, divided
by the fastest matrix product the same process measures right after training (the better of fp32
and bf16, up to 2048-cubed on CPU, 8192-cubed on CUDA). The FLOPs per token are the same for every
config of a suite, so MFU ratios equal tokens/s ratios; the absolute figure says how far from the
machine's ceiling a config runs.

Run it alone on the machine (`flock /tmp/peftkit-measure.lock python benchmarks/train_bench.py`):
it takes about 20 minutes on 2 cores. `--steps` and `--configs` shorten it for a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITES = {
    "sft": ["a_stock_fp32", "b_stock_bf16_packing", "c_peftkit"],  # --configs ...,d_peftkit_checkpointing adds (d)
    "classify": ["stock_fp32", "peftkit"],
    "qlora": ["stock_qlora", "stock_qlora_fp32", "peftkit_qlora"],
}
LABELS = {
    "a_stock_fp32": "(a) stock trl+peft, fp32",
    "b_stock_bf16_packing": "(b) stock + bf16 + packing",
    "c_peftkit": "(c) peftkit default",
    "d_peftkit_checkpointing": "(d) peftkit, gradient_checkpointing=on",
    "e_peftkit_glibc_default": "(e) peftkit, glibc's own mmap threshold",
    "f_peftkit_system_malloc": "(f) peftkit on glibc malloc (no jemalloc)",
    "stock_fp32": "stock Trainer+peft, fp32",
    "peftkit": "peftkit default",
    "stock_qlora": "stock QLoRA (nf4, bf16 compute)",
    "stock_qlora_fp32": "stock QLoRA, fp32 compute",
    "peftkit_qlora": "peftkit path on the same nf4 base",
    "peftkit_qlora_system_malloc": "peftkit nf4, glibc malloc (no jemalloc)",
    "peftkit_system_malloc": "peftkit, glibc malloc (no jemalloc)",
    "peftkit_jemalloc_decay": "peftkit, jemalloc returning freed pages (decay on)",
}
# peftkit's configs that keep the system's malloc (no relaunch on jemalloc)
SYSTEM_MALLOC = {"e_peftkit_glibc_default", "f_peftkit_system_malloc", "peftkit_qlora_system_malloc",
                 "peftkit_system_malloc"}


def matmul_peak_gflops() -> dict:
    """Best GFLOP/s of a square matrix product per dtype on the device training used (after warm-up).

    Each dtype's size is picked from a 512-cubed trial so one product takes about half a second (at most
    2048-cubed on CPU, 8192-cubed on CUDA): CPUs without native bf16 emulate it at a few GFLOP/s.
    """
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    largest = 8192 if device == "cuda" else 2048

    def seconds(n: int, dtype, repeats: int) -> float:
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        best = float("inf")
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            a @ b
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - started)
        return best

    out = {"device": device}
    for dtype in (torch.float32, torch.bfloat16):
        trial = 2 * 512**3 / seconds(512, dtype, 2)  # FLOP/s at 512-cubed
        n = int(min(largest, max(512, (0.25 * trial) ** (1 / 3))) // 256 * 256)
        out[str(dtype).removeprefix("torch.")] = 2 * n**3 / seconds(n, dtype, 4) / 1e9
    return out


def model_flops_per_token(args, result: dict) -> float:
    """Training FLOPs per real token for `result`'s run, the planner's formula (see the module docstring).

    Model, batch and length cap are the suite's recipe (every config of a suite runs its settings); attention's
    context is the mean real tokens per row (packed rows count as their full length).
    """
    from peftkit.plan.cost import flops_per_token
    from peftkit.plan.memory import TrainPlanSpec

    classify = args.suite == "classify"
    recipe = (classify_recipe if classify else sft_recipe)(args, Path(tempfile.gettempdir()))
    batch, cap = recipe["train"]["batch_size"], recipe["data"]["max_length"]
    seq = max(1, min(cap, round(result["tokens"] / (result["steps"] * batch))))
    task = {"task": "sequence-classification", "num_labels": result["num_labels"]} if classify else {"task": "causal-lm"}
    return flops_per_token(TrainPlanSpec(model=recipe["model"]["name"], seq=seq, **task))


def peak_rss_gib() -> float:
    from peftkit.resources import peak_rss_bytes

    return peak_rss_bytes() / 1024**3


# ----------------------------------------------------------------------------------------------- data


def sft_recipe(args, work: Path) -> dict:
    """peftkit's recipe with the benchmark's settings (its speed fields left at their defaults)."""
    return {
        "name": "train-bench",
        "model": {"name": "smollm2-135m", "dtype": "float32"},
        "data": {"dataset": "chatterbot", "split": {"val": 0.1, "test": 0.1, "seed": 0}, "max_length": 256},
        "method": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
        "train": {"max_steps": args.steps, "batch_size": 8, "lr": 2e-4, "warmup_ratio": 0.0, "seed": 42,
                  "log_every": 10, "eval_every": 0, "threads": args.threads},
        "output": {"runs_dir": str(work / "runs"), "run_id": "c", "mlflow": False},
    }


def classify_recipe(args, work: Path) -> dict:
    from peftkit.recipe import load_recipe

    recipe = load_recipe("bbc-news-lora").model_dump(mode="json")
    recipe["train"].update(max_steps=args.steps, eval_every=0, threads=args.threads)
    recipe["output"] = {"runs_dir": str(work / "runs"), "run_id": "c", "mlflow": False}
    return recipe


def prepared(recipe_dict: dict, work: Path):
    """peftkit's seeded split of the recipe's data (the same split peftkit.train makes)."""
    from peftkit.data.prepare import prepare_data
    from peftkit.recipe import load_recipe

    recipe = load_recipe(recipe_dict)
    return recipe, prepare_data(recipe.data, work / "data")


def sft_pairs(prep, split: str) -> list[dict]:
    from peftkit.data.prepare import read_split
    from peftkit.data.records import to_prompt_completion

    return [to_prompt_completion(r, prep.task, prep.instruction) for r in read_split(prep.data_dir, split)]


# ----------------------------------------------------------------------------------------------- eval


def sft_eval_loss(model, tokenizer, pairs: list[dict], max_length: int = 256, batch: int = 8) -> float:
    """Mean next-token CE over answer tokens of `pairs`: fp32, full logits, padded batches."""
    import torch

    from peftkit.train.tokens import sft_token_dataset

    ds = sft_token_dataset(pairs, tokenizer, max_length)
    model = model.float().eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ds), batch):
            rows = ds[i:i + batch]
            width = max(map(len, rows["input_ids"]))
            ids = torch.tensor([r + [0] * (width - len(r)) for r in rows["input_ids"]])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows["input_ids"]])
            labels = torch.tensor([r + [-100] * (width - len(r)) for r in rows["labels"]])
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            total += torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="sum").item()
            count += int((target != -100).sum())
    return total / count


def classify_eval(model, tokenizer, prep, max_length: int) -> dict:
    import torch

    from peftkit.data.prepare import read_split

    rows = read_split(prep.data_dir, "val")
    label2id = {label: i for i, label in enumerate(prep.labels)}
    model = model.float().eval()
    total, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), 32):
            part = rows[i:i + 32]
            enc = tokenizer([r["text"] for r in part], truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt")
            y = torch.tensor([label2id[r["label"]] for r in part])
            logits = model(**enc).logits.float()
            total += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(-1) == y).sum())
    return {"eval_loss": total / len(rows), "eval_accuracy": correct / len(rows), "num_labels": len(prep.labels)}


# ----------------------------------------------------------------------------------------------- children


def stock_sft(args, work: Path, bf16: bool, packing: bool, quantized: bool = False,
              compute_dtype: str = "bfloat16") -> dict:
    """The docs recipe: AutoModelForCausalLM + LoraConfig + SFTTrainer(peft_config=...), trl defaults.

    quantized: the QLoRA docs' BitsAndBytesConfig (nf4, double quantization, `compute_dtype` compute)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from peftkit.catalog.models import resolve_model

    recipe, prep = prepared(sft_recipe(args, work), work)
    path = resolve_model("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(path)
    load = {}
    if quantized:
        from transformers import BitsAndBytesConfig

        load["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, compute_dtype))
    model = AutoModelForCausalLM.from_pretrained(path, **load)
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    config = SFTConfig(
        output_dir=str(work / "out"), per_device_train_batch_size=8, per_device_eval_batch_size=8, max_length=256,
        max_steps=args.steps, learning_rate=2e-4, seed=42, logging_steps=10, save_strategy="no", report_to="none",
        bf16=bf16, use_cpu=bf16 and not torch.cuda.is_available(), packing=packing, disable_tqdm=True,
        # measurement only: packed rows have no padding and no attention mask, so count every token there
        include_num_input_tokens_seen="all" if packing else "non_padding",
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(sft_pairs(prep, "train")),
                         peft_config=peft_config, processing_class=tokenizer)
    out = trainer.train()
    result = {"train_seconds": out.metrics["train_runtime"], "steps": trainer.state.global_step,
              "tokens": trainer.state.num_input_tokens_seen, "peak_rss_gib": peak_rss_gib(),
              "checkpointing": bool(config.activation_checkpointing)}
    model = trainer.model
    if quantized:  # 4-bit layers cannot be cast to fp32; evaluate them as trained (bf16 compute)
        result["eval_loss"] = sft_eval_loss_quantized(model, tokenizer, sft_pairs(prep, "val")[: args.eval_examples])
    else:
        result["eval_loss"] = sft_eval_loss(model, tokenizer, sft_pairs(prep, "val")[: args.eval_examples])
    return result


def sft_eval_loss_quantized(model, tokenizer, pairs):
    """Like sft_eval_loss, for a model whose base is 4-bit: no dtype cast (the LoRA weights are fp32)."""
    model.float = lambda: model  # 4-bit weights stay as they are
    return sft_eval_loss(model, tokenizer, pairs)


def peftkit_sft(args, work: Path, overrides: dict | None = None, keep_glibc_default: bool = False) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peftkit.catalog.models import resolve_model
    from peftkit.train.run import train

    recipe_dict = sft_recipe(args, work)
    recipe_dict["train"].update(overrides or {})
    recipe, prep = prepared(recipe_dict, work)  # the same split peftkit.train makes (checked below)
    if keep_glibc_default:  # (e): what peftkit.train.allocator's fixed mmap threshold is worth
        import peftkit.train.allocator as allocator

        allocator.return_freed_memory_in_place = lambda *a, **k: False
    result = train(recipe)
    m = result.metrics
    out = {"train_seconds": m["train_seconds"], "steps": m["steps"], "tokens": m["train_tokens"],
           "peak_rss_gib": peak_rss_gib(), "plan": m["speed"]}
    same = (prep.data_dir / "train.jsonl").read_bytes() == (result.run_dir / "data" / "train.jsonl").read_bytes()
    assert same, "peftkit.train split differs from the benchmark's"
    path = resolve_model("smollm2-135m")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), result.run_dir / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(path)
    out["eval_loss"] = sft_eval_loss(model, tokenizer, sft_pairs(prep, "val")[: args.eval_examples])
    return out


def peftkit_qlora(args, work: Path) -> dict:
    """peftkit's default training path with `method.kind: qlora` (nf4, double quantization, compute dtype
    following the precision plan), the same LoRA settings as the stock QLoRA run; evaluated on its 4-bit base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peftkit.catalog.models import resolve_model
    from peftkit.methods import base_quantization
    from peftkit.train.run import train

    recipe_dict = sft_recipe(args, work)
    recipe_dict["method"] = {**recipe_dict["method"], "kind": "qlora"}
    recipe, prep = prepared(recipe_dict, work)
    result = train(recipe)
    m = result.metrics
    out = {"train_seconds": m["train_seconds"], "steps": m["steps"], "tokens": m["train_tokens"],
           "peak_rss_gib": peak_rss_gib(), "plan": m["speed"]}
    path = resolve_model("smollm2-135m")
    quant = base_quantization(recipe.method, "causal-lm", m["speed"]["precision"])  # the base it trained on
    base = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant)
    model = PeftModel.from_pretrained(base, result.run_dir / "adapter")
    out["eval_loss"] = sft_eval_loss_quantized(model, AutoTokenizer.from_pretrained(path),
                                               sft_pairs(prep, "val")[: args.eval_examples])
    return out


def stock_classify(args, work: Path) -> dict:
    """peft's sequence-classification example: fp32 Trainer, DataCollatorWithPadding, no length grouping."""
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments, set_seed)

    from peftkit.catalog.models import resolve_model
    from peftkit.data.prepare import read_split
    from peftkit.train.classify import tokenize_for_classification

    recipe, prep = prepared(classify_recipe(args, work), work)
    path = resolve_model("minilm-l6")
    tokenizer = AutoTokenizer.from_pretrained(path)
    set_seed(42)  # the new classifier head's init: Trainer seeds only after the model exists (runs differed by 0.08)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(prep.labels))
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=recipe.method.r, lora_alpha=recipe.method.alpha,
                                             lora_dropout=recipe.method.dropout, target_modules="all-linear"))
    train_ds = tokenize_for_classification(read_split(prep.data_dir, "train"), tokenizer, prep.labels,
                                           recipe.data.max_length)
    targs = TrainingArguments(output_dir=str(work / "out"), per_device_train_batch_size=recipe.train.batch_size,
                              max_steps=args.steps, learning_rate=recipe.train.lr, seed=42, save_strategy="no",
                              report_to="none", disable_tqdm=True, logging_steps=10,
                              include_num_input_tokens_seen="non_padding")
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, data_collator=DataCollatorWithPadding(tokenizer),
                      processing_class=tokenizer)
    out = trainer.train()
    padded = out.metrics["train_runtime"]
    res = {"train_seconds": padded, "steps": trainer.state.global_step, "tokens": trainer.state.num_input_tokens_seen,
           "peak_rss_gib": peak_rss_gib()}
    res.update(classify_eval(model, tokenizer, prep, recipe.data.max_length))
    return res


def peftkit_classify(args, work: Path, jemalloc_decay: bool = False) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from peftkit.catalog.models import resolve_model
    from peftkit.train.run import train

    recipe_dict = classify_recipe(args, work)
    recipe, prep = prepared(recipe_dict, work)
    if jemalloc_decay:  # what train.allocator.keep_freed_memory_for_reuse is worth on jemalloc
        import peftkit.train.allocator as allocator

        allocator.keep_freed_memory_for_reuse = lambda: False
    result = train(recipe)
    m = result.metrics
    out = {"train_seconds": m["train_seconds"], "steps": m["steps"], "tokens": m["train_tokens"],
           "peak_rss_gib": peak_rss_gib(), "plan": m["speed"]}
    path = resolve_model("minilm-l6")
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(prep.labels))
    model = PeftModel.from_pretrained(base, result.run_dir / "adapter")
    out.update(classify_eval(model, AutoTokenizer.from_pretrained(path), prep, recipe.data.max_length))
    return out


CHILDREN = {
    "a_stock_fp32": lambda a, w: stock_sft(a, w, bf16=False, packing=False),
    "b_stock_bf16_packing": lambda a, w: stock_sft(a, w, bf16=True, packing=True),
    "c_peftkit": peftkit_sft,
    "d_peftkit_checkpointing": lambda a, w: peftkit_sft(a, w, {"gradient_checkpointing": "on"}),
    "e_peftkit_glibc_default": lambda a, w: peftkit_sft(a, w, keep_glibc_default=True),
    "f_peftkit_system_malloc": peftkit_sft,
    "stock_fp32": stock_classify,
    "peftkit": peftkit_classify,
    "stock_qlora": lambda a, w: stock_sft(a, w, bf16=False, packing=False, quantized=True),
    # what a CPU user without bf16 hardware would change by hand: the compute dtype
    "stock_qlora_fp32": lambda a, w: stock_sft(a, w, bf16=False, packing=False, quantized=True,
                                               compute_dtype="float32"),
    "peftkit_qlora": peftkit_qlora,
    "peftkit_qlora_system_malloc": peftkit_qlora,
    "peftkit_system_malloc": peftkit_classify,
    "peftkit_jemalloc_decay": lambda a, w: peftkit_classify(a, w, jemalloc_decay=True),
}


def run_child(args) -> None:
    if not args.child.startswith(("a_", "b_", "stock")) and args.child not in SYSTEM_MALLOC:
        from peftkit.launch import relaunch_with_preferred_allocator

        relaunch_with_preferred_allocator()  # peftkit's configs start as `peftkit train` does: on jemalloc if here
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix=f"bench-{args.child}-") as tmp:
        result = CHILDREN[args.child](args, Path(tmp))
    result["matmul_gflops"] = matmul_peak_gflops()  # the ceiling, measured in this process after its run
    from peftkit.launch import active_allocator

    result["allocator"] = active_allocator()
    print("RESULT " + json.dumps(result))


# ----------------------------------------------------------------------------------------------- parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="sft")
    parser.add_argument("--configs", help="comma-separated subset of the suite's configs (default: all)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-examples", type=int, default=160, help="validation examples scored after training")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return run_child(args)

    from rich.console import Console
    from rich.table import Table

    console = Console()
    names = args.configs.split(",") if args.configs else SUITES[args.suite]
    results = {}
    for name in names:
        console.print(f"[bold]{LABELS[name]}[/bold] ({args.steps} steps, {args.threads} threads) ...")
        cmd = [sys.executable, __file__, "--child", name, "--suite", args.suite, "--steps", str(args.steps),
               "--threads", str(args.threads), "--eval-examples", str(args.eval_examples)]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            console.print(proc.stdout[-3000:], proc.stderr[-6000:])
            raise SystemExit(f"{name} failed (exit {proc.returncode})")
        r = json.loads(lines[-1][len("RESULT "):])
        r["tokens_per_second"] = r["tokens"] / r["train_seconds"]
        r["seconds_per_step"] = r["train_seconds"] / r["steps"]
        r["process_seconds"] = time.perf_counter() - started
        r["model_gflops_per_second"] = model_flops_per_token(args, r) * r["tokens_per_second"] / 1e9
        peak = max(v for k, v in r["matmul_gflops"].items() if k != "device")
        r["mfu"] = r["model_gflops_per_second"] / peak
        results[name] = r
        console.print(f"  {r['tokens_per_second']:.0f} tok/s, {r['seconds_per_step']:.2f} s/step, "
                      f"peak RSS {r['peak_rss_gib']:.2f} GiB, eval loss {r['eval_loss']:.4f}, malloc: {r['allocator']}")
        peaks = r["matmul_gflops"]
        console.print(f"  {r['model_gflops_per_second']:.1f} model GFLOP/s = MFU {100 * r['mfu']:.1f}% of "
                      f"{peak:.0f} GFLOP/s ({peaks['device']} matmul peak here: "
                      f"fp32 {peaks['float32']:.0f}, bf16 {peaks['bfloat16']:.1f})")

    table = Table(title=f"train_bench --suite {args.suite}: {args.steps} steps, {args.threads} threads")
    for col in ("config", "real tokens", "tokens/s", "s/step", "peak RSS GiB", "MFU", "eval loss"):
        table.add_column(col, justify="right" if col != "config" else "left")
    for name, r in results.items():
        extra = f"  acc {r['eval_accuracy']:.3f}" if "eval_accuracy" in r else ""
        table.add_row(LABELS[name], f"{r['tokens']:,}", f"{r['tokens_per_second']:.0f}", f"{r['seconds_per_step']:.2f}",
                      f"{r['peak_rss_gib']:.2f}", f"{100 * r['mfu']:.1f}%", f"{r['eval_loss']:.4f}{extra}")
    console.print(table)
    stock = [n for n in names if n.startswith(("a_", "b_", "stock"))]
    for ours, base in [(o, b) for o in names if o not in stock for b in stock]:
        a, c = results[base], results[ours]
        speed = c["tokens_per_second"] / a["tokens_per_second"]
        console.print(
            f"{LABELS[ours]} / {LABELS[base]}: tokens/s [bold]{speed:.2f}x[/bold], "
            f"peak memory [bold]{c['peak_rss_gib'] / a['peak_rss_gib']:.2f}x[/bold], "
            f"eval loss {100 * (c['eval_loss'] / a['eval_loss'] - 1):+.2f}%"
        )
        # At 100% MFU (its model FLOPs at the matmul peak its process measured) it would run speed / mfu times
        # the baseline: a target above that needs fewer FLOPs or a faster number format, not a faster loop.
        console.print(f"  ceiling: at 100% of the matmul peak measured after {LABELS[ours]}, its model FLOPs "
                      f"allow at most {speed / c['mfu']:.2f}x {LABELS[base]}"
                      + (" (counting the full last layer, of which peftkit computes one token)" if
                         args.suite == "classify" else ""))
    if args.json:
        args.json.write_text(json.dumps({"suite": args.suite, "steps": args.steps, "threads": args.threads,
                                         "results": results}, indent=2))


if __name__ == "__main__":
    main()
