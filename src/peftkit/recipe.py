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
from typing import Annotated, Any, Literal, Union

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


TARGET_PRESETS = ("attention", "attention-all", "all-linear")


def _check_targets(v: str | list[str], presets: tuple[str, ...] = TARGET_PRESETS) -> str | list[str]:
    if isinstance(v, str) and v not in presets:
        raise ValueError(f"a preset must be one of {', '.join(repr(p) for p in presets)}; give explicit names as a list")
    if isinstance(v, list) and not v:
        raise ValueError("the list of target modules is empty")
    return v


class LoraSpec(Spec):
    """LoRA and its variants through peft: rsLoRA, DoRA, PiSSA / OLoRA initialisation."""

    kind: Literal["lora"] = "lora"
    r: int = Field(16, gt=0, description="Rank of the update B·A.")
    alpha: float = Field(32.0, gt=0, description="Scale of the update is alpha / r (alpha / sqrt(r) with rslora).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    target_modules: str | list[str] = Field(
        "all-linear",
        description="Preset `attention` (q,v), `attention-all` (q,k,v,o), `all-linear`, or explicit module "
        "names (suffixes) such as [q_proj, v_proj] or [attention.output.dense].",
    )
    rslora: bool = Field(False, description="Rank-stabilised LoRA: scale alpha / sqrt(r) instead of alpha / r.")
    dora: bool = Field(False, description="DoRA: learn a magnitude per output feature on top of the LoRA direction.")
    init: Literal["default", "pissa", "olora"] = Field(
        "default",
        description="default: B = 0 (the model starts unchanged); pissa: A, B from the top singular vectors "
        "of each weight (SVD, the residual stays frozen); olora: A, B from a QR decomposition of each weight.",
    )

    @field_validator("target_modules")
    @classmethod
    def _known_preset(cls, v: str | list[str]) -> str | list[str]:
        return _check_targets(v)


class QLoraSpec(LoraSpec):
    """LoRA over a base loaded in 4 bits with bitsandbytes (NF4/FP4); the adapter is saved like LoRA's."""

    kind: Literal["qlora"] = "qlora"
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type of the frozen base weights.")
    double_quant: bool = Field(True, description="Quantize the per-block absmax constants too (~0.4 bit/weight less).")
    compute_dtype: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="dtype the 4-bit weights are dequantized to for each matmul; auto: bf16 where the "
        "hardware path is bf16 (train.precision), else fp32.",
    )
    quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] = Field(
        "uint8", description="dtype the packed 4-bit weights are stored in (bnb_4bit_quant_storage). FSDP and "
        "ZeRO-3 shard only floating-point tensors: give bfloat16 to train QLoRA sharded (`--distributed fsdp`); "
        "the bits and the memory are the same.",
    )
    loftq: bool = Field(
        False, description="LoftQ: initialise A, B so that quantized base + B·A approximates the full-precision "
        "weights (read from the base model's safetensors), instead of B = 0.",
    )

    @model_validator(mode="after")
    def _init_for_4bit(self) -> "QLoraSpec":
        if self.init != "default":
            raise ValueError(f"init: {self.init} decomposes full-precision weights, which a 4-bit base no longer has; "
                             "use init: default (optionally loftq: true) for qlora, or kind: lora")
        return self


class PrefixSpec(Spec):
    """Prefix tuning: trained key/value vectors prepended in every attention layer (not mergeable)."""

    kind: Literal["prefix"] = "prefix"
    num_virtual_tokens: int = Field(20, gt=0, description="Prefix length: trained key/value positions per layer.")
    projection: bool = Field(False, description="Reparameterise the prefix through a 2-layer MLP (peft prefix_projection).")


class PromptSpec(Spec):
    """Prompt tuning: trained input embeddings prepended to every input (not mergeable)."""

    kind: Literal["prompt"] = "prompt"
    num_virtual_tokens: int = Field(20, gt=0, description="Virtual tokens prepended to the input.")
    init_text: str | None = Field(
        None, description="Initialise the virtual tokens from this text's token embeddings (default: random)."
    )

    @field_validator("init_text")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("init_text is empty; give a text or null")
        return v


