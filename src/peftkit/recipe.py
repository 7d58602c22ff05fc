"""Recipes: YAML files validated by small pydantic models, one per concern.

A recipe says which model to adapt (`model`), on which data (`data`), with which PEFT method
(`method`), how to train (`train`), how to score (`eval`), merge (`export`) and where to write
(`output`). Every field has a visible default; `peftkit recipe show RECIPE` prints them all.

    recipe = load_recipe("recipes/quickstart.yaml", overrides=["train.lr=1e-4"])

Unknown keys are errors that name their full path (`train.learning_rate: unknown key`), so a
typo never silently becomes a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from peftkit.errors import RecipeError

TaskKind = Literal["extraction", "chat", "classification", "completion", "preference"]
RecordFormat = Literal["auto", "instruction", "chat", "completion", "preference", "classification", "extraction"]


class Spec(BaseModel):
    """Base of every spec: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(Spec):
    name: str = Field(description="Built-in name (`peftkit models`), a local model folder, or a hub id.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Storage and compute dtype of the base model weights."
    )


class SplitSpec(Spec):
    val: float = Field(0.1, ge=0.0, lt=1.0, description="Share of examples held out for validation.")
    test: float = Field(0.1, ge=0.0, lt=1.0, description="Share of examples held out for the final test.")
    seed: int = Field(0, description="Seed of the shuffle before splitting.")


class DedupSpec(Spec):
    exact: bool = Field(True, description="Drop training rows whose normalised text repeats an earlier row.")
    near: bool = Field(True, description="Drop training rows that are near duplicates (MinHash LSH, datasketch).")
    threshold: float = Field(
        0.7, gt=0.0, le=1.0,
        description="Estimated Jaccard similarity of word shingles that counts as near (0.7 with 3-word shingles: "
        "a copy of a 60-word text with a few words edited; each edit changes up to 3 shingles).",
    )
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations: more is more precise and slower.")
    shingle: int = Field(3, ge=1, le=10, description="Words per shingle.")


class MixSpec(Spec):
    dataset: str = Field(description="Built-in chat dataset (e.g. chatterbot) or a chat data file, mixed into train.")
    fraction: float = Field(gt=0.0, lt=1.0, description="Share of the final training split that comes from `dataset`.")


class FilesSpec(Spec):
    train: str = Field(description="Training file (any supported format).")
    val: str | None = Field(None, description="Fixed validation file; default: carved from train with split.val.")
    test: str | None = Field(None, description="Fixed test file; default: carved from train with split.test.")


class DataSpec(Spec):
    dataset: str | None = Field(None, description="Built-in name (`peftkit datasets`) or a data file / `datasets` folder.")
    files: FilesSpec | None = Field(None, description="Fixed user-given splits instead of `dataset`.")
    task: TaskKind | None = Field(
        None,
        description="extraction | chat | classification | completion | preference. "
        "Default: the built-in dataset's task, or the one the file's record format implies.",
    )
    format: RecordFormat = Field("auto", description="Record format of user files; auto detects it and says why.")
    columns: dict[str, str] = Field(
        default_factory=dict, description="Map record fields to your columns, e.g. {text: review, label: sentiment}."
    )
    on_error: Literal["stop", "skip"] = Field(
        "stop", description="stop: list every problem and stop. skip: write bad rows to rejects.jsonl and go on."
    )
    size: int | None = Field(
        None, gt=0, description="Examples to use before splitting (generated datasets: how many to generate)."
    )
    split: SplitSpec = Field(default_factory=SplitSpec)
    instruction: str | None = Field(
        None, description="System prompt for extraction tasks. Default: the built-in dataset's instruction."
    )
    max_length: int = Field(512, gt=8, description="Longest tokenized example; see `truncation` for longer ones.")
    truncation: Literal["truncate", "drop"] = Field(
        "truncate", description="Rows over max_length: truncate (counted, cut by the trainer) or drop (to rejects)."
    )
    dedup: DedupSpec = Field(default_factory=DedupSpec)
    mix: MixSpec | None = Field(None, description="Replay general data against forgetting: {dataset, fraction}.")

    @model_validator(mode="after")
    def _one_source(self) -> "DataSpec":
        if (self.dataset is None) == (self.files is None):
            raise ValueError("give exactly one of data.dataset or data.files")
        return self


