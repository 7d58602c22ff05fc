"""`peftkit export RUN --for vllm`: the run's adapter as vLLM loads it, and the exact `vllm serve` command.

    result = export_for_vllm("runs/quickstart-20261123-101500")
    result.command   # vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --enable-lora
                     #   --lora-modules quickstart=/…/export-vllm/quickstart --max-lora-rank 16 --max-loras 1
    result = export_for_vllm(run, merge=True)   # parity-checked RUN/merged, served as a plain model

OUT (default RUN/export-vllm/<name>/) holds:
  adapter_config.json        RUN/adapter's, with base_model_name_or_path set to the base vLLM loads: a built-in's
                             hub id, or the model folder / hub id the recipe names (never a package's install path)
  adapter_model.safetensors  RUN/adapter's weights, copied byte for byte (sha256 compared)
  serve.sh                   the command, with the run, the weights' sha256 and any notes as comments
With `merge=True`, and for full fine-tuning (RUN/model), OUT holds serve.sh only: vLLM serves the model
folder itself under `--served-model-name <name>`, so clients ask for the same name either way.

vLLM cannot be installed beside peftkit's torch pin, so its rules are restated here from its source:
- vllm/lora/peft_helper.py, `PEFTHelper._validate_features` and `validate_legal`: refuses `modules_to_save`
  (the newest releases accept only a `classifier`/`score` head, on classification models), `use_dora`,
  `lora_bias`, `bias` other than "none", `init_lora_weights` strings other than gaussian, eva, orthogonal,
  mica, lora_ga (PiSSA, OLoRA, CorDA and LoftQ change the base weights when peft loads the adapter),
  aLoRA (`alora_invocation_tokens`), `layer_replication`, BD-LoRA (`use_bdlora`), QALoRA (`use_qalora`),
  and a largest rank (`r` and `rank_pattern`) above `--max-lora-rank`.
- vllm/config/lora.py, `MaxLoRARanks`: `--max-lora-rank` is one of 1, 8, 16, 32, 64, 128, 256, 320, 512.
  The adapter's rank need not be one of them (the rule is rank <= max_lora_rank), so the command rounds
  up to the smallest allowed value; only a rank above 512 is refused.
- vllm/lora/utils.py, `get_supported_lora_modules`, with `check_unexpected_modules` in vllm/lora/lora_model.py:
  LoRA goes on the linear layers (`LinearBase`) of the model; the output head (`lm_head` is a
  `ParallelLMHead`, not a `LinearBase`) and the embeddings (peft's `lora_embedding_A/B`) load only on some
  releases and models, so an export refuses them and loads on any release.
- only LoRA: peft_type LORA (`method.kind` lora or qlora).
Every reason is collected and raised together as one ExportError; each names the setting and the way
out: `--merge` where the kind is mergeable (RUN/merged is parity-checked by `peftkit.export.merge`),
else why not.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from safetensors import safe_open

from peftkit.catalog.models import BUILTIN_MODELS
from peftkit.errors import ExportError, MergeError
from peftkit.export.merge import NOT_MERGEABLE, OUTPUT_HEADS, check_mergeable, merge as merge_run
from peftkit.methods import MERGEABLE_KINDS
from peftkit.rundir import open_run, require

VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py MaxLoRARanks
# init_lora_weights strings vLLM accepts (peft_helper.py `_init_is_supported`): they only set the initial A, B
VLLM_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")
LORA_KINDS = ("lora", "qlora")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# peft's key of one LoRA tensor: <module>.lora_A.weight, <module>.lora_B.weight, <module>.lora_embedding_A
LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+?)\."
                      r"(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.|$)")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass
class VllmExport:
    out: Path                  # the folder written: adapter files (LoRA) and serve.sh
    command: str               # the exact `vllm serve …` command
    base: str                  # what vLLM loads as the model: hub id, model folder, RUN/merged or RUN/model
    rank: int | None           # the adapter's largest rank (None when a whole model is served)
    max_lora_rank: int | None  # the --max-lora-rank of the command
    problems: list[str] = field(default_factory=list)  # with merge=True: what vLLM refuses in RUN/adapter, now merged
    notes: list[str] = field(default_factory=list)     # what the user should know before serving (also in serve.sh)


# ------------------------------------------------------------------------------------- rules


def max_lora_rank_for(rank: int) -> int | None:
    """The smallest `--max-lora-rank` vLLM accepts that holds an adapter of `rank`; None above 512."""
    return next((allowed for allowed in VLLM_MAX_LORA_RANKS if allowed >= rank), None)


def adapter_rank(config: dict) -> int:
    """The largest rank in an adapter_config.json: `r`, or a larger per-module `rank_pattern` value."""
    return max([int(config.get("r", 0)), *(int(v) for v in (config.get("rank_pattern") or {}).values())])


def unsupported_modules(tensor_names: list[str]) -> list[str]:
    """The adapted modules vLLM does not put LoRA on (output heads, embeddings), as short names (e.g. lm_head)."""
    found = set()
    for key in tensor_names:
        m = LORA_KEY.match(key)
        if m is None:
            continue
        module = m["module"]
        leaf = module.rsplit(".", 1)[-1]
        if leaf in OUTPUT_HEADS or m["part"].startswith("lora_embedding"):
            found.add(leaf)
    return sorted(found)


def adapter_problems(config: dict, tensor_names: list[str]) -> list[str]:
    """Every setting of a LoRA adapter that vLLM refuses, from its parsed adapter_config.json and the keys of
    its adapter_model.safetensors: one message per reason naming the setting and its value; empty when vLLM
    loads the adapter."""
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type: {config.get('peft_type')!r}: vLLM serves LoRA adapters only")
    if config.get("use_dora"):
        problems.append("DoRA (use_dora: true): vLLM serves plain LoRA only; it has no magnitude vectors")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save: {list(config['modules_to_save'])} (whole modules trained beside LoRA, "
                        "e.g. a classifier head): vLLM loads only the LoRA A and B matrices")
    if config.get("bias", "none") != "none":
        problems.append(f"bias: {config['bias']!r} (the adapter trains biases of the base model): "
                        "vLLM refuses adapter biases")
    if config.get("lora_bias"):
        problems.append("lora_bias: true (a bias on each LoRA B matrix): vLLM refuses it")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in VLLM_INITS:
        problems.append(f"init_lora_weights: {init!r}: PiSSA, OLoRA, CorDA and LoftQ inits change the base weights when "
                        "peft loads the adapter, which vLLM does not do, so it refuses them (peftkit saves causal-LM "
                        "PiSSA/OLoRA adapters converted to plain LoRA; this one was saved unconverted)")
    for key, what in (("alora_invocation_tokens", "Activated LoRA (aLoRA)"), ("layer_replication", "layer replication"),
                      ("use_bdlora", "block-diagonal LoRA (BD-LoRA)"), ("use_qalora", "QALoRA")):
        if config.get(key):
            problems.append(f"{key}: {config[key]!r}: vLLM does not serve {what}")
    rank = adapter_rank(config)
    if max_lora_rank_for(rank) is None:
        problems.append(f"rank {rank} (r and rank_pattern): vLLM's --max-lora-rank goes up to {VLLM_MAX_LORA_RANKS[-1]} "
                        "and an adapter's rank must not exceed it; retrain with r <= 512")
    modules = unsupported_modules(tensor_names)
    if modules:
        problems.append(f"target modules {', '.join(modules)}: vLLM puts LoRA on the model's linear layers, not on its "
                        "output head or embeddings; retrain without them")
    return problems


def kind_problem(kind: str) -> str | None:
    """Why vLLM cannot serve RUN/adapter of a non-LoRA `kind` (None for lora/qlora and full)."""
    if kind in LORA_KINDS or kind == "full":
        return None
    if kind in MERGEABLE_KINDS:
        return f"method.kind: '{kind}': vLLM serves LoRA adapters only"
    return (f"method.kind: '{kind}': vLLM serves LoRA adapters only, and this kind cannot be merged into the base "
            f"either: {NOT_MERGEABLE.get(kind, 'unknown method kind')}")


def merge_way_out(kind: str, run_dir: Path) -> str:
    """The way out of a refusal for a mergeable kind: what `--merge` gives."""
    how = ("into the base reloaded in 16/32 bit (parity-checked; `peftkit merge` reports what leaving the 4-bit base costs)"
           if kind == "qlora" else "into the base exactly (parity-checked)")
    return f"`peftkit export {run_dir} --for vllm --merge` folds it {how}"


def serve_base(model_name: str) -> str:
    """What `vllm serve` loads for the recipe's `model.name`: a built-in's hub id, a local folder as an
    absolute path, a hub id as is (never the folder a built-in was resolved to on this machine)."""
    if model_name in BUILTIN_MODELS:
        return BUILTIN_MODELS[model_name].hub_id
    path = Path(model_name).expanduser()
    return str(path.resolve()) if path.exists() else model_name


def base_notes(model_name: str) -> list[str]:
    """What differs between the base peftkit trained on and the one vLLM will load."""
    model = BUILTIN_MODELS.get(model_name)
    if model is None or not model.gguf:
        return []
    return [f"model {model.name}: peftkit trained on weights dequantized from the package's {Path(model.subpath).name}; "
            f"{model.hub_id} holds the original weights, which differ from those by that quantization's rounding. "
            "`--merge` serves exactly the trained model"]


# ------------------------------------------------------------------------------------- export


def export_for_vllm(run_dir: str | Path, out: Path | None = None, name: str | None = None, merge: bool = False,
                    max_loras: int = 1, console: Console | None = None) -> VllmExport:
    """Write RUN's adapter (or, with `merge`, the parity-checked merged model) as vLLM serves it, and the command.

    Args:
        run_dir: a trained run directory.
        out: the folder to write; default RUN/export-vllm/<name>/.
        name: the model name clients request (`--lora-modules NAME=…`); default the recipe's name.
        merge: serve RUN/merged (made now by `peftkit.export.merge.merge`) instead of base + adapter.
        max_loras: `--max-loras`, how many adapters one batch may mix.
    Returns:
        The VllmExport: folder, command, base, ranks, refusals `merge` removed, notes.
    Raises:
        ExportError listing every reason vLLM would refuse RUN/adapter (or why the kind cannot be merged).
    """
    console = console or Console(stderr=True)
    run_dir, recipe = open_run(run_dir)
    run_dir = run_dir.resolve()
    name = name or recipe.name
    if not NAME.fullmatch(name):
        raise ExportError(f"--name {name!r}: expected letters, digits, '.', '_' or '-' (the model name clients request)")
    if max_loras < 1:
        raise ExportError(f"--max-loras {max_loras}: expected at least 1 (adapters one batch may mix)")
    out = Path(out if out is not None else run_dir / "export-vllm" / name).resolve()
    kind = recipe.method.kind

    if kind == "full":  # the whole tuned model: nothing to adapt or merge
        model_dir = require(run_dir, "model", "train")
        return _write_model_export(out, name, model_dir, [], run_dir, console)
    if merge:
        try:
            check_mergeable(kind)
        except MergeError as exc:
            raise ExportError(f"--merge: {exc}; vLLM cannot serve it either (it loads LoRA adapters only)") from None
        # what vLLM would have refused in RUN/adapter: recorded in serve.sh as the reason for serving RUN/merged
        problems = _problems(run_dir) if kind in LORA_KINDS else [kind_problem(kind)]
        result = merge_run(run_dir, console=console)
        return _write_model_export(out, name, Path(result["path"]), problems, run_dir, console)

    problem = kind_problem(kind)
    problems = [problem] if problem else _problems(run_dir)
    if problems:
        way_out = merge_way_out(kind, run_dir) if kind in MERGEABLE_KINDS else None
        error = ExportError(f"{run_dir / 'adapter'}: vLLM would refuse this adapter: "
                            + "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))
                            + (f". Way out: {way_out}" if way_out else ""))
        error.problems = [f"{p}; {way_out}" if way_out else p for p in problems]  # each with its way out
        raise error
    return _write_adapter_export(out, name, run_dir, recipe, max_loras, console)


def _problems(run_dir: Path) -> list[str]:
    """adapter_problems for RUN/adapter, read from its config and its safetensors header (no weights loaded)."""
    adapter_dir = require(run_dir, "adapter", "train")
    config, weights = _adapter_files(adapter_dir)
    with safe_open(weights, framework="pt") as f:
        names = list(f.keys())
    return adapter_problems(config, names)


def _adapter_files(adapter_dir: Path) -> tuple[dict, Path]:
    config_path, weights = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    if not config_path.is_file():
        raise ExportError(f"{config_path}: missing; RUN/adapter is not a PEFT adapter")
    if not weights.is_file():
        raise ExportError(f"{weights}: missing; peftkit exports safetensors adapters only (never pickled .bin files)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ExportError(f"{config_path}: not valid JSON ({exc})") from None
    return config, weights


def _write_adapter_export(out: Path, name: str, run_dir: Path, recipe, max_loras: int, console: Console) -> VllmExport:
    """Copy RUN/adapter to OUT with the serving base in its config; the `--enable-lora` command."""
    config, weights = _adapter_files(run_dir / "adapter")
    base = serve_base(recipe.model.name)
    rank = adapter_rank(config)
    max_rank = max_lora_rank_for(rank)
    out.mkdir(parents=True, exist_ok=True)
    config["base_model_name_or_path"] = base
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    shutil.copyfile(weights, out / "adapter_model.safetensors")
    digest = sha256(weights)
    if sha256(out / "adapter_model.safetensors") != digest:
        raise ExportError(f"{out / 'adapter_model.safetensors'}: the copy's sha256 differs from {weights}'s; disk full or "
                          "a concurrent write? Run the export again")

    args = ["vllm", "serve", base, "--enable-lora", "--lora-modules", f"{name}={out}",
            "--max-lora-rank", str(max_rank), "--max-loras", str(max_loras)]
    notes = base_notes(recipe.model.name)
    if recipe.method.kind == "qlora":
        # the adapter was trained on a 4-bit base: vLLM quantizes the base in flight with bitsandbytes too
        args += ["--quantization", "bitsandbytes"]
        notes.append("method qlora: `--quantization bitsandbytes` makes vLLM quantize the base to 4 bits in flight, "
                     "as training did, with vLLM's own bitsandbytes settings; `--merge` serves the 16/32-bit merged "
                     "model instead")
    command = shlex.join(args)
    _write_serve_sh(out, command, [f"run: {run_dir}", f"adapter_model.safetensors sha256: {digest}"], notes)
    export = VllmExport(out, command, base, rank, max_rank, [], notes)
    _print(console, export, f"wrote {out} (adapter r={rank} on {base}; weights sha256 {digest[:12]}…)")
    return export


def _write_model_export(out: Path, name: str, model_dir: Path, problems: list[str], run_dir: Path,
                        console: Console) -> VllmExport:
    """serve.sh for a whole model folder (RUN/merged or RUN/model): no LoRA flags."""
    notes = []
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    architectures = config.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        notes.append(f"{architectures[0]} is a classifier: vLLM serves it with its pooling runner (classification), "
                     "not the text-generation API; see vLLM's docs for the flag of your release")
    out.mkdir(parents=True, exist_ok=True)
    for stale in ADAPTER_FILES:  # left by an earlier adapter export to the same folder; serve.sh no longer uses them
        (out / stale).unlink(missing_ok=True)
    command = shlex.join(["vllm", "serve", str(model_dir.resolve()), "--served-model-name", name])
    comments = [f"run: {run_dir}"] + [f"merged because vLLM refuses the adapter: {p}" for p in problems]
    _write_serve_sh(out, command, comments, notes)
    export = VllmExport(out, command, str(model_dir.resolve()), None, None, list(problems), notes)
    _print(console, export, f"wrote {out / 'serve.sh'} (serves {model_dir} as a plain model named {name})")
    return export


def _write_serve_sh(out: Path, command: str, comments: list[str], notes: list[str]) -> None:
    lines = ["#!/bin/sh", "# Serve this peftkit run with vLLM (written by `peftkit export --for vllm`)."]
    lines += [f"# {c}" for c in comments] + [f"# note: {n}" for n in notes] + [f"exec {command}", ""]
    path = out / "serve.sh"
    path.write_text("\n".join(lines), encoding="utf-8")
    path.chmod(0o755)


def _print(console: Console, export: VllmExport, headline: str) -> None:
    console.print(headline, markup=False, highlight=False, soft_wrap=True)
    for note in export.notes:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    console.print(export.command, markup=False, highlight=False, soft_wrap=True)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