class IA3Spec(Spec):
    """IA3: learned per-feature scaling of selected activations (mergeable)."""

    kind: Literal["ia3"] = "ia3"
    target_modules: str | list[str] = Field(
        "attention-ffn",
        description="`attention-ffn`: peft's default per architecture (e.g. k, v and the FFN output), or a "
        "preset `attention` / `attention-all` / `all-linear`, or explicit module names.",
    )
    feedforward_modules: list[str] | None = Field(
        None, description="Targets whose input (not output) is scaled; must be among target_modules. "
        "Default: peft's per-architecture choice with attention-ffn, else none.",
    )

    @field_validator("target_modules")
    @classmethod
    def _known_preset(cls, v: str | list[str]) -> str | list[str]:
        return _check_targets(v, ("attention-ffn", *TARGET_PRESETS))

    @model_validator(mode="after")
    def _feedforward_subset(self) -> "IA3Spec":
        ff = self.feedforward_modules
        if ff and isinstance(self.target_modules, list):
            extra = [m for m in ff if m not in self.target_modules]
            if extra:
                raise ValueError(f"feedforward_modules {extra} are not in target_modules {self.target_modules}")
        if ff and self.target_modules == "attention-ffn":
            raise ValueError("feedforward_modules needs explicit target_modules (attention-ffn picks both)")
        return self


class LoHaSpec(Spec):
    """LoHa (LyCORIS): the update is the Hadamard product of two low-rank products (mergeable)."""

    kind: Literal["loha"] = "loha"
    r: int = Field(8, gt=0, description="Rank of each low-rank factor.")
    alpha: float = Field(16.0, gt=0, description="Scale of the update is alpha / r.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Preset `attention`, `attention-all`, `all-linear`, or explicit module names."
    )

    @field_validator("target_modules")
    @classmethod
    def _known_preset(cls, v: str | list[str]) -> str | list[str]:
        return _check_targets(v)


class LoKrSpec(LoHaSpec):
    """LoKr (LyCORIS): the update is a Kronecker product of a small and a low-rank matrix (mergeable)."""

    kind: Literal["lokr"] = "lokr"


class BottleneckSpec(Spec):
    """Bottleneck adapters (Houlsby / Pfeiffer): small non-linear blocks after sublayers (not mergeable)."""

    kind: Literal["bottleneck"] = "bottleneck"
    placement: Literal["houlsby", "pfeiffer"] = Field(
        "pfeiffer", description="houlsby: after attention and after the feed-forward block; pfeiffer: after the "
        "feed-forward block only (half the parameters).")
    reduction_factor: int = Field(16, gt=0, description="Bottleneck width is hidden size / reduction_factor.")
    non_linearity: Literal["relu", "gelu", "silu", "tanh"] = Field("relu", description="Activation between down and up.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    target_modules: list[str] | None = Field(
        None, description="Explicit module names to put adapters after, instead of the placement's.")


class FullSpec(Spec):
    """Full fine-tuning baseline: every weight trains; the whole model is saved to RUN/model/."""

    kind: Literal["full"] = "full"


# One class per `method.kind`. To add a method, define its spec above and append it here.
METHOD_SPECS: tuple[type[Spec], ...] = (LoraSpec, QLoraSpec, PrefixSpec, PromptSpec, IA3Spec, LoHaSpec, LoKrSpec,
                                        BottleneckSpec, FullSpec)
MethodSpec = Annotated[Union[METHOD_SPECS], Field(discriminator="kind")]


def method_kinds() -> list[str]:
    return [cls.model_fields["kind"].default for cls in METHOD_SPECS]


class EarlyStoppingSpec(Spec):
    """Stop when validation loss stops improving; the best checkpoint (lowest val loss) is the adapter kept."""

    patience: Annotated[int, Field(gt=0)] | Literal["auto"] | None = Field(
        "auto", description="Validation rounds without improvement before stopping; null = off. Needs train.eval_every > 0. "
        "auto: on (patience 2, checked twice per epoch) for a causal LM when train.epochs is auto and chose more "
        "than one pass over a training split with a validation split; off otherwise, and for classifiers, whose "
        "validation loss bottoms out before their accuracy peaks (train.log says which)."
    )
    min_delta: float = Field(0.0, ge=0.0, description="A val-loss drop smaller than this does not count as an improvement.")
    general_loss_increase: float | None = Field(
        None, gt=0,
        description="Also stop when loss on held-out general text (bbc-news) rises by more than this share over the "
                    "base model's (0.1 = 10%); checked at every validation round. Causal LMs only.",
    )
    general_examples: int = Field(16, gt=0, description="General-text articles scored at each check.")