class LoraSpec(Spec):
    kind: Literal["lora"] = "lora"
    r: int = Field(16, gt=0, description="Rank of the update B·A.")
    alpha: float = Field(32.0, gt=0, description="Scale of the update is alpha / r.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = Field(
        "all-linear",
        description="Preset `attention` (q,v), `all-linear`, or explicit module names such as [q_proj, v_proj].",
    )

    @field_validator("target_modules")
    @classmethod
    def _known_preset(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, str) and v not in ("attention", "all-linear"):
            raise ValueError("a preset must be 'attention' or 'all-linear'; give explicit names as a list")
        if isinstance(v, list) and not v:
            raise ValueError("the list of target modules is empty")
        return v


class EarlyStoppingSpec(Spec):
    """Stop when validation loss stops improving; the best checkpoint (lowest val loss) is the adapter kept."""

    patience: int | None = Field(
        None, gt=0, description="Validation rounds without improvement before stopping; null = off. Needs train.eval_every > 0."
    )
    min_delta: float = Field(0.0, ge=0.0, description="A val-loss drop smaller than this does not count as an improvement.")
    general_loss_increase: float | None = Field(
        None, gt=0,
        description="Also stop when loss on held-out general text (bbc-news) rises by more than this share over the "
                    "base model's (0.1 = 10%); checked at every validation round. Causal LMs only.",
    )
    general_examples: int = Field(16, gt=0, description="General-text articles scored at each check.")


class TrainSpec(Spec):
    epochs: float = Field(1.0, gt=0, description="Passes over the training split (ignored when max_steps > 0).")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps; -1 means use epochs.")
    batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear"
    eval_every: int = Field(0, ge=0, description="Validation loss every N steps; 0 = once at the end.")
    log_every: int = Field(5, gt=0, description="Log the training loss every N steps.")
    seed: int = 42
    threads: int | None = Field(None, gt=0, description="torch CPU threads; default: torch's choice.")
    # Speed and memory (issue 7). `auto` picks per device and the run log says what was chosen and why.
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="auto: bf16 where the hardware does it fast (CUDA bf16, CPU avx512_bf16/AMX), else fp32. "
        "bf16 stores the frozen base weights in bf16 while training, keeps LoRA weights and optimizer "
        "states in fp32, and computes under autocast. The saved adapter is fp32 either way.",
    )
    packing: Literal["auto", "padding_free", "bfd", "off"] = Field(
        "auto",
        description="padding_free: each batch's examples are laid end to end in one row with per-sequence "
        "position ids (no padding, no cross-attention between them); bfd: trl's best-fit packing into rows "
        "of max_length (more examples per step); off: padded batches grouped by length. "
        "auto: off (padding_free trained a worse quickstart adapter; see train/speed.py).",
    )
    attention: Literal["auto", "sdpa", "eager"] = Field(
        "auto", description="Attention kernel; auto: sdpa (less memory than eager, keeps packed sequences apart)."
    )
    compile: Literal["auto", "on", "off"] = Field(
        "auto", description="torch.compile the decoder; auto: off (padding-free rows change shape every step; not yet measured to pay back)."
    )
    gradient_checkpointing: Literal["auto", "on", "off"] = Field(
        "auto", description="auto: on only when the estimated activations would not fit in half the free memory."
    )
    loss_chunk: int = Field(
        512, gt=0, description="Positions per chunk of the LM head + cross-entropy (bounds the logits held at once)."
    )

    @field_validator("packing", "compile", "gradient_checkpointing", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any, info) -> Any:
        # YAML 1.1 reads a bare `on` / `off` as true / false
        if isinstance(v, bool):
            if info.field_name == "packing":
                return "padding_free" if v else "off"
            return "on" if v else "off"
        return v
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec)


MetricFamily = Literal["extraction", "classification", "generation", "perplexity"]


class GeneralSuiteSpec(Spec):
    """The general-ability suite scored on base and tuned: what the adapter must not have broken."""

    enabled: bool = Field(True, description="Score the suite in `peftkit eval` (causal LMs only).")
    bbc_news: int = Field(32, ge=0, description="Held-out bbc-news articles for perplexity on general text (0 = off).")
    chatterbot: int = Field(32, ge=0, description="Held-out chatterbot conversations for loss/accuracy on general chat (0 = off).")
    files: list[str] = Field(
        default_factory=list,
        description="Your own general sets: .jsonl files of {\"text\": ...} (perplexity) or {\"messages\": [...]} (chat loss).",
    )
    max_examples_per_file: int = Field(64, gt=0, description="Records scored from each file (the first N).")
    max_length: int = Field(256, gt=8, description="Tokens per general example; longer ones are truncated.")
    lm_eval_tasks: list[str] = Field(
        default_factory=list, description="lm-eval-harness tasks (needs `pip install lm-eval` and its datasets)."
    )
    lm_eval_limit: int | None = Field(100, gt=0, description="Examples per lm-eval task.")
    seed: int = Field(0, description="Seed of the sample drawn from each built-in set.")


