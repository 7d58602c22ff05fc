"""The adapters a server knows, the models they run on, and which are resident (an LRU of slots).

    cache = AdapterCache(base, limits, max_adapters=4, roots=[Path("adapters")])
    cache.register("extract", "runs/quickstart-20261201-101500")    # checked now, loaded on first use
    served = cache.lookup("extract")                                  # settings from the run directory
    group = cache.ensure_resident(served)                             # worker thread only: loads, evicts LRU

Two tiers, as vLLM and LoRAX keep them: *registered* adapters passed `checks.check_adapter` (their
header, shapes, base and paths) and are listed in /v1/models; *resident* adapters have weights in a
model. Registration never allocates a tensor; loading happens in the engine's worker thread, so no
forward ever sees a model being changed.

Which adapters share a batch (a `ModelGroup` is one model object and one forward per step):
- LoRA (incl. rsLoRA, and PiSSA/OLoRA saved as plain LoRA) shares the base model: one peft model
  holding every resident LoRA adapter; rows of a batch pick theirs through the engine's LoRA step
  (serve/lora_batch.py stacks the adapters per layer; with `--lora-step peft`, peft's `adapter_names`,
  "__base__" for the base). QLoRA adapters share a 4-bit base loaded as their training loaded it, so
  that what is served is what was evaluated; their own group (stepped with peft's `adapter_names`).
- DoRA (its magnitude vector rescales each row's whole weight), IA3, LoHa, LoKr, bottleneck adapters
  and fully fine-tuned models each run on their own copy of the model (peft cannot mix them per
  row); a copy costs the base's weights again.
- Prefix and prompt tuning add virtual tokens inside peft's `generate`; they run one request at a
  time through it (`ModelGroup.via_generate`).
Classification servers (an encoder base) give every adapter its own classifier, sized for its labels.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from peftkit.errors import AdapterRefused
from peftkit.recipe import EvalSpec, ModelSpec
from peftkit.serve.checks import AdapterLimits, BaseFacts, CheckedAdapter, check_adapter, load_checked_weights, valid_model_name

BASE = "__base__"  # peft's name for "no adapter" in adapter_names
SHARED_KINDS = frozenset({"lora", "qlora"})  # kinds that share one model and mix per row
GENERATE_KINDS = frozenset({"prefix", "prompt"})  # kinds that need peft's generate (virtual tokens)


@dataclass
class Served:
    """A model name the server answers to, and how requests for it are prompted and decoded."""

    name: str
    kind: str  # "base" or the adapter's kind
    checked: CheckedAdapter | None = None
    task: str | None = None  # the run's task: extraction, chat, completion, classification
    instruction: str | None = None  # the run's system prompt (extraction), added when a request has none
    max_new_tokens: int = EvalSpec().max_new_tokens  # the run's eval.max_new_tokens: the default max_tokens
    labels: list[str] | None = None  # classification
    quantization: object | None = None  # qlora: the BitsAndBytesConfig training loaded the base with
    group_key: str = "base"
    source: str = ""  # what the operator named: a run directory or an adapter folder
    loaded_at: float | None = None
    last_used: float = 0.0
    running: int = 0  # sequences in flight on it (an adapter in use is never evicted)
    peft_name: str = ""  # its name inside the shared peft model (client names may hold '.', which peft cannot)

    @property
    def resident(self) -> bool:
        return self.loaded_at is not None or self.kind == "base"

    def describe(self) -> dict:
        return {"kind": self.kind, "task": self.task, "resident": self.resident,
                "rank": self.checked.rank if self.checked else None,
                "bytes": self.checked.weight_bytes if self.checked else 0, "source": self.source}


@dataclass
class ModelGroup:
    """One model object; every sequence of a group decodes in one forward per step."""

    key: str
    model: object
    shared: bool  # rows carry adapter names (peft's mixed-adapter batch)
    via_generate: bool = False
    members: set[str] = field(default_factory=set)
    version: int = 0  # bumped on every load and unload: the batched LoRA step rebuilds its stacks lazily from it


class AdapterCache:
    """Registered adapters and the model groups holding the resident ones, at most `max_adapters`.

    Args:
        base_name: the server's base model (built-in name, folder or hub id).
        base_model: the base, loaded once (a causal LM, or for a classification server None: each
            adapter gets its own classifier).
        roots: folders under which `--adapter-root` adapters are found by name.
    """

    def __init__(self, base_name: str, base_model, dtype: str, limits: AdapterLimits, max_adapters: int,
                 roots: list[Path] | None = None, classification: bool = False, seed: int = 42):
        self.base_name = base_name
        self.dtype = dtype
        self.limits = limits
        self.max_adapters = max_adapters
        self.roots = [Path(r).resolve() for r in roots or []]
        self.classification = classification
        self.seed = seed
        self.facts = BaseFacts.from_model(base_name, base_model)
        self.lock = threading.RLock()  # registry changes from handlers vs the worker's loads
        self.served: dict[str, Served] = {}
        self.groups: dict[str, ModelGroup] = {}
        self.resident: OrderedDict[str, None] = OrderedDict()  # adapter names, least recently used first
        self._registered = 0
        base = Served(base_name, "base", task=None)
        self.served[base_name] = base
        if not classification:
            self.groups["base"] = ModelGroup("base", base_model, shared=True, members={base_name})

    # ------------------------------------------------------------------ registry (any thread)
    def register(self, name: str, source: str | Path, roots: list[Path] | None = None) -> Served:
        """Check an adapter and make it known under `name` (nothing is loaded). Raises AdapterRefused."""
        valid_model_name(name)
        with self.lock:
            if name in self.served:
                raise AdapterRefused(name, "a model of this name is already served; unload it first")
        checked = check_adapter(name, source, self.facts, self.limits, roots if roots is not None else [])
        served = self._settings(name, checked, str(source))
        if self.classification != (served.task == "classification"):
            what = "a classification server (encoder base): serve generation adapters on a causal LM base" \
                if self.classification else "a generation server: serve classification adapters with --base of their encoder"
            raise AdapterRefused(name, f"its run's task is {served.task}, and this is {what}")
        with self.lock:
            self.served[name] = served
        return served

    def lookup(self, name: str) -> Served | None:
        """The served model of this name; under --adapter-root an unknown name is found, checked and registered."""
        with self.lock:
            served = self.served.get(name)
        if served is not None or not self.roots:
            return served
        try:
            valid_model_name(name)
        except AdapterRefused:
            return None
        for root in self.roots:
            if (root / name).is_dir():
                return self.register(name, root / name, roots=self.roots)
        return None

    def unregister(self, name: str) -> None:
        """Forget an adapter (the worker unloads it first: see `unload`)."""
        with self.lock:
            self.served.pop(name, None)

    def listed(self) -> list[Served]:
        with self.lock:
            return list(self.served.values())

    # ------------------------------------------------------------------ residency (worker thread only)
    def ensure_resident(self, served: Served) -> ModelGroup | None:
        """The group to run `served` on, loading it first (evicting the least recently used idle
        adapter when every slot is taken); None when every slot is busy, so the request waits."""
        served.last_used = time.monotonic()
        if served.kind == "base":
            return self.groups["base"]
        if served.loaded_at is not None:
            self.resident.move_to_end(served.name)
            return self.groups[served.group_key]
        while len(self.resident) >= self.max_adapters:
            idle = next((n for n in self.resident if self.served[n].running == 0), None)
            if idle is None:
                return None
            self.unload(idle)
        self._load(served)
        self.resident[served.name] = None
        return self.groups[served.group_key]

    def unload(self, name: str) -> None:
        served = self.served.get(name)
        if served is not None:
            self.unload_detached(served)

    def unload_detached(self, served: Served) -> None:
        """Free an adapter's weights (also one already unregistered, so no new request can find it)."""
        if served.loaded_at is None:
            return
        name = served.name
        group = self.groups[served.group_key]
        group.members.discard(name)
        if group.shared and served.kind in SHARED_KINDS:
            from peft import PeftModel

            if isinstance(group.model, PeftModel):
                group.model.delete_adapter(served.peft_name)
                remaining = list(group.model.peft_config)
                if remaining:  # peft keeps pointing at the deleted adapter; rows name theirs anyway
                    group.model.set_adapter(remaining[0])
                else:  # no adapter left: back to the plain base (peft's forward needs an active adapter)
                    group.model = group.model.unload()
        group.version += 1
        if not group.members:  # an own-model group, or an empty 4-bit base: free its weights
            del self.groups[served.group_key]
        served.loaded_at = None
        self.resident.pop(name, None)

    def _load(self, served: Served) -> None:
        checked = served.checked
        if served.group_key == "base" or served.group_key.startswith("4bit:"):
            weights = load_checked_weights(checked)
            group = self.groups.get(served.group_key)
            if group is None:
                group = ModelGroup(served.group_key, self._fresh_base(served), shared=True)
                self.groups[served.group_key] = group
            group.model = _add_lora(group.model, served.peft_name, checked, weights)
        else:
            model = self._own_model(served)
            group = ModelGroup(served.group_key, model, shared=False, via_generate=served.kind in GENERATE_KINDS)
            self.groups[served.group_key] = group
        group.members.add(served.name)
        group.version += 1
        served.loaded_at = time.monotonic()

    def _fresh_base(self, served: Served):
        from peftkit.loading import load_base_model

        spec = ModelSpec(name=self.base_name, dtype=self.dtype)
        task = "classification" if self.classification else "causal"
        return load_base_model(spec, task, served.labels, self.seed, quantization=served.quantization)

    def _own_model(self, served: Served):
        """A model of its own: RUN/model for full, the bottleneck tuner's own loader, else peft over a fresh base."""
        checked = served.checked
        if served.kind == "full":
            from peftkit.loading import load_base_model

            spec = ModelSpec(name=str(checked.folder), dtype=self.dtype)
            model = load_base_model(spec, "classification" if self.classification else "causal", served.labels, self.seed)
            return model.eval()
        base = self._fresh_base(served)
        if served.kind == "bottleneck":
            from peftkit.methods.bottleneck import BottleneckModel

            return BottleneckModel.from_pretrained(base, checked.folder).eval()
        weights = load_checked_weights(checked)
        return _add_lora(base, "default", checked, weights) if served.kind in SHARED_KINDS else _peft_model(base, checked, weights)

    # ------------------------------------------------------------------ settings from the run
    def _settings(self, name: str, checked: CheckedAdapter, source: str) -> Served:
        self._registered += 1
        served = Served(name, checked.kind, checked=checked, source=source, group_key=f"own:{name}",
                        peft_name=f"served{self._registered}")
        if checked.run_dir is not None:
            from peftkit.data.prepare import load_prepared
            from peftkit.methods import base_quantization, trained_precision
            from peftkit.rundir import open_run

            run_dir, recipe = open_run(checked.run_dir)
            prepared = load_prepared(run_dir / "data")
            served.task, served.instruction, served.labels = prepared.task, prepared.instruction, prepared.labels
            served.max_new_tokens = recipe.eval.max_new_tokens
            task = "sequence-classification" if prepared.task == "classification" else "causal-lm"
            served.quantization = base_quantization(recipe.method, task, trained_precision(recipe))
        elif self.classification:
            raise AdapterRefused(name, "a classification adapter needs its run directory (its labels are in it)")
        if _shares_base(checked) and not self.classification:
            q = served.quantization
            served.group_key = "base" if q is None else f"4bit:{q.bnb_4bit_quant_type}:{q.bnb_4bit_use_double_quant}:{q.bnb_4bit_compute_dtype}"
        return served