class TrainSpec(Spec):
    epochs: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        "auto", description="Passes over the training split (ignored when max_steps > 0). auto: about 2,000 "
        "(classification) or 1,000 (causal LM) training examples seen, 1 to 10 passes, with early stopping when "
        "more than one (peftkit.train.schedule; train.log says what was chosen and why).")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps; -1 means use epochs.")
    batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    lr: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        "auto", description="Peak learning rate. auto: by task and method, e.g. 1e-3 for LoRA on a classifier, 2e-4 "
        "for LoRA on a causal LM (peftkit.train.schedule).")
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear"
    eval_every: int = Field(0, ge=0, description="Validation loss every N steps; 0 = once at the end.")
    log_every: int = Field(5, gt=0, description="Log the training loss every N steps.")
    seed: int = 42
    threads: int | None = Field(None, gt=0, description="torch CPU threads; default: torch's choice.")
    checkpoint_every: int = Field(
        50, ge=0, description="Save a resumable checkpoint (adapter, optimizer, scheduler, RNG of every process, "
        "step) every N optimizer steps under RUN/checkpoints, and on SIGTERM; 0 = on SIGTERM only. Continue a run "
        "with `peftkit train --resume RUN`.",
    )
    keep_checkpoints: int = Field(2, gt=0, description="Checkpoints kept (the newest); older ones are deleted.")
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
    attention: Literal["auto", "sdpa", "eager", "math"] = Field(
        "auto", description="Attention kernel; math: q k^T, softmax, dropout, v as plain products while training "
        "(SDPA has no CPU kernel with dropout), SDPA otherwise. auto: math for classification on CPU, else sdpa "
        "(less memory than eager, keeps packed sequences apart).",
    )
    compile: Literal["auto", "on", "off"] = Field(
        "auto", description="torch.compile the decoder; auto: off (padding-free rows change shape every step; not yet measured to pay back)."
    )
    gradient_checkpointing: Literal["auto", "on", "off"] = Field(
        "auto", description="auto: on only when the estimated activations would not fit in half the free memory."
    )
    loss_chunk: int = Field(
        128, gt=0, description="Positions per chunk of the LM head + cross-entropy (bounds the logits held at once)."
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
    class_weights: Literal["auto", "inverse", "off"] | dict[str, float] = Field(
        "auto",
        description="Classification loss weight per class. inverse: inverse frequency in the training split "
        "(each class weighs as much in total; mean weight 1). auto: inverse when the commonest class has at "
        "least 1.5x the examples of the rarest, else off. off: plain cross-entropy. A mapping {label: weight} "
        "sets them by hand (every label of the data must be given).",
    )
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw", "paged_adamw_8bit"] = Field(
        "adamw",
        description="adamw: torch AdamW; adamw_8bit: bitsandbytes 8-bit states; paged_*: states in paged memory "
        "that can spill to the host under GPU memory pressure (CUDA only; on CPU they run non-paged).",
    )


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


class WarnForgettingSpec(MaxForgettingSpec):
    """Warning levels: past them the verdict of `peftkit eval` names the loss of general ability as a
    trade-off and suggests replay; nothing fails (that is eval.max_forgetting)."""

    general_ppl_increase: float | None = Field(
        0.10, ge=0, description="Warn when perplexity on general text rises by more than this share (0.10 = +10%)."
    )
    chat_accuracy_drop: float | None = Field(
        0.02, ge=0,
        description="Warn when next-token accuracy on general chat drops by more than this (0.02 = 2 points).",
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
    warn_forgetting: WarnForgettingSpec = Field(default_factory=WarnForgettingSpec)
    fail_on: list[Literal["collapsed", "not_better"]] = Field(
        default_factory=list,
        description="Verdict gates (`peftkit eval` exits 1): collapsed = a degenerate model (one class for >= 95% of "
                    "test rows, the same answer for most inputs, answers that loop or never stop); not_better = the "
                    "tuned model does not beat the best trivial baseline and the base by more than the noise.",
    )
    resamples: int = Field(
        2000, ge=100, description="Paired bootstrap resamples of the test rows for the verdict's 95% intervals."
    )
    seed: int = Field(0, description="Seed of the bootstrap and of the stratified-random baseline.")
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
    method: MethodSpec = Field(default_factory=LoraSpec, description="PEFT method; `kind` picks it (default lora).")
    train: TrainSpec = Field(default_factory=TrainSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)

    @field_validator("method", mode="before")
    @classmethod
    def _default_kind(cls, v: Any) -> Any:
        if isinstance(v, dict) and "kind" not in v:
            return {"kind": "lora", **v}  # `kind` may be left out: lora
        return v


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
    kinds = method_kinds()
    for err in exc.errors():
        loc = list(err["loc"])
        if loc[:1] == ["method"] and len(loc) > 1 and loc[1] in kinds:
            del loc[1]  # the union's tag: `method.r`, not `method.lora.r`
        path = ".".join(str(p) for p in loc) or "<recipe>"
        if err["type"] == "union_tag_invalid":
            got = err.get("input", {}).get("kind") if isinstance(err.get("input"), dict) else None
            lines.append(f"{path}.kind: unknown method {got!r}; expected one of {', '.join(kinds)}")
        elif err["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key")
        elif err["type"] == "missing":
            lines.append(f"{path}: required field is missing")
        else:
            lines.append(f"{path}: {err['msg']} (got {err.get('input')!r})")
    return f"{source}: " + "; ".join(lines)


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML, every default filled in, in declaration order."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
