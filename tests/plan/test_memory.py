"""The memory plan: LoRA counts r·(d+k) equal peft's, NF4 bytes equal bitsandbytes', traced
activations equal the real saved tensors, and the totals move the right way."""

import contextlib

import pytest
import torch

from peftkit.plan.activations import AdapterShape, trace_activations
from peftkit.plan.architecture import load_architecture
from peftkit.plan.memory import (ServePlanSpec, TrainPlanSpec, adapter_targets, lora_params, nf4_bytes,
                                 plan_serving, plan_training)


@pytest.mark.parametrize("targets", ["all-linear", "attention", ["q_proj", "down_proj"]])
def test_lora_count_is_r_times_d_plus_k_and_equals_peft(tiny_llama_dir, targets):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from peftkit.methods.lora import resolve_targets
    from peftkit.recipe import LoraSpec

    arch = load_architecture(str(tiny_llama_dir))
    names = adapter_targets(arch, "lora", 8, targets)
    shapes = arch.linear_shapes()
    ours = lora_params(shapes, names, 8)
    assert ours == sum(8 * (shapes[n][0] + shapes[n][1]) for n in names)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    resolved = resolve_targets(model, LoraSpec(target_modules=targets))
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=resolved))
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert ours == trainable
    assert 2 * ours != trainable  # the doubled count some write-ups give is wrong
    spec = TrainPlanSpec(model=str(tiny_llama_dir), method="lora", rank=8, targets=targets, device="cpu")
    assert plan_training(spec).params["trainable"] == trainable


def test_classifier_trainable_count_includes_the_head_like_peft(tiny_bert_dir):
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=5)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type=TaskType.SEQ_CLS))
    spec = TrainPlanSpec(model=str(tiny_bert_dir), num_labels=5, method="lora", rank=4, device="cpu", dtype="float32")
    assert plan_training(spec).params["trainable"] == peft_model.get_nb_trainable_parameters()[0]
    dora = plan_training(spec.model_copy(update={"method": "dora"})).params["trainable"]
    peft_dora = get_peft_model(AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=5),
                               LoraConfig(r=4, target_modules="all-linear", task_type=TaskType.SEQ_CLS, use_dora=True))
    assert dora == peft_dora.get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("double_quant", [True, False])
def test_nf4_bytes_equal_bitsandbytes(double_quant):
    bnbf = pytest.importorskip("bitsandbytes.functional")
    weight = torch.randn(1536, 576)
    packed, state = bnbf.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
    held = [packed, state.absmax, state.code]  # what a Linear4bit keeps in memory
    if double_quant:
        held += [state.offset, state.state2.absmax, state.state2.code]
    stored = sum(t.numel() * t.element_size() for t in held)
    assert nf4_bytes(weight.numel(), double_quant) == stored


