"""QLoRA: LoRA over a base loaded in 4 bits (bitsandbytes NF4/FP4), optionally LoftQ-initialised.

    quant = quantization_config(spec, precision="bf16")            # BitsAndBytesConfig for from_pretrained
    base = load_base_model(model_spec, task, labels, seed, quantization=quant)
    model = wrap(base, spec, "causal-lm", gradient_checkpointing=False)

The frozen base is stored in 4 bits and dequantized per matmul to `compute_dtype` (auto: bf16 where
the training path is bf16, else fp32). `prepare_model_for_kbit_training` freezes the base, casts its
remaining 16-bit weights (norms, embeddings, head) to fp32 for stable training and turns on gradient
checkpointing when the speed plan asks for it; nothing else re-casts the base afterwards.

LoftQ (`loftq: true`): peft's `replace_lora_weights_loftq` sets each A, B so that the 4-bit weight
plus B·A approximates the full-precision weight, read lazily from the base model's safetensors file
(the model folder must hold `model.safetensors`). It applies to an already-4-bit model, which is
why it runs here after wrapping rather than through LoftQConfig (that path quantizes a
full-precision model itself and needs the base loaded unquantized first). peft 0.21 computes the
decomposition on CUDA (or XPU) only (`_loftq_init_new` moves the weight to "cuda"), so on a CPU-only
machine `loftq: true` is a RecipeError before anything is wrapped.

The adapter is saved in RUN/adapter like LoRA's. Merging never happens on the 4-bit model: `merge`
reloads the base in the recipe's model.dtype and folds the adapter into that.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from peftkit.errors import RecipeError
from peftkit.recipe import QLoraSpec


def compute_dtype_name(spec: QLoraSpec, precision: str | None = None) -> str:
    """bf16 or fp32: the recipe's choice, or with auto the training path's precision (detected when not given)."""
    if spec.compute_dtype != "auto":
        return spec.compute_dtype
    if precision is None:
        from peftkit.train.precision import resolve_precision

        precision = resolve_precision("auto").name
    return precision


# A classifier's fresh head must stay a plain Linear: it trains fully (modules_to_save). transformers'
# default skip list would miss it (it keeps the *last parameter's* module, "classifier.bias" in BERT).
CLASSIFIER_HEADS = ["classifier", "score"]


def quantization_config(spec: QLoraSpec, precision: str | None = None, task: str = "causal-lm"):
    """The BitsAndBytesConfig that loads the base in 4 bits for `spec`.

    Args:
        precision: the run's training precision ("bf16" or "fp32"); default: what `auto` picks here.
        task: "causal-lm" (transformers keeps the output head unquantized) or "sequence-classification"
            (the classifier head is kept unquantized).
    """
    import torch
    from transformers import BitsAndBytesConfig

    dtype = torch.bfloat16 if compute_dtype_name(spec, precision) == "bf16" else torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=spec.quant_type,
        bnb_4bit_use_double_quant=spec.double_quant,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_quant_storage=getattr(torch, spec.quant_storage),  # a float dtype lets FSDP/ZeRO-3 shard them
        llm_int8_skip_modules=CLASSIFIER_HEADS if task == "sequence-classification" else None,
    )


def is_4bit(model: nn.Module) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False)) or getattr(
        getattr(model, "hf_quantizer", None), "quantization_config", None) is not None


def wrap(model: nn.Module, spec: QLoraSpec, task: str, gradient_checkpointing: bool = False):
    """Prepare a 4-bit `model` for training and wrap it in LoRA (in place); LoftQ-initialise when asked."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    from peftkit.methods.lora import lora_config

    if not is_4bit(model):
        raise RecipeError("method.kind: qlora needs the base loaded in 4 bits; load it with "
                          "load_base_model(..., quantization=methods.base_quantization(spec, task))")
    if spec.loftq:
        _check_loftq_device()
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    keep_training_layout_in_place(model)
    peft_model = get_peft_model(model, lora_config(model, spec, task))
    if spec.loftq:
        apply_loftq(peft_model)
    return peft_model


def keep_training_layout_in_place(model: nn.Module) -> int:
    """Stop bitsandbytes' CPU inference repacking of 4-bit weights in a model that is going to train.

    On AVX512-bf16 CPUs a Linear4bit forward in eval mode without grad (a validation round) repacks its
    weight in place into a gemv layout that only inference understands; the next training step then
    runs the inference kernel (bitsandbytes 0.50.2: "a view of a leaf Variable that requires grad is
    being used in an in-place operation" on layers with a bias). The layer's own switch,
    `support_avx512bf16_for_cpu`, keeps the training layout. Returns how many layers were switched.
    """
    switched = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            switched += 1
    return switched


def _check_loftq_device() -> None:
    import torch
    from peft.import_utils import is_xpu_available

    if not (torch.cuda.is_available() or is_xpu_available()):
        raise RecipeError("method.loftq: peft computes the LoftQ initialisation on a CUDA (or XPU) device and this "
                          "machine has none; set loftq: false (plain QLoRA init) or train on a GPU")


def apply_loftq(peft_model) -> None:
    """LoftQ-initialise every 4-bit LoRA layer from the full-precision weights in the base's safetensors (in place)."""
    from peft import replace_lora_weights_loftq

    _check_loftq_device()
    source = Path(peft_model.get_base_model().config._name_or_path)
    if not (source / "model.safetensors").is_file() and not (source / "model.safetensors.index.json").is_file():
        raise RecipeError(f"method.loftq: LoftQ reads the full-precision weights from the base model's safetensors; "
                          f"no model.safetensors (or its shard index) in {source}")
    replace_lora_weights_loftq(peft_model, model_path=str(source))  # the folder: peft finds single or sharded files
