"""The engine without HTTP: continuous batching over the KV pool, chunked prefill, and both LoRA steps,
each against transformers' own `generate` on peft's model with one adapter."""

from __future__ import annotations

import asyncio
import zlib

import pytest
import torch

NAMES = {"one": 4, "two": 8, "three": 2}  # adapter -> rank (ranks differ)


@pytest.fixture(scope="module")
def folders(tiny_llama_dir, tmp_path_factory) -> dict[str, str]:
    """Plain PEFT adapter folders (seeded, non-zero B), as `peftkit serve --adapter NAME=FOLDER` takes them."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = {}
    root = tmp_path_factory.mktemp("engine-adapters")
    for name, r in NAMES.items():
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                               LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", use_rslora=name == "two"))
        generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        with torch.no_grad():
            for key, p in model.named_parameters():
                if "lora_" in key:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        model.save_pretrained(root / name)
        out[name] = str(root / name)
    return out


def _engine(tiny_llama_dir, folders, **kw):
    from peftkit.loading import load_base_model, load_tokenizer
    from peftkit.recipe import ModelSpec
    from peftkit.serve.adapters import AdapterCache
    from peftkit.serve.checks import AdapterLimits
    from peftkit.serve.engine import Engine

    spec = ModelSpec(name=str(tiny_llama_dir))
    cache = AdapterCache(str(tiny_llama_dir), load_base_model(spec, "causal", None, 42).eval(), "float32",
                         AdapterLimits(), max_adapters=len(folders))
    for name, folder in folders.items():
        cache.ensure_resident(cache.register(name, folder))
    tokenizer = load_tokenizer(spec)
    engine = Engine(cache, tokenizer, {tokenizer.eos_token_id}, context=128, **kw)
    engine.start()
    return engine


def _generate(engine, requests: list[tuple[str, list[int]]], max_tokens: int = 8) -> list[list[int]]:
    """Submit every request at once; the generated token ids of each."""
    from peftkit.serve.engine import Done, Failed, SamplingParams

    async def main():
        loop = asyncio.get_running_loop()
        jobs = [engine.submit_generate(engine.cache.lookup(name), ids, SamplingParams(max_tokens=max_tokens), loop)
                for name, ids in requests]
        for job in jobs:
            async for event in job.events():
                assert not isinstance(event, Failed), event
                if isinstance(event, Done):
                    break
        return [job.generated for job in jobs]

    return asyncio.run(main())


def _reference(tiny_llama_dir, folder: str | None, ids: list[int], max_tokens: int, eos: int) -> list[int]:
    """transformers' greedy `generate` on peft's model with this one adapter (or the bare base)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    if folder is not None:
        model = PeftModel.from_pretrained(model, folder).eval()
    prompt = torch.tensor([ids])
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_tokens,
                         do_sample=False, eos_token_id=eos, pad_token_id=eos)
    return [t for t in out[0, len(ids):].tolist() if t != eos]


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(3, 400, (n,), generator=generator).tolist() for n in (30, 9, 21, 14)]


@pytest.mark.parametrize("lora_step", ["batched", "peft"])
def test_mixed_batches_with_chunked_prefill_equal_generate_alone(tiny_llama_dir, folders, prompts, lora_step):
    """Four requests (three adapters and the base) in flight together; prompts longer than the step's
    token budget are prefilled in chunks between decode steps. Each answer equals `generate` alone."""
    engine = _engine(tiny_llama_dir, folders, max_batch=4, max_step_tokens=12, lora_step=lora_step)
    try:
        requests = [("one", prompts[0]), ("two", prompts[1]), (str(tiny_llama_dir), prompts[2]), ("three", prompts[3])]
        got = _generate(engine, requests)
        assert engine.pool.free == [0, 1, 2, 3] and not engine.running  # every slot is back
        assert engine.pool.nbytes() == 2 * 2 * 4 * 1 * 128 * 32 * 4  # k+v, 2 layers, 4 slots, 1 kv head, 128 x 32, fp32
    finally:
        engine.stop()
    eos = engine.tokenizer.eos_token_id
    for (name, ids), answer in zip(requests, got):
        assert answer == _reference(tiny_llama_dir, folders.get(name), ids, 8, eos), name
    assert len({tuple(a) for a in got}) == len(got)


def test_more_requests_than_slots_join_as_others_leave(tiny_llama_dir, folders, prompts):
    engine = _engine(tiny_llama_dir, folders, max_batch=2, max_step_tokens=64)
    try:
        requests = [(name, prompts[i % len(prompts)]) for i, name in enumerate(["one", "two", "three", "one", "two"])]
        got = _generate(engine, requests, max_tokens=5)
        alone = [_generate(engine, [r], max_tokens=5)[0] for r in requests]
    finally:
        engine.stop()
    assert got == alone and all(len(a) == 5 for a in got)


def test_one_adapter_per_batch_never_mixes_adapters(tiny_llama_dir, folders, prompts):
    from peftkit.serve.engine import Engine

    engine = _engine(tiny_llama_dir, folders, max_batch=4, mix_adapters=False)
    seen: list[set[str]] = []
    step = Engine._step

    def recording_step(self):  # records which adapters each step ran; the step itself is unchanged
        seen.append({j.served.name for j in self.running})
        step(self)

    engine._step = recording_step.__get__(engine)
    try:
        got = _generate(engine, [("one", prompts[0]), ("two", prompts[1]), ("one", prompts[2])], max_tokens=4)
    finally:
        engine.stop()
    assert all(len(names) <= 1 for names in seen) and {"one", "two"} <= set().union(*seen)
    assert all(len(a) == 4 for a in got)