def test_traced_activations_equal_the_real_saved_tensors(tiny_llama_dir):
    """The meta-device trace (with the fused-attention stand-in) saves what real CPU training saves."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    arch = load_architecture(str(tiny_llama_dir))
    for kind in ("full", "lora"):
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
        if kind == "lora":
            model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", lora_dropout=0.1))
        saved = _saved_for_backward(model)
        trace = trace_activations(arch, AdapterShape(kind, 8, "all-linear", 0.1), 2, 48, "float32", "cpu")
        assert trace.saved_bytes(False) == saved, kind


def _saved_for_backward(model, *contexts) -> int:
    """Bytes of the distinct non-parameter storages one training forward (2 × 48 tokens) saves, inside `contexts`."""
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            saved.setdefault(s.data_ptr(), s.nbytes())
        return t

    with contextlib.ExitStack() as stack:
        for context in (torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), *contexts):
            stack.enter_context(context)
        model(input_ids=torch.randint(3, 1000, (2, 48)))
    return sum(saved.values())


def test_memory_grows_with_batch_and_sequence_and_shrinks_with_the_cheaper_choices():
    base = TrainPlanSpec(model="qwen2.5-0.5b", method="lora", batch=2, seq=512)
    peak = lambda **u: plan_training(base.model_copy(update=u)).peak_bytes  # noqa: E731
    assert peak(batch=1) < peak(batch=2) < peak(batch=4)
    assert peak(seq=256) < peak(seq=512) < peak(seq=1024)
    assert peak(gradient_checkpointing=True) < peak()
    assert peak() < peak(method="full")
    # QLoRA saves memory on a 7B model; on a 0.5B one with a 152k vocabulary it does not: the fp32 upcast of the
    # embeddings (prepare_model_for_kbit_training) and the head's cast copy outweigh the 4-bit layers' saving
    assert peak(method="qlora") > peak()
    big = TrainPlanSpec(model="llama-2-7b", method="lora", batch=2, seq=512)
    assert plan_training(big.model_copy(update={"method": "qlora"})).peak_bytes < plan_training(big).peak_bytes
    full = base.model_copy(update={"method": "full"})
    assert plan_training(full.model_copy(update={"optimizer": "adamw-8bit"})).peak_bytes < plan_training(full).peak_bytes
    assert plan_training(full.model_copy(update={"objective": "dpo"})).peak_bytes > plan_training(full).peak_bytes
    eager = plan_training(base.model_copy(update={"attention": "eager"})).components["activations"]
    assert eager > plan_training(base).components["activations"]  # eager keeps batch × heads × seq² probabilities


def test_qlora_weights_are_about_a_quarter_of_bf16():
    lora = plan_training(TrainPlanSpec(model="llama-2-7b", method="lora"))
    qlora = plan_training(TrainPlanSpec(model="llama-2-7b", method="qlora", kbit_upcast=False))
    assert qlora.params["quantized"] > 0.95 * qlora.params["total"]
    ratio = sum(qlora.weights.values()) / sum(lora.weights.values())
    assert 0.26 < ratio < 0.30  # 4.127 bits vs 16 per quantized weight, the rest (embeddings, head) in bf16
    upcast = plan_training(TrainPlanSpec(model="llama-2-7b", method="qlora"))  # prepare_model_for_kbit_training
    extra = sum(upcast.weights.values()) - sum(qlora.weights.values())
    assert extra == (qlora.params["total"] - qlora.params["quantized"]) * 2  # the unquantized layers bf16 -> fp32


def test_serving_kv_cache_per_token():
    plan = plan_serving(ServePlanSpec(model="llama-3.1-8b", context=8192, concurrent=4, adapters=2))
    assert plan.params["kv_bytes_per_token"] == 2 * 32 * 8 * 128 * 2  # K and V, layers, kv heads, head dim, bf16
    assert plan.components["KV cache"] == plan.params["kv_bytes_per_token"] * 8192 * 4


def test_matches_a_published_gpu_measurement():
    """LitGPT's resource table: Llama-2-7B, LoRA r=8 on q,v, bf16, micro-batch 1, longest Alpaca example
    1,304 tokens, A100: max_memory_allocated 21.30 GB (benchmarks/plan_vs_published.py has the rest)."""
    from peftkit.plan.memory import RUNTIME_BYTES

    plan = plan_training(TrainPlanSpec(model="llama-2-7b", rank=8, targets=["q_proj", "v_proj"], batch=1, seq=1304))
    assert plan.params["trainable"] == 4_194_304  # the table's trainable parameter count
    assert abs((plan.peak_bytes - RUNTIME_BYTES["cuda"]) / 21.30e9 - 1) < 0.05


def test_peftkit_path_trace_equals_what_peftkit_training_saves(tiny_llama_dir):
    """path=peftkit: bf16 base under autocast, LoRA inputs uncast, dropout fused into lora_A. The trace
    (adapters in bf16, no dropout) matches the real saved tensors up to autocast's bf16 copies of the
    lora_B weights (saved by each lora_B matmul; ~0.5% of the total on smollm2)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from peftkit.train.adapter_memory import adapter_inputs_uncast, fuse_lora_dropout_in_place

    arch = load_architecture(str(tiny_llama_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", lora_dropout=0.1))
    assert fuse_lora_dropout_in_place(model) > 0
    saved = _saved_for_backward(model, adapter_inputs_uncast(model), torch.autocast("cpu", dtype=torch.bfloat16))
    b_copies = sum(p.numel() * 2 for n, p in model.named_parameters() if "lora_B" in n)
    trace = trace_activations(arch, AdapterShape("lora", 8, "all-linear", 0.0, adapter_dtype="bfloat16"),
                              2, 48, "bfloat16", "cpu")
    assert trace.saved_bytes(False) + b_copies == saved
    stock = trace_activations(arch, AdapterShape("lora", 8, "all-linear", 0.1), 2, 48, "bfloat16", "cpu")
    assert stock.saved_bytes(False) > 1.3 * trace.saved_bytes(False)  # fp32 input copies and dropout masks


def test_peftkit_path_plans_chunked_logits_and_leaner_adapters():
    from peftkit.plan.memory import LOSS_CHUNK
    from peftkit.recipe import TrainSpec

    assert LOSS_CHUNK == TrainSpec().loss_chunk
    spec = TrainPlanSpec(model="smollm2-135m", method="lora", batch=8, seq=256, dtype="bfloat16", device="cpu")
    stock, ours = plan_training(spec), plan_training(spec.model_copy(update={"path": "peftkit"}))
    vocab = ours.architecture["vocab"]
    assert ours.components["logits (loss, fp32)"] == LOSS_CHUNK * vocab * 14
    assert stock.components["logits (loss, fp32)"] == 8 * 256 * vocab * 14
    assert ours.components["activations"] < 0.8 * stock.components["activations"]
    assert ours.peak_bytes < stock.peak_bytes
    # a DoRA layer keeps its dropout; full fine-tuning has no adapter to change
    full = spec.model_copy(update={"method": "full"})
    assert (plan_training(full).components["activations"]
            == plan_training(full.model_copy(update={"path": "peftkit"})).components["activations"])


def test_peftkit_path_plans_a_long_batch_as_its_largest_row_slice():
    """max_batch_tokens (train.long_batches): 8 x 256 tokens above a 1,024-token budget run 4 rows at a time,
    so activations and logits are those of a 4-row batch; a row longer than the budget is checkpointed."""
    spec = TrainPlanSpec(model="smollm2-135m", method="lora", batch=8, seq=256, dtype="float32", device="cpu",
                         path="peftkit")
    plan = lambda **u: plan_training(spec.model_copy(update=u))  # noqa: E731
    sliced, four_rows = plan(max_batch_tokens=1024), plan(batch=4)
    for part in ("activations", "logits (loss, fp32)", "checkpoint recompute"):
        assert sliced.components[part] == four_rows.components[part]
    assert sliced.peak_bytes < plan().peak_bytes
    assert any("runs 4 rows at a time" in n for n in sliced.notes)
    one_row = plan(max_batch_tokens=100)
    assert one_row.components["activations"] == plan(batch=1, gradient_checkpointing=True).components["activations"]
    assert any("checkpointed" in n for n in one_row.notes)
    # a budget the batch fits in, and the stock path, change nothing
    assert plan(max_batch_tokens=2048).components == plan().components
    stock = spec.model_copy(update={"path": "stock"})
    assert (plan_training(stock.model_copy(update={"max_batch_tokens": 1024})).components
            == plan_training(stock).components)
