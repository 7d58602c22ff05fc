"""Tokenise once: the ids and labels equal trl's own preparation, and the cache is reused or rebuilt by key."""

import json

import pytest

from peftkit.train.tokens import cache_key, cached_tokens, sft_token_dataset

PAIRS = [
    {"prompt": [{"role": "user", "content": "What is a cat?"}],
     "completion": [{"role": "assistant", "content": "A small furry animal."}]},
    {"prompt": [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Ship 3 boxes to Oslo"}],
     "completion": [{"role": "assistant", "content": '{"count": 3, "port": "NOOSL"}'}]},
    {"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "how are you?"}],
     "completion": [{"role": "assistant", "content": "Fine, thanks."}]},
]

# Plain-text prompt/completion records (the `completion` task): tokenised as text, EOS appended.
TEXT_PAIRS = [
    {"prompt": "Translate to French: cat\n", "completion": "chat"},
    {"prompt": "Q: 2 + 2?\nA:", "completion": " 4"},
]


@pytest.mark.parametrize("pairs", [PAIRS, TEXT_PAIRS], ids=["conversational", "plain-text"])
def test_sft_ids_and_labels_equal_trls_preparation(tiny_llama_dir, tmp_path, pairs):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    ours = sft_token_dataset(pairs, tokenizer, max_length=64)
    args = SFTConfig(output_dir=str(tmp_path), max_length=64, completion_only_loss=True, report_to="none",
                     bf16=False, use_cpu=True, activation_checkpointing=False)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_llama_dir), args=args,
                         train_dataset=Dataset.from_list(pairs), processing_class=tokenizer)
    theirs = trainer.train_dataset
    assert ours["input_ids"] == theirs["input_ids"]
    assert ours["labels"] == theirs["labels"]
    assert all(-100 in labels and labels[-1] != -100 for labels in ours["labels"])  # prompt masked, answer kept


def test_truncation_that_leaves_no_answer_drops_the_example(tiny_llama_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    ds = sft_token_dataset(PAIRS, tokenizer, max_length=12)
    assert len(ds) < len(PAIRS) and all(len(ids) <= 12 for ids in ds["input_ids"])


def test_cache_is_reused_for_the_same_key_and_rebuilt_for_another(tiny_llama_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    split = tmp_path / "train.jsonl"
    split.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    builds = []

    def build(max_length):
        builds.append(max_length)
        return sft_token_dataset(PAIRS, tokenizer, max_length)

    cache = tmp_path / "tokens" / "train"
    key64 = cache_key(split, tokenizer, max_length=64)
    first = cached_tokens(cache, key64, lambda: build(64))
    again = cached_tokens(cache, key64, lambda: build(64))
    assert builds == [64] and again["input_ids"] == first["input_ids"]
    assert any(p.suffix == ".arrow" for p in cache.iterdir()) and not list(cache.glob("*.pkl"))
    key32 = cache_key(split, tokenizer, max_length=32)
    assert key32 != key64
    shorter = cached_tokens(cache, key32, lambda: build(32))
    assert builds == [64, 32] and max(map(len, shorter["input_ids"])) <= 32