def _shares_base(checked: CheckedAdapter) -> bool:
    """LoRA adapters that can ride on the shared base and mix per row: not DoRA (peft refuses
    `adapter_names` with DoRA), and not a PiSSA/OLoRA init left in the config (loading one rewrites
    the base layer's weights, which every other adapter uses)."""
    init = checked.config.get("init_lora_weights", True)
    return checked.kind in SHARED_KINDS and not checked.dora and (init is True or init is False or init == "gaussian")


def _peft_config(checked: CheckedAdapter):
    """The adapter's peft config from the checked (path-free) dict, set up for inference."""
    from peft import PeftConfig

    values = {**checked.config, "inference_mode": True}
    if values.get("peft_type") == "PROMPT_TUNING":
        values["prompt_tuning_init"] = "RANDOM"  # the trained embeddings are loaded over it; no tokenizer is read
    return PeftConfig.from_peft_type(**values)


def _add_lora(model, name: str, checked: CheckedAdapter, weights: dict):
    """Add a LoRA adapter under `name` to `model` (a plain model is wrapped once) and load its weights."""
    from peft import PeftModel, get_peft_model

    config = _peft_config(checked)
    with warnings.catch_warnings():  # peft notes that the config's base name is not the loaded folder's: expected
        warnings.filterwarnings("ignore", message=".*base_model_name_or_path.*")
        if isinstance(model, PeftModel):
            model.add_adapter(name, config)
        else:
            model = get_peft_model(model, config, adapter_name=name)
    _set_weights(model, name, checked, weights)
    return model.eval()


def _peft_model(base, checked: CheckedAdapter, weights: dict):
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*base_model_name_or_path.*")
        model = get_peft_model(base, _peft_config(checked))
    _set_weights(model, "default", checked, weights)
    return model.eval()


def _set_weights(model, name: str, checked: CheckedAdapter, weights: dict) -> None:
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, weights, adapter_name=name)
    # peft loads prompt learning's `prompt_embeddings` into the prompt encoder itself, then reports the key unused
    handled = {"prompt_embeddings"} if checked.kind in GENERATE_KINDS else set()
    unexpected = [k for k in result.unexpected_keys if k not in handled and not k.endswith("num_batches_tracked")]
    if unexpected:
        raise AdapterRefused(checked.name, f"tensor {unexpected[0]} fits no layer of the base "
                                           f"({len(unexpected)} such tensors)")