class MaxForgettingSpec(Spec):
    """Gate thresholds: `peftkit eval` fails (exit 1) when the tuned model lost more than this."""

    general_ppl_increase: float | None = Field(
        None, ge=0, description="Largest allowed relative perplexity increase on general text (0.10 = +10%)."
    )
    chat_loss_increase: float | None = Field(
        None, ge=0, description="Largest allowed relative loss increase on general chat (0.05 = +5%)."
    )
    chat_accuracy_drop: float | None = Field(
        None, ge=0, description="Largest allowed drop in next-token accuracy on general chat (0.02 = 2 points)."
    )
    lm_eval_drop: float | None = Field(
        None, ge=0, description="Largest allowed drop in any lm-eval-harness task score (absolute)."
    )


class EvalSpec(Spec):
    max_examples: int | None = Field(None, gt=0, description="Score at most this many test examples.")
    batch_size: int = Field(16, gt=0)
    max_new_tokens: int = Field(96, gt=0, description="Generation budget for extraction answers.")
    metrics: list[MetricFamily] | None = Field(
        None,
        description="Task metrics to compute. Default by task: extraction → [extraction]; chat → [perplexity, "
                    "generation]; classification → [classification].",
    )
    general: GeneralSuiteSpec = Field(default_factory=GeneralSuiteSpec)
    max_forgetting: MaxForgettingSpec = Field(default_factory=MaxForgettingSpec)
    report_examples: int = Field(6, ge=0, description="Test examples shown base vs tuned side by side in report.html.")


class ExportSpec(Spec):
    merge: bool = Field(False, description="`peftkit quickstart` merges after eval when true.")
    parity_atol: float = Field(1e-3, gt=0, description="Largest allowed |logit difference| merged vs adapter.")
    parity_examples: int = Field(8, gt=0, description="Held-out examples used by the parity check.")


class OutputSpec(Spec):
    runs_dir: str = Field("runs", description="Folder that holds one directory per run.")
    run_id: str | None = Field(None, description="Default: <recipe name>-<UTC timestamp>.")
    mlflow: bool = Field(True, description="Track params, metrics and the adapter in MLflow.")
    tracking_uri: str | None = Field(None, description="Default: sqlite:///<runs_dir>/mlflow.db.")


class Recipe(Spec):
    name: str = Field(description="Short name, used in run ids.")
    description: str = ""
    model: ModelSpec
    data: DataSpec
    method: LoraSpec = Field(default_factory=LoraSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)


def recipes_dir() -> Path:
    """The folder of recipes shipped with peftkit (the repository's `recipes/`)."""
    return Path(__file__).resolve().parents[2] / "recipes"


def resolve_recipe_path(recipe: str | Path) -> Path:
    """A path as given, or the name of a shipped recipe (`quickstart` → recipes/quickstart.yaml)."""
    path = Path(recipe)
    if path.is_file():
        return path
    shipped = recipes_dir() / f"{path.stem}.yaml"
    if path.suffix in ("", ".yaml") and path.parent == Path(".") and shipped.is_file():
        return shipped
    raise RecipeError(f"{recipe}: no such recipe file (shipped recipes: {', '.join(shipped_recipes())})")


def shipped_recipes() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def load_recipe(recipe: str | Path | dict, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe.

    Args:
        recipe: a YAML path, a shipped recipe name, or an already-parsed dict.
        overrides: `dotted.key=value` strings; the value is parsed as YAML (`1e-4`, `[q_proj]`, `true`).
    Returns:
        The validated Recipe with every default filled in.
    """
    if isinstance(recipe, dict):
        source, raw = "<dict>", dict(recipe)
    else:
        path = resolve_recipe_path(recipe)
        source = str(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise RecipeError(f"{source}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise RecipeError(f"{source}: a recipe is a mapping of sections (model, data, ...), got {type(raw).__name__}")
    for item in overrides or []:
        _apply_override(raw, item, source)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(_format_validation_error(source, exc)) from None


def _apply_override(raw: dict, item: str, source: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(f"--set {item!r}: {part} in {source} is a value, not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        node[parts[-1]] = value


def _format_validation_error(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "<recipe>"
        if err["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key")
        elif err["type"] == "missing":
            lines.append(f"{path}: required field is missing")
        else:
            lines.append(f"{path}: {err['msg']} (got {err.get('input')!r})")
    return f"{source}: " + "; ".join(lines)


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML, every default filled in, in declaration order."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
